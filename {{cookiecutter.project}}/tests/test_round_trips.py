"""Redis commands per task on real workers of every pool, counted by Redis itself (INFO
commandstats), never timed: where the process that ran the task also acks it, the result and
the ack go in one script."""

from __future__ import annotations

import pytest
import redis

from conftest import make_client, start_pools, stop, wait_until, with_redis

N = 30
# Scripts per task: the record, then the result and the ack together; a prefork child stores
# the result, its parent acks: one more there.
SCRIPTS = {"gevent": 2, "threads": 2, "solo": 2, "prefork": 3}


def evalsha_calls(admin: redis.Redis) -> int:
    return admin.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


@pytest.mark.parametrize("pool", SCRIPTS)
def test_a_result_and_its_ack_share_one_round_trip(pool, private_redis, stack_env, tmp_path):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, private_redis.url, secrets)
    kind = "cpu" if pool in ("prefork", "solo") else "io"
    workers = start_pools(env, tmp_path, {pool: kind}, TASK_EVENTS="false")
    client = make_client(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    noop = f"{{ cookiecutter.package }}.tasks.{kind}.noop"  # routed to the pool's queue

    def settled() -> bool:  # a prefork parent acks after its child stored the result
        return admin.hlen("unacked") == 0 and admin.llen(f"{kind}.taken") == 0

    try:
        # Warm-up: each script's first call may load it (NOSCRIPT, then EVALSHA again).
        client.send_task(noop).get(timeout=60)
        wait_until(settled, 60, "the warm-up task acked")
        before = evalsha_calls(admin)
        results = [client.send_task(noop) for _ in range(N)]
        assert [r.get(timeout=120)["pool"] for r in results] == [pool] * N
        wait_until(settled, 60, "every task acked")
        assert evalsha_calls(admin) - before == SCRIPTS[pool] * N
    finally:
        client.close()
        stop(*(w.proc for w in workers.values()))
