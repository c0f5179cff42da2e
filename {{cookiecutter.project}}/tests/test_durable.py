"""Durable publishing against a real Redis 7.2+ (WAITAOF): the wait, its timeout, its errors.

Redis 7.2+ comes from redis-server on PATH if it is new enough, else from the image compose runs
for redis (compose.override.yaml's stand-in where quickstart wrote one), run by Docker; where
the engine has it not and cannot pull it, these tests skip with one line naming why. The
old-server test uses redis-server on PATH (Debian 12: 7.0).
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery_redis_reliable import durable

from conftest import STACK_VARS, RedisServer, wait_until

WAITAOF_SINCE = (7, 2)
PROJECT = Path(__file__).resolve().parent.parent


def compose_redis_image() -> str:
    """The image compose runs for redis: REDIS_IMAGE if set, else compose.override.yaml's (the
    stand-in quickstart writes where no registry answers), else compose.yaml's."""
    for name in ("compose.override.yaml", "compose.yaml"):
        path = PROJECT / name
        if path.is_file():
            service = (yaml.safe_load(path.read_text()) or {}).get("services", {}).get("redis")
            if service and service.get("image"):
                return os.environ.get("REDIS_IMAGE", service["image"])
    return os.environ.get("REDIS_IMAGE", "redis:8")


def docker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


@functools.cache
def pulled(image: str) -> str | None:
    """None once ``image`` is on the engine (there already, or pulled now), else why not."""
    if docker("image", "inspect", image).returncode == 0:
        return None
    pull = docker("pull", image, timeout=300)
    return None if pull.returncode == 0 else (pull.stderr.strip().splitlines() or ["?"])[-1]


def engine_image() -> str:
    """The compose Redis image, on this engine or pulled now; a skip naming why if neither."""
    image = compose_redis_image()
    if why := pulled(image):
        pytest.skip(
            f"durable publishing needs Redis 7.2+ (WAITAOF): redis-server on PATH is "
            f"{local_version()}, and {image} is not on this Docker engine and cannot be pulled "
            f"({why}); install Redis 7.2+, or set REDIS_IMAGE to an image the engine has"
        )
    return image


def local_version() -> tuple[int, int] | None:
    server = shutil.which("redis-server")
    if server is None:
        return None
    out = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    return tuple(map(int, re.search(r"v=(\d+)\.(\d+)", out).groups()))


class RedisContainer:
    """The compose file's Redis image, run by Docker, published on a free loopback port."""

    def __init__(self, image: str, *args: str):
        self.name = f"test-redis-{secrets.token_hex(6)}"
        password = secrets.token_urlsafe(24)
        cmd = ["docker", "run", "-d", "--rm", "--name", self.name, "-p", "127.0.0.1::6379",
               image, "redis-server", "--requirepass", password, "--dir", "/tmp", *args]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        port = subprocess.run(["docker", "port", self.name, "6379"], check=True,
                              capture_output=True, text=True).stdout.split(":")[-1].strip()  # fmt: skip
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"

    def stop(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


def start_new_redis(tmp_path, *args: str):
    """A Redis with WAITAOF: redis-server on PATH if 7.2+, else the compose image in Docker."""
    if (local_version() or (0, 0)) >= WAITAOF_SINCE:
        server = RedisServer(tmp_path)
        server.options += args  # after the stdin config: they win
        server.start()
    elif shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:  # fmt: skip
        server = RedisContainer(engine_image(), "--save", "", *args)
    else:
        pytest.fail(
            f"durable publishing needs Redis 7.2+ (WAITAOF): redis-server on PATH is "
            f"{local_version()}, and no Docker engine answers to run {compose_redis_image()}"
        )
    try:
        wait_until(lambda: _pings(server.url), 30, "Redis 7.2+")
    except TimeoutError:
        server.stop()
        raise
    return server


def _pings(url: str) -> bool:
    try:
        return redis.Redis.from_url(url).ping()
    except redis.ConnectionError:
        return False


def new_redis(tmp_path, *args: str) -> Iterator[str]:
    server = start_new_redis(tmp_path, *args)
    yield server.url
    server.stop()


@pytest.fixture
def aof_redis(tmp_path) -> Iterator[str]:
    """As in compose: append-only file on, fsynced every second."""
    yield from new_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "everysec")


@pytest.fixture
def no_aof_redis(tmp_path) -> Iterator[str]:
    yield from new_redis(tmp_path, "--appendonly", "no")


@pytest.fixture
def no_fsync_redis(tmp_path) -> Iterator[str]:
    """Append-only file on, fsync left to the OS: Redis never reports a write on disk."""
    yield from new_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "no")


def waitaof_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_waitaof", {}).get("calls", 0)


def test_wait_returns_once_redis_reports_the_write_on_disk(aof_redis):
    client = redis.Redis.from_url(aof_redis)
    client.lpush("cpu", "task")
    # WAITAOF's reply: fsynced locally, and by 0 replicas
    assert durable.wait_for_aof(client, timeout=5) == (1, 0)
    assert waitaof_calls(client) == 1
    assert client.pttl(durable.FENCE_KEY) > 0  # the fence expires by itself


def test_a_write_from_another_connection_is_waited_for_and_the_timeout_reported(no_fsync_redis):
    # The publish and the wait on different connections, as a pool may arrange: without the
    # fence, WAITAOF on a connection that wrote nothing answers "on disk" at once.
    waiter = redis.Redis.from_url(no_fsync_redis)
    assert waiter.execute_command("WAITAOF", 1, 0, 500) == [1, 0]  # no fence: nothing to wait for
    redis.Redis.from_url(no_fsync_redis).lpush("cpu", "task")
    with pytest.raises(durable.DurablePublishError, match=r"within 0\.5 s \(WAITAOF answered 0;"):
        durable.wait_for_aof(waiter, timeout=0.5)


def test_aof_off_is_named(no_aof_redis):
    with pytest.raises(durable.DurablePublishError, match=r"file off \(appendonly no\)"):
        durable.wait_for_aof(redis.Redis.from_url(no_aof_redis), timeout=1)


def test_old_server_is_named(redis_url):
    version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    if tuple(map(int, version.split(".")[:2])) >= WAITAOF_SINCE:
        pytest.skip(f"needs a Redis older than 7.2; the test Redis is {version}")
    with pytest.raises(durable.DurablePublishError) as error:
        durable.wait_for_aof(redis.Redis.from_url(redis_url), timeout=1)
    assert str(error.value) == (
        f"Redis {version} has no WAITAOF; durable publishing needs Redis 7.2 or later"
    )


def run_module(url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
    return subprocess.run([sys.executable, *args], env={**environ, "REDIS_URL": url, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


PRODUCER = ["-m", "{{ cookiecutter.package }}.producer"]
PRODUCER += ["--cpu", "2", "--io", "3", "--json"]


def test_producer_waits_only_when_durable_publish_is_on(aof_redis):
    client = redis.Redis.from_url(aof_redis)
    # No workers: the tasks stay queued, and the producer gives up on results after 0.5 s.
    plain = run_module(aof_redis, *PRODUCER, "--timeout", "0.5")
    assert json.loads(plain.stdout)["submitted"] == 5, plain.stderr
    assert waitaof_calls(client) == 0
    durably = run_module(aof_redis, *PRODUCER, "--timeout", "0.5", DURABLE_PUBLISH="true")
    assert json.loads(durably.stdout)["submitted"] == 5, durably.stderr
    assert waitaof_calls(client) == 1  # one wait for the whole batch
    assert (client.llen("cpu"), client.llen("io")) == (4, 6)


def test_producer_reports_an_unconfirmed_batch(no_fsync_redis):
    proc = run_module(
        no_fsync_redis, *PRODUCER, DURABLE_PUBLISH="true", DURABLE_PUBLISH_TIMEOUT="0.5"
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == (
        "error: durable publish: Redis did not confirm the write to its append-only file within "
        "0.5 s (WAITAOF answered 0; it always does under appendfsync no). All 5 tasks were sent and will run, but are not confirmed "
        "on disk"
    )


SCRIPT = """
from celery_redis_reliable.durable import publish_durably
from {{ cookiecutter.package }}.tasks import cpu, io
print(len(publish_durably([cpu.noop.s(), io.noop.s(), io.noop.s()], timeout=5)))
"""


def test_publish_durably_from_user_code(aof_redis):
    proc = run_module(aof_redis, "-c", SCRIPT)
    assert proc.stdout.strip() == "3", proc.stderr
    client = redis.Redis.from_url(aof_redis)
    assert waitaof_calls(client) == 1
    assert (client.llen("cpu"), client.llen("io")) == (1, 2)
