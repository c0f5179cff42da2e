"""Redis scripts per task on real workers of every pool, as Redis sees them (MONITOR), never
timed: where the process that ran the task also acks it, the result and the ack go in one
script."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter

import pytest
import redis
from celery_redis_reliable import results, transport

from conftest import make_client, start_pools, stop, wait_until, with_redis

N = 30
SCRIPTS = {
    transport.RECORD.sha: "record",
    transport.FORGET.sha: "ack",
    hashlib.sha1(results.STORE).hexdigest(): "result",
    results.SETTLE.sha: "result and ack",
}
# A prefork child stores the result, its parent acks: apart there, as before.
APART = {"record": N, "result": N, "ack": N}
PER_POOL = {
    "gevent": {"record": N, "result and ack": N},
    "threads": {"record": N, "result and ack": N},
    "solo": {"record": N, "result and ack": N},
    "prefork": APART,
}
STOP = "test-round-trips-stop"


def scripts_run(url: str, work) -> Counter:
    """This library's scripts Redis ran (EVALSHA, by name) while ``work()`` ran; kombu's own
    (e.g. the periodic refresh of the pidbox's bindings) are left out."""
    seen: Counter = Counter()
    monitor = redis.Redis.from_url(url).monitor()
    monitor.__enter__()

    def watch() -> None:
        while STOP not in (command := monitor.next_command()["command"]):
            words = command.split()
            if words[0].upper() == "EVALSHA" and words[1] in SCRIPTS:
                seen[SCRIPTS[words[1]]] += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        work()
    finally:
        redis.Redis.from_url(url).echo(STOP)
        watcher.join(60)
        monitor.__exit__()
    return seen


@pytest.mark.parametrize("pool", PER_POOL)
def test_a_result_and_its_ack_share_one_round_trip(pool, private_redis, stack_env, tmp_path):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, private_redis.url, secrets)
    kind = "cpu" if pool in ("prefork", "solo") else "io"
    workers = start_pools(env, tmp_path, {pool: kind}, TASK_EVENTS="false")
    client = make_client(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    # Routed to the pool's queue by its module.
    noop = f"{{ cookiecutter.package }}.tasks.{kind}.noop"

    def settled() -> bool:  # a prefork parent acks after its child stored the result
        return admin.hlen("unacked") == 0 and admin.llen(f"{kind}.taken") == 0

    def run() -> None:
        results_ = [client.send_task(noop) for _ in range(N)]
        assert [r.get(timeout=120)["pool"] for r in results_] == [pool] * N
        wait_until(settled, 60, "every task acked")

    try:
        # Warm-up: each script's first call may load it (NOSCRIPT, then EVALSHA again).
        client.send_task(noop).get(timeout=60)
        wait_until(settled, 60, "the warm-up task acked")
        assert scripts_run(private_redis.url, run) == PER_POOL[pool]
    finally:
        client.close()
        stop(*(w.proc for w in workers.values()))
