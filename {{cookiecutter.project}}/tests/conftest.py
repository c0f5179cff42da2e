"""Real processes for the integration tests: redis-server, the HTTP upstream (bench/upstream.py) and both workers.

The workers are started with ``python -m {{ cookiecutter.package }}.worker cpu|io``, the same
command compose runs. Set TEST_REDIS_URL to use a Redis you already run (e.g. a CI service) for
the shared one; tests that stop and restart Redis always start a redis-server of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from celery_redis_reliable.fixtures import private_redis, redis_url
from celery_redis_reliable.testing import RedisServer

from {{ cookiecutter.package }}.health import beats
from {{ cookiecutter.package }}.settings import Settings

from bench.procs import start_upstream, stop, wait_until

# Unit tests import the app, which reads settings at import: give them a syntactically
# valid URL that nothing listens on. Integration fixtures set the real one.
os.environ.setdefault("REDIS_URL", "redis://:unit-tests@127.0.0.1:9/0")

# Every variable the settings read (and where they read secret files from): none leaks from
# the caller's shell into the stack under test.
STACK_VARS = frozenset(name.upper() for name in Settings.model_fields) | {"SECRETS_DIR"}

# Re-exported: the fixtures, for pytest to find here, and RedisServer, for the test modules.
__all__ = ["RedisServer", "private_redis", "redis_url"]


@pytest.fixture(scope="session")
def upstream_url() -> Iterator[str]:
    proc, url = start_upstream()
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def stack_env(redis_url, upstream_url, tmp_path_factory) -> dict[str, str]:
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
        DEMO_API_URL=upstream_url,
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
        # With IO_PROCESSES > 1: every process's file, once the supervisor has listed them.
        beating = all(os.path.exists(path) for path in beats(str(self.heartbeat)))
        return beating and "ready." in self.log.read_text()


# Freezes the main thread (the worker's event loop) on SIGUSR2, for FREEZE_SECONDS: a stuck
# loop with Redis answering. Python runs signal handlers in the main thread only.
FREEZER = """
import os, signal, time

def _freeze(signum, frame):
    end = time.monotonic() + float(os.environ["FREEZE_SECONDS"])
    while time.monotonic() < end:
        pass

signal.signal(signal.SIGUSR2, _freeze)
"""


def probe(worker: Worker, check: str = "heartbeat") -> bool:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "{{ cookiecutter.package }}.health",
            check,
        ],
        env={**os.environ, "HEARTBEAT_FILE": str(worker.heartbeat)},
        capture_output=True,
        timeout=60,
    )
    return proc.returncode == 0


POOLS = {"prefork": "cpu", "solo": "cpu", "gevent": "io", "threads": "io"}  # pool -> kind


def start_pools(env: dict, tmp_path: Path, pools=POOLS, **extra: str) -> dict[str, Worker]:
    """A worker per pool (each in a folder of its own under ``tmp_path``), all ready."""
    workers = {}
    try:
        for pool, kind in pools.items():
            folder = tmp_path / pool
            folder.mkdir()
            variable = "CPU_POOL" if kind == "cpu" else "IO_POOL"
            workers[pool] = Worker(kind, {**env, variable: pool, **extra}, folder)
        for pool, worker in workers.items():
            wait_until(worker.ready, 180, f"{pool} worker")
    except BaseException:
        stop(*(w.proc for w in workers.values()))
        raise
    return workers


@pytest.fixture(scope="session")
def workers(stack_env, tmp_path_factory) -> Iterator[dict[str, Worker]]:
    logdir = tmp_path_factory.mktemp("workers")
    started: dict[str, Worker] = {}
    try:
        for kind in ("cpu", "io"):
            started[kind] = Worker(kind, stack_env, logdir)
        for worker in started.values():
            # Generous: a worker starts in seconds, but a loaded CI machine can take a minute or more.
            wait_until(worker.ready, 180, f"worker {worker.kind}")
        yield started
    finally:
        stop(*(worker.proc for worker in started.values()))


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
