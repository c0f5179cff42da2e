"""5. The cost of durable publishing: publish throughput with and without the WAITAOF wait.

Every variant publishes to the same Redis 7.2+, append-only file on, as compose runs it. The
publishing runs in a child process (``python -m bench.publish``) whose app points at that Redis.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import redis

from bench import procs

# variant: (tasks per batch, wait for the AOF after each batch, appendfsync)
VARIANTS = {
    "plain": ("batch", False, "everysec"),
    "durable": ("batch", True, "everysec"),
    "durable, one batch": ("all", True, "everysec"),
    "plain, appendfsync always": ("batch", False, "always"),
}


def publish_cost(bench, sizes) -> list[dict]:
    try:
        stop, url = procs.start_waitaof_redis(bench.logdir)
    except RuntimeError as exc:  # reported in the results; the other scenarios keep theirs
        return [{"variant": "durable", "n": sizes.publish_tasks, "succeeded": 0, "errors": [str(exc)]}]  # fmt: skip
    try:
        # Rounds interleave the variants, so a busy spell of the machine hits them all alike.
        version = redis.Redis.from_url(url).info("server")["redis_version"]
        rounds = [_round(bench, sizes, url) for _ in range(sizes.publish_rounds)]
    finally:
        stop()
    rows = [_row(variant, [r[i] for r in rounds]) for i, variant in enumerate(VARIANTS)]
    plain = rows[0]
    for row in rows:
        _compare(row, plain)
        row["redis_server"] = version  # not the other scenarios' Redis
    return rows


def _round(bench, sizes, url: str) -> list[dict]:
    return [_run(bench, sizes, url, variant) for variant in VARIANTS]


def _run(bench, sizes, url: str, variant: str) -> dict:
    """One publishing child; returns its figures or the error it ended with."""
    size, durably, fsync = VARIANTS[variant]
    n, batch = sizes.publish_tasks, sizes.publish_batch if size == "batch" else sizes.publish_tasks
    client = redis.Redis.from_url(url)
    client.config_set("appendfsync", fsync)
    client.delete("cpu")
    argv = [sys.executable, "-m", "bench.publish", str(n), str(batch), str(int(durably))]
    proc = subprocess.run(argv, env=bench.env(REDIS_URL=url), capture_output=True, text=True, timeout=120 + n)  # fmt: skip
    queued = client.llen("cpu") - 1  # without the child's first, untimed task
    run = {"appendfsync": fsync, "batch": batch, "n": n, "succeeded": queued}
    if proc.returncode != 0:
        return {**run, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return {**run, **json.loads(proc.stdout)}


def _row(variant: str, runs: list[dict]) -> dict:
    """The median run's figures; ok only if every run queued every task."""
    errors = sorted({run["error"] for run in runs if "error" in run})
    row = {"variant": variant, **runs[0], "rounds": len(runs), "errors": errors}
    row.pop("error", None)
    row["succeeded"] = min(run["succeeded"] for run in runs)
    if errors:
        return row
    row["seconds"] = round(statistics.median(run["seconds"] for run in runs), 3)
    row["tasks_per_s"] = round(row["n"] / row["seconds"], 1)
    batches = -(-row["n"] // row["batch"])
    waited = statistics.median(run["waited_s"] for run in runs)
    row["wait_ms_per_batch"] = round(1000 * waited / batches, 1)
    return row


def _compare(row: dict, plain: dict) -> None:
    if "seconds" in row and "seconds" in plain:
        row["x_plain"] = round(plain["seconds"] / row["seconds"], 3)


def _publish(n: int, batch: int, durably: bool) -> dict:
    """Publish ``n`` no-op tasks in batches through the producer's own code.

    Returns the seconds taken and, of those, the seconds spent waiting for the AOF: that wait
    follows the fsync clock, so it stays readable on a machine too busy for steady rates.
    """
    from celery_redis_reliable import durable

    from {{ cookiecutter.package }}.celery_app import CPU_QUEUE
    from {{ cookiecutter.package }}.producer import Job, submit
    from {{ cookiecutter.package }}.tasks import cpu

    waited = [0.0]
    wait_for_aof = durable.wait_for_aof

    def timed_wait(*args, **kwargs):
        started = time.perf_counter()
        try:
            return wait_for_aof(*args, **kwargs)
        finally:
            waited[0] += time.perf_counter() - started

    durable.wait_for_aof = timed_wait
    submit([Job(CPU_QUEUE, cpu.noop.s())])  # connect first: the figures are about publishing
    jobs = [Job(CPU_QUEUE, cpu.noop.s()) for _ in range(n)]
    started = time.perf_counter()
    for first in range(0, n, batch):
        submit(jobs[first : first + batch], durably=durably)
    return {"seconds": time.perf_counter() - started, "waited_s": waited[0]}


if __name__ == "__main__":
    count, size, durably = map(int, sys.argv[1:4])
    print(json.dumps(_publish(count, size, bool(durably))))
