"""SIMULATION of what KEDA would ask for on worker-io: no cluster, no KEDA, no HPA here.

Run inside a generated project (``uv run python simulate.py <ScaledObject json> <package>``).
Real parts: redis-server, the HTTP upstream (bench/upstream.py), the project's io worker and its tasks. Simulated:
KEDA's polling (its Redis query, run here every POLL seconds) and the HPA formula. Prints one
JSON row per poll.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())  # the project's bench/ folder

from bench.procs import Worker, start_redis, start_upstream, stop, wait_until

# KEDA's redis scaler counts a key by its type (pkg/scalers/redis_scaler.go): a list by
# LLEN, a hash by HLEN, sets and sorted sets by cardinality, a missing key as an empty list.
KEDA_QUERY = """
local count = {list = 'LLEN', hash = 'HLEN', set = 'SCARD', zset = 'ZCARD', none = 'LLEN'}
return redis.call(count[redis.call('TYPE', KEYS[1]).ok], KEYS[1])
"""
POLL = 0.5
BURSTS, BURST_SIZE, BURST_GAP, TASK_SECONDS = 3, 60, 2.0, 1.5


def clamp(replicas: int, spec: dict) -> int:
    return max(spec["minReplicaCount"], min(spec["maxReplicaCount"], replicas))


def desired(metric: float, target: float, spec: dict) -> int:
    return clamp(math.ceil(metric / target), spec)


def formula_sum(formula: str, values: dict[str, int]) -> int:
    """The sums of trigger names this project's formulas use (KEDA evaluates expr-lang)."""
    names = [name.strip() for name in formula.split("+")]
    if not all(name in values for name in names):
        raise SystemExit(f"formula {formula!r}: only sums of trigger names are simulated")
    return sum(values[name] for name in names)


def poll(client, script, spec: dict, queue: str) -> dict:
    """One consistent snapshot: KEDA's query per trigger, and what io truly holds."""
    pipe = client.pipeline(transaction=True)
    for trigger in spec["triggers"]:
        script(keys=[trigger["metadata"]["listName"]], client=pipe)
    pipe.hvals("unacked").llen(f"{queue}.taken")
    *metrics, records, in_transit = pipe.execute()
    values = {
        t.get("name", t["metadata"]["listName"]): m
        for t, m in zip(spec["triggers"], metrics, strict=True)
    }
    # Only the test can tell io's records from cpu's (routing key); KEDA cannot.
    taken = in_transit + sum(json.loads(r)[2] == queue for r in records)
    first = spec["triggers"][0]
    target = float(spec["advanced"]["scalingModifiers"]["target"])
    waiting = values[first.get("name", queue)]
    return {
        "waiting": waiting,
        "taken": taken,
        "metrics": values,
        "needed": desired(waiting + taken, target, spec),
        "queue_only": desired(waiting, float(first["metadata"]["listLength"]), spec),
        "with_fix": desired(
            formula_sum(spec["advanced"]["scalingModifiers"]["formula"], values), target, spec
        ),
    }


def main(spec: dict, package: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="keda-sim-"))
    redis_proc, url = start_redis(work)
    api, api_url = start_upstream()
    (work / "secrets").mkdir()
    env = {**os.environ, "REDIS_URL": url, "SECRETS_DIR": str(work / "secrets")}
    env.update(DEMO_API_URL=api_url, HEARTBEAT_FILE=str(work / "heartbeat"))
    os.environ.update(env)
    argv = [sys.executable, "-m", f"{package}.worker", "io"]
    worker = Worker("io", argv, env, work)
    try:
        wait_until(worker.ready, 180, "io worker")
        run(spec, package, url)
    finally:
        stop(worker.proc, api, redis_proc)


def run(spec: dict, package: str, url: str) -> None:
    import importlib

    import redis

    tasks = importlib.import_module(f"{package}.tasks.io")
    client = redis.Redis.from_url(url)
    script = client.register_script(KEDA_QUERY)
    start, sent, idle = time.monotonic(), 0, 0
    while idle < 3 and time.monotonic() - start < 150:
        if sent < BURSTS and time.monotonic() - start >= sent * BURST_GAP:
            for _ in range(BURST_SIZE):
                tasks.wait_on_api.delay(TASK_SECONDS)
            sent += 1
        row = {"t": round(time.monotonic() - start, 1), **poll(client, script, spec, "io")}
        print(json.dumps(row), flush=True)
        done = sent == BURSTS and row["waiting"] == row["taken"] == 0
        idle = idle + 1 if done else 0
        time.sleep(POLL)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), sys.argv[2])
