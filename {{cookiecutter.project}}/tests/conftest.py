"""Real processes for the integration tests: redis-server, the demo API and both workers.

The workers are started with ``python -m {{ cookiecutter.package }}.worker cpu|io``, the same
command compose runs. Set TEST_REDIS_URL to use a Redis you already run (e.g. a CI service).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

# Unit tests import the app, which reads settings at import: give them a syntactically
# valid URL that nothing listens on. Integration fixtures set the real one.
os.environ.setdefault("REDIS_URL", "redis://:unit-tests@127.0.0.1:9/0")

# Test defaults: nothing from the caller's environment leaks into the stack under test.
STACK_VARS = (
    "REDIS_URL",
    "REDIS_PASSWORD",
    "SECRETS_DIR",
    "CPU_POOL",
    "IO_POOL",
    "CPU_CONCURRENCY",
    "IO_CONCURRENCY",
    "TASK_EVENTS",
    "DEMO_API_URL",
    "HEARTBEAT_FILE",
    "LOG_LEVEL",
    "TASK_TIME_LIMIT",
    "VISIBILITY_TIMEOUT",
    "IO_MAX_RETRIES",
    "RETRY_BACKOFF_BASE",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready within {timeout:g} s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A redis-server that can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, appendonly: bool = False):
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail(
                "redis-server not found: install it (apt-get install redis-server) "
                "or set TEST_REDIS_URL"
            )
        self.port, password = free_port(), secrets.token_urlsafe(24)
        self.cmd = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "yes" if appendonly else "no", "--requirepass", password, "--dir", str(workdir)]  # fmt: skip
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop and start; persistent, as in compose."""
    server = RedisServer(tmp_path, appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def demo_api_url() -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "{{ cookiecutter.package }}.demo_api",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd)
    wait_until(lambda: port_open(port), 15, "demo API")
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture(scope="session")
def stack_env(redis_url, demo_api_url, tmp_path_factory) -> dict[str, str]:
    """The environment the stack runs with, as compose gives it: REDIS_URL without the
    password, which is a file in SECRETS_DIR."""
    folder = tmp_path_factory.mktemp("secrets")
    url = urlsplit(redis_url)
    (folder / "redis_password").write_text(unquote(url.password or ""))
    bare = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
    env.update(
        REDIS_URL=bare,
        SECRETS_DIR=str(folder),
        DEMO_API_URL=demo_api_url,
        IO_CONCURRENCY="200",
        CPU_CONCURRENCY="2",
    )
    # Retries of failing I/O tasks: 3 waits of ~0.25..2 s, so a test sees them all quickly.
    env.update(IO_MAX_RETRIES="3", RETRY_BACKOFF_BASE="0.5")
    return env


class Worker:
    def __init__(self, kind: str, env: dict[str, str], logdir: Path):
        self.kind = kind
        self.heartbeat = logdir / f"{kind}.heartbeat"
        self.log = logdir / f"worker-{kind}.log"
        env = {**env, "HEARTBEAT_FILE": str(self.heartbeat)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "{{ cookiecutter.package }}.worker",
                    kind,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.kind} exited:\n{self.log.read_text()}")
        return self.heartbeat.exists() and "ready." in self.log.read_text()


@pytest.fixture(scope="session")
def workers(stack_env, tmp_path_factory) -> Iterator[dict[str, Worker]]:
    logdir = tmp_path_factory.mktemp("workers")
    started = {kind: Worker(kind, stack_env, logdir) for kind in ("cpu", "io")}
    try:
        for worker in started.values():
            wait_until(worker.ready, 60, f"worker {worker.kind}")
        yield started
    finally:
        for worker in started.values():
            stop(worker.proc)


@pytest.fixture(scope="session")
def run_producer(stack_env, workers):
    """Run the producer CLI against the running workers; returns the finished process."""

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "{{ cookiecutter.package }}.producer",
                *args,
            ],
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def with_redis(stack_env: dict[str, str], url: str, folder: Path) -> dict[str, str]:
    """``stack_env`` on another Redis: its full URL, and an empty secrets folder."""
    return {**stack_env, "REDIS_URL": url, "SECRETS_DIR": str(folder)}


def make_client(redis_url: str):
    """A Celery client with the app's routing and serializers, on ``redis_url``.

    The app module itself was configured at import with the unit tests' placeholder URL.
    """
    from celery import Celery

    from {{ cookiecutter.package }}.celery_app import app

    client = Celery("{{ cookiecutter.package }}", set_as_current=False)
    shared = ("broker_transport", "task_queues", "task_routes", "task_default_queue",
              "task_serializer", "result_serializer", "accept_content", "result_accept_content")  # fmt: skip
    client.conf.update({name: app.conf[name] for name in shared})
    client.conf.update(broker_url=redis_url, result_backend=redis_url)
    return client


@pytest.fixture(scope="session")
def celery_client(redis_url, workers):
    """A Celery client of the running stack."""
    client = make_client(redis_url)
    yield client
    client.close()
