"""IO_PROCESSES=2: one ``python -m {{ cookiecutter.package }}.worker io``, two real Celery workers on a real Redis.

They share the io queue under two names, the container's probe checks both, and they live and
die together: a frozen one fails the probe, a killed one takes the other down, SIGTERM stops both.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from conftest import FREEZER, Worker, make_client, probe, stop, wait_until, with_redis

pytestmark = pytest.mark.slow  # two worker starts, a 15 s stale heartbeat

IO = "{{ cookiecutter.package }}.tasks.io.wait_on_api"
HANG = 300


def children(worker: Worker) -> list[int]:
    """The supervisor's child processes (the Celery workers), oldest first."""
    pid = worker.proc.pid
    return [int(n) for n in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()  # reaped by the supervisor: no zombie either


@pytest.fixture
def two_io(private_redis, stack_env, tmp_path):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    (tmp_path / "sitecustomize.py").write_text(FREEZER)
    env = with_redis(stack_env, private_redis.url, secrets)
    path = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    extra = {"IO_PROCESSES": "2", "PYTHONPATH": path, "FREEZE_SECONDS": "40"}
    worker = Worker("io", {**env, **extra}, tmp_path)
    client = make_client(private_redis.url)
    try:
        wait_until(worker.ready, 180, "two io processes")
        wait_until(lambda: worker.log.read_text().count(" ready.") == 2, 180, "both ready")
        yield worker, client
    finally:
        client.close()
        stop(worker.proc, timeout=60)


def test_both_share_the_queue_and_sigterm_stops_both_warm(two_io):
    worker, client = two_io
    assert len(children(worker)) == 2
    results = [client.send_task(IO, (0.3,)) for _ in range(60)]
    wait_until(lambda: all(r.ready() for r in results), HANG, "io tasks")
    assert {r.state for r in results} == {"SUCCESS"}
    host = socket.gethostname()
    assert {r.result["worker"] for r in results} == {f"io@{host}", f"io@{host}-2"}
    assert probe(worker) and probe(worker, "ready")

    # Tasks running in both when SIGTERM comes: a warm shutdown lets them finish.
    running = [client.send_task(IO, (3.0,)) for _ in range(20)]
    wait_until(lambda: worker.log.read_text().count("] received") >= 2, HANG, "tasks running")
    pids = children(worker)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    assert all(gone(pid) for pid in pids)
    assert worker.log.read_text().count("Warm shutdown") == 2
    assert "supervisor:" not in worker.log.read_text()  # asked to stop: no failure reported
    wait_until(lambda: all(r.ready() for r in running), HANG, "tasks in flight")
    assert {r.state for r in running} == {"SUCCESS"}


def test_a_frozen_process_fails_the_probe_and_a_killed_one_stops_all(two_io):
    worker, _ = two_io
    first, second = children(worker)
    assert probe(worker)
    os.kill(second, signal.SIGUSR2)  # its event loop stops for FREEZE_SECONDS; first's runs on
    frozen = time.monotonic()
    wait_until(lambda: not probe(worker), 60, "probe failing with one process frozen")
    print(f"one of two io processes frozen: probe failed after {time.monotonic() - frozen:.1f} s")
    assert Path(f"{worker.heartbeat}.1").stat().st_mtime > time.time() - 15  # first still beats

    os.kill(first, signal.SIGKILL)
    assert worker.proc.wait(90) == 128 + signal.SIGKILL
    assert gone(first) and gone(second)
    assert "supervisor: process 1" in worker.log.read_text()
