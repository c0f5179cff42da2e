"""The web producer (api.py) as its own process, against a real Redis and real workers."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import urllib3

from test_durable import aof_redis, no_aof_redis, waitaof_calls

from bench.procs import free_port
from conftest import stop, wait_until, with_redis

PACKAGE = "{{ cookiecutter.package }}"
START = 120  # safety nets against a hang, not speed bounds
DONE = 120
# Fixtures: a Redis 7.2+ (WAITAOF), found as test_durable finds one.
__all__ = ["aof_redis", "no_aof_redis"]
POOLS = {"cpu": os.environ.get("CPU_POOL", "{{ cookiecutter.cpu_pool }}"),
         "io": os.environ.get("IO_POOL", "{{ cookiecutter.io_pool }}")}  # fmt: skip


class Api:
    """``python -m <package>.api`` on a free port, with an API key in its secrets folder."""

    def __init__(self, env: dict[str, str], secrets_dir: Path, log: Path):
        self.key = secrets.token_urlsafe(32)
        secrets_dir.mkdir(parents=True, exist_ok=True)
        (secrets_dir / "api_key").write_text(self.key)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log
        port = self.url.rpartition(":")[2]
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"{PACKAGE}.api", "--host", "127.0.0.1", "--port", port],
                env={**env, "SECRETS_DIR": str(secrets_dir)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.http = urllib3.PoolManager(retries=False, timeout=30)
        wait_until(self.live, START, "the API")

    def live(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the API exited:\n{self.log.read_text()}")
        try:
            return self.call("GET", "/healthz", key=None)[0] == 200
        except urllib3.exceptions.HTTPError:
            return False

    def call(self, method: str, path: str, body=None, key: str | None = "") -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        key = self.key if key == "" else key
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else json.dumps(body)
        response = self.http.request(method, self.url + path, body=data, headers=headers)
        try:
            return response.status, json.loads(response.data or b"null")
        except ValueError:
            return response.status, {"text": response.data.decode(errors="replace")}

    def finished(self, task_id: str) -> dict:
        """GET the task until it is done (a safety net, not a speed bound)."""
        seen: dict = {}

        def done() -> bool:
            status, seen["state"] = self.call("GET", f"/tasks/{task_id}")
            assert status == 200, seen
            return seen["state"]["state"] in ("SUCCESS", "FAILURE")

        wait_until(done, DONE, f"task {task_id}")
        return seen["state"]


def copy_secrets(env: dict[str, str], folder: Path) -> Path:
    """The stack's secrets folder (its Redis password) plus room for the API key."""
    shutil.copytree(env["SECRETS_DIR"], folder)
    return folder


@pytest.fixture(scope="module")
def api(stack_env, workers, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api")
    server = Api(stack_env, copy_secrets(stack_env, folder / "secrets"), folder / "api.log")
    yield server
    stop(server.proc)


@pytest.mark.parametrize(
    ("path", "body", "queue"),
    [("/tasks/count-primes", {"limit": 20_000}, "cpu"), ("/tasks/wait-on-api", {"seconds": 0.2}, "io")],
    ids=["cpu", "io"],
)  # fmt: skip
def test_a_task_goes_to_its_queue_and_reports_the_worker_that_ran_it(api, path, body, queue):
    status, enqueued = api.call("POST", path, body)
    assert status == 202 and enqueued["queue"] == queue, enqueued
    assert enqueued["state_url"] == f"/tasks/{enqueued['id']}"
    state = api.finished(enqueued["id"])
    assert state["state"] == "SUCCESS" and state["error"] is None, state
    assert state["queue"] == queue and state["worker"].startswith(f"{queue}@"), state
    assert state["result"]["pool"] == POOLS[queue], state


def test_a_pipeline_fetches_on_io_and_reduces_on_cpu(api, upstream_url):
    urls = [f"{upstream_url}/delay/0.1"] * 5
    status, enqueued = api.call("POST", "/pipelines", {"urls": urls})
    assert status == 202 and enqueued["queue"] == "cpu", enqueued
    state = api.finished(enqueued["id"])
    assert state["state"] == "SUCCESS" and state["result"]["fetches"] == 5, state
    steps = state["result"]["steps"]
    assert [s["queue"] for s in steps] == ["io"] * 5 + ["cpu"], steps
    assert state["worker"].startswith("cpu@"), state


def test_a_failed_task_reports_its_error(api, upstream_url):
    url = f"{upstream_url}/flaky/api-404?fail=100&status=404"  # a 4xx fails at once
    status, enqueued = api.call("POST", "/tasks/fetch", {"url": url})
    assert status == 202, enqueued
    state = api.finished(enqueued["id"])
    assert state["state"] == "FAILURE" and "404" in state["error"], state
    assert state["result"] is None


@pytest.mark.parametrize(
    ("path", "body", "field", "says"),
    [
        ("/tasks/count-primes", {"limit": 1}, ["body", "limit"], "greater than or equal to 2"),
        ("/tasks/count-primes", {"limit": "many"}, ["body", "limit"], "valid integer"),
        ("/tasks/count-primes", {}, ["body", "limit"], "Field required"),
        ("/tasks/wait-on-api", {"seconds": 1e9}, ["body", "seconds"], "less than or equal to"),
        ("/tasks/fetch", {"url": "ftp://x"}, ["body", "url"], "URL scheme should be 'http' or 'https'"),
        ("/pipelines", {"urls": []}, ["body", "urls"], "at least 1 item"),
    ],
)  # fmt: skip
def test_a_bad_body_is_refused_naming_the_field(api, redis_url, path, body, field, says):
    before = redis.Redis.from_url(redis_url).llen("cpu")
    status, answer = api.call("POST", path, body)
    assert status == 422, answer
    (problem,) = answer["detail"]  # one problem: one entry, naming the field
    assert problem["loc"] == field and says in problem["msg"], problem
    assert redis.Redis.from_url(redis_url).llen("cpu") == before  # nothing sent


@pytest.mark.parametrize("key", [None, "wrong", "x" * 43], ids=["none", "wrong", "same-length"])
def test_without_the_key_nothing_is_enqueued_nor_read(api, key):
    for method, path, body in [("POST", "/tasks/count-primes", {"limit": 10}), ("GET", "/tasks/x", None)]:  # fmt: skip
        status, answer = api.call(method, path, body, key=key)
        assert status == 401 and "API key" in answer["detail"], (path, answer)
    assert api.key not in api.log.read_text()  # and no key in its log


def test_health_and_docs_need_no_key_and_the_docs_are_served_locally(api):
    assert api.call("GET", "/healthz", key=None) == (200, {"ok": True})
    assert api.call("GET", "/readyz", key=None) == (200, {"ok": True})
    status, spec = api.call("GET", "/openapi.json", key=None)
    assert status == 200
    assert {"/tasks/count-primes", "/tasks/wait-on-api", "/tasks/fetch", "/pipelines",
            "/tasks/{task_id}"} == set(spec["paths"])  # fmt: skip
    page = api.http.request("GET", api.url + "/docs")
    assert page.status == 200 and b"/static/docs/swagger-ui-bundle.js" in page.data
    script = api.http.request("GET", api.url + "/static/docs/swagger-ui-bundle.js")
    assert script.status == 200 and len(script.data) > 100_000  # the real bundle, not a stub


def test_a_redis_outage_answers_503_and_nothing_is_enqueued(stack_env, private_redis, tmp_path):
    env = with_redis(stack_env, private_redis.url, tmp_path / "secrets")
    server = Api(env, tmp_path / "secrets", tmp_path / "api.log")
    client = redis.Redis.from_url(private_redis.url)
    try:
        assert server.call("POST", "/tasks/count-primes", {"limit": 10})[0] == 202
        assert client.llen("cpu") == 1
        private_redis.stop()
        status, answer = server.call("POST", "/tasks/count-primes", {"limit": 10})
        assert status == 503 and "Redis" in answer["detail"], answer
        assert server.call("GET", "/healthz", key=None)[0] == 200  # alive: nothing to restart
        assert server.call("GET", "/readyz", key=None)[0] == 503  # out of the load balancer
        assert server.call("GET", "/tasks/some-id")[0] == 503
        private_redis.start()
        assert client.llen("cpu") == 1  # the refused one was not sent after all
        assert server.call("POST", "/tasks/count-primes", {"limit": 10})[0] == 202
        assert client.llen("cpu") == 2
        assert server.call("GET", "/readyz", key=None)[0] == 200
    finally:
        stop(server.proc)


@contextmanager
def durable_api(stack_env, url: str, tmp_path: Path) -> Iterator[Api]:
    """An API of the test's own on the Redis at ``url``, with DURABLE_PUBLISH=true."""
    env = {**with_redis(stack_env, url, tmp_path / "secrets"), "DURABLE_PUBLISH": "true"}
    server = Api(env, tmp_path / "secrets", tmp_path / "api.log")
    try:
        yield server
    finally:
        stop(server.proc)


def test_with_durable_publish_a_202_comes_after_redis_has_it_on_disk(
    stack_env, aof_redis, tmp_path
):
    client = redis.Redis.from_url(aof_redis)
    with durable_api(stack_env, aof_redis, tmp_path) as server:
        waited = waitaof_calls(client)
        assert server.call("POST", "/tasks/count-primes", {"limit": 10})[0] == 202
        assert client.llen("cpu") == 1 and waitaof_calls(client) == waited + 1


def test_with_durable_publish_and_no_append_only_file_the_api_says_so(
    stack_env, no_aof_redis, tmp_path
):
    with durable_api(stack_env, no_aof_redis, tmp_path) as server:
        status, answer = server.call("POST", "/tasks/count-primes", {"limit": 10})
    assert status == 503, answer
    assert answer["detail"].startswith("not confirmed on disk (Redis has its append-only file off")
    assert answer["detail"].endswith("sent, it may still run")
