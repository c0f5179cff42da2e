"""Redis at maxmemory (noeviction, as compose, Swarm and Kubernetes run it): real workers of
every pool, a real Redis made full under them, then given room again.

What stops: taking tasks (Redis refuses BLMOVE) and storing results (refused writes). What
resumes once Redis has room: both, with nothing lost and no worker restarted.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
import redis
from kombu.exceptions import OperationalError

from conftest import make_client, start_pools, stop, wait_until, with_redis

pytestmark = pytest.mark.slow  # a 15 s full period, and workers of four pools

CPU = "{{ cookiecutter.package }}.tasks.cpu.count_primes"
IO = "{{ cookiecutter.package }}.tasks.io.wait_on_api"
FULL_FOR = 15  # seconds Redis stays full
FILLER = 8_000_000  # bytes: freed in one DEL, far more than the test's tasks write meanwhile
SUCCEEDED = re.compile(r"\[([0-9a-f-]{36})\] succeeded in")
HANG = 600  # safety net: a wait this long is a hang
FULL = "Redis is full (maxmemory, noeviction): taking tasks paused"
ROOM = "Redis has room again: taking tasks resumed"
STORE_FULL = "Redis is full (maxmemory, noeviction): storing results paused"


def fill(client: redis.Redis) -> None:
    """Make every write that could grow Redis fail, as a full noeviction Redis does."""
    # From before the filler: right after its SET, used_memory also counts the command's
    # input buffer, which Redis frees a moment later.
    baseline = client.info("memory")["used_memory"]
    client.set("test:filler", b"x" * FILLER)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", baseline + FILLER // 2)


def states(results) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.state] = counts.get(result.state, 0) + 1
    return counts


def test_a_full_redis_stops_taking_and_storing_then_both_resume(private_redis, stack_env, tmp_path):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, private_redis.url, secrets)
    # Small io capacity (10 x prefetch 4 per worker), so tasks are left queued behind the
    # running ones.
    workers = start_pools(env, tmp_path, IO_CONCURRENCY="10")
    client = make_client(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    try:
        # Running when Redis fills up: their results are stored only once it has room.
        running = [client.send_task(IO, (4.0,)) for _ in range(120)]
        for pool in ("gevent", "threads"):
            log = workers[pool].log
            wait_until(lambda log=log: "] received" in log.read_text(), HANG, f"{pool} busy")
        fill(admin)
        queued = admin.llen("io")
        assert queued > 0, "every io task was taken before Redis was full: raise the count"
        with pytest.raises(OperationalError, match="maxmemory"):
            client.send_task(CPU, (1000,))  # a publish is refused: the producer sees why

        time.sleep(FULL_FOR)
        for pool, worker in workers.items():
            assert worker.proc.poll() is None, f"{pool} worker exited:\n{worker.log.read_text()}"
        # The idle cpu workers tried to take and were refused; the io workers are at capacity
        # (their tasks wait to store results), so the io queue is untouched.
        for pool in ("prefork", "solo"):
            assert FULL in workers[pool].log.read_text(), f"{pool} did not say Redis is full"
        assert admin.llen("io") == queued
        for pool in ("gevent", "threads"):  # their running tasks finished, their results wait
            assert STORE_FULL in workers[pool].log.read_text(), f"{pool}: results not waiting"
        assert states(running).get("SUCCESS", 0) == 0

        admin.delete("test:filler")
        later = [client.send_task(CPU, (1000,)) for _ in range(20)]
        later += [client.send_task(IO, (0.1,)) for _ in range(20)]
        everything = running + later
        wait_until(
            lambda: states(everything).get("PENDING", 0) == 0,
            HANG,
            "every task stored a result (a hang, not a slowness)",
        )
        assert states(everything) == {"SUCCESS": len(everything)}
        runs = Counter(
            found for w in workers.values() for found in SUCCEEDED.findall(w.log.read_text())
        )
        assert {result.id: runs[result.id] for result in everything} == {
            result.id: 1 for result in everything
        }, "a task ran twice, or its success was not logged"
        for key in ("io", "io.taken", "cpu", "cpu.taken"):
            assert admin.llen(key) == 0, f"{key} not empty"
        assert admin.hlen("unacked") == 0
        for pool in ("prefork", "solo"):
            log = workers[pool].log.read_text()
            assert log.count(FULL) == 1, f"{pool}: said once per full period"
            assert log.index(FULL) < log.index(ROOM), f"{pool} did not say Redis has room"
        for pool, worker in workers.items():
            assert worker.proc.poll() is None, f"{pool} worker exited:\n{worker.log.read_text()}"
    finally:
        client.close()
        stop(*(w.proc for w in workers.values()))
