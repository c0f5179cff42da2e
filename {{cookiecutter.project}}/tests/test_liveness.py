"""Liveness means "stuck", not "Redis is away": real workers of every pool, a real Redis stopped.

The probe is the one compose, Swarm and Kubernetes run (``health heartbeat``), as a process.
Compose and Swarm mark a container unhealthy after 3 failed probes, Kubernetes restarts it
after 3 failed liveness probes: any failed probe during the outage counts here.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import FREEZER, make_client, probe, start_pools, stop, wait_until, with_redis

pytestmark = pytest.mark.slow  # minutes: a 90 s outage, a 60 s freeze, a task past its limit

CPU = "{{ cookiecutter.package }}.tasks.cpu.count_primes"
IO = "{{ cookiecutter.package }}.tasks.io.wait_on_api"
OUTAGE = 90  # seconds Redis stays away
PROBE_EVERY = 5  # compose's interval for the workers
HANG = 600  # safety net: a wait this long is a hang


def test_redis_away_90_s_under_load_fails_no_probe_and_loses_no_task(
    private_redis, stack_env, tmp_path
):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, private_redis.url, secrets)
    workers = start_pools(env, tmp_path)
    client = make_client(private_redis.url)
    try:
        # Enough that every pool is busy when Redis goes and work is left queued behind it.
        ids = [client.send_task(CPU, (500_000,)).id for _ in range(60)]
        ids += [client.send_task(IO, (5.0,)).id for _ in range(600)]
        for pool, worker in workers.items():
            wait_until(lambda w=worker: "] received" in w.log.read_text(), HANG, f"{pool} busy")
        private_redis.stop()
        failed = {pool: 0 for pool in workers}
        away = {pool: 0 for pool in workers}
        gone = time.monotonic()
        while time.monotonic() - gone < OUTAGE:
            for pool, worker in workers.items():
                failed[pool] += not probe(worker)
                away[pool] += not probe(worker, "ready")
            time.sleep(PROBE_EVERY)
        private_redis.start()
        back = time.monotonic()
        results = [client.AsyncResult(i) for i in ids]
        wait_until(lambda: all(r.ready() for r in results), HANG, "every task finished")
        drained = time.monotonic() - back
        states = {r.state for r in results}
        print(
            f"Redis away {OUTAGE} s: failed heartbeat probes {failed}, not-ready probes {away}; "
            f"{len(ids)} tasks, {sum(r.successful() for r in results)} succeeded, "
            f"drained {drained:.1f} s after Redis returned"
        )
        assert failed == {pool: 0 for pool in workers}
        # Readiness saw the broker away: the heartbeat thread watched it, not only the loop.
        assert all(away.values()), away
        assert states == {"SUCCESS"}
        assert all(w.proc.poll() is None for w in workers.values())
        for pool, worker in workers.items():
            wait_until(lambda w=worker: probe(w, "ready"), HANG, f"{pool} ready again")
    finally:
        client.close()
        stop(*(w.proc for w in workers.values()), timeout=60)


def test_a_frozen_event_loop_still_fails_the_probe(private_redis, stack_env, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(FREEZER)
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, private_redis.url, secrets)
    path = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    workers = start_pools(env, tmp_path, PYTHONPATH=path, FREEZE_SECONDS="60")
    try:
        for worker in workers.values():
            # The worker's main process: the Celery command replaced python -m ...worker.
            os.kill(worker.proc.pid, signal.SIGUSR2)
        frozen = time.monotonic()
        took = {}
        for pool, worker in workers.items():
            wait_until(lambda w=worker: not probe(w), HANG, f"{pool} probe failing")
            took[pool] = round(time.monotonic() - frozen, 1)
        print(f"loop frozen, Redis answering: heartbeat probe failed after {took} s")
        # The loop runs again: the heartbeat comes back on its own (an orchestrator would
        # have restarted the worker by now).
        for pool, worker in workers.items():
            wait_until(lambda w=worker: probe(w), HANG, f"{pool} beating again")
            # The heartbeat thread (an OS thread under gevent too) saw it and said so.
            assert "event loop has not run" in worker.log.read_text(), pool
    finally:
        stop(*(w.proc for w in workers.values()), timeout=60)


def test_solo_beats_through_a_task_within_its_time_limit_and_not_beyond(
    private_redis, stack_env, tmp_path
):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, private_redis.url, secrets)
    limit = 40
    (worker,) = start_pools(env, tmp_path, {"solo": "cpu"}, TASK_TIME_LIMIT=str(limit)).values()
    client = make_client(private_redis.url)
    try:
        client.send_task(CPU, (20_000_000,))  # minutes of trial division, in the loop itself
        wait_until(lambda: "] received" in worker.log.read_text(), HANG, "task started")
        started = time.monotonic()
        polls = []
        while True:
            ok, at = probe(worker), time.monotonic() - started
            polls.append((round(at, 1), ok))
            if not ok or at > HANG:
                break
            time.sleep(2)
        print(f"solo, TASK_TIME_LIMIT={limit}: probes (s since the task began, ok) {polls}")
        # Fresh while the task is within its limit (the loop itself is blocked from t=0),
        # failing after it: the limit plus the probe's 15 s, plus one beat's slack.
        assert all(ok for at, ok in polls if at < limit)
        assert not polls[-1][1] and polls[-1][0] < limit + 15 + 10
    finally:
        client.close()
        stop(worker.proc, timeout=5)
