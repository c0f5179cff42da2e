"""8. Enqueueing: through the web API (api.py, concurrent HTTP clients) against the CLI
producer's way (apply_async in one process), to the same Redis, nothing consuming.

Per publish: the time until the caller knows the task is in Redis (the API's 202, or
apply_async's return). Requests/s over the whole batch.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import urllib3

from bench import procs
from bench.runs import percentile

PACKAGE = "{{ cookiecutter.package }}"


def enqueue(bench, sizes) -> list[dict]:
    client = bench.redis()
    rows = []
    for _ in range(sizes.enqueue_rounds):  # interleaved: a busy spell hits both alike
        client.delete("cpu")
        rows.append(_api_row(bench, sizes))
        client.delete("cpu")
        rows.append(_producer_row(bench, sizes))
    client.delete("cpu")
    return [_median(rows, variant) for variant in (API, PRODUCER)]


API = "api, {clients} HTTP clients"
PRODUCER = "producer (apply_async, one process)"


def _api_row(bench, sizes) -> dict:
    folder = bench.logdir / "api-secrets"
    folder.mkdir(exist_ok=True)
    key = secrets.token_urlsafe(32)
    (folder / "api_key").write_text(key)
    port = procs.free_port()
    log = (bench.logdir / "api.log").open("w")
    argv = [sys.executable, "-m", f"{PACKAGE}.api", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(argv, env=bench.env(SECRETS_DIR=folder), stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/tasks/count-primes"
    http = urllib3.PoolManager(maxsize=sizes.enqueue_clients, retries=False, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    try:
        procs.wait_until(lambda: procs.port_open(port), 60, "the web API")
        http.request("POST", url, body='{"limit": 2}', headers=headers)  # connected first

        def one(_) -> tuple[int, float]:
            started = time.perf_counter()
            status = http.request("POST", url, body='{"limit": 2}', headers=headers).status
            return status, time.perf_counter() - started

        n = sizes.enqueue_tasks
        started = time.perf_counter()
        with ThreadPoolExecutor(sizes.enqueue_clients) as pool:
            answers = list(pool.map(one, range(n)))
        seconds = time.perf_counter() - started
    finally:
        procs.stop(proc)
        log.close()
    ok = sum(1 for status, _ in answers if status == 202)
    queued = bench.redis().llen("cpu") - 1  # without the untimed first
    row = _row(API.format(clients=sizes.enqueue_clients), n, seconds, [t for _, t in answers])
    return {**row, "succeeded": min(ok, queued)}


def _producer_row(bench, sizes) -> dict:
    argv = [sys.executable, "-m", "bench.enqueue", str(sizes.enqueue_tasks)]
    proc = subprocess.run(argv, env=bench.env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"variant": PRODUCER, "n": sizes.enqueue_tasks, "succeeded": 0, "errors": [error]}
    figures = json.loads(proc.stdout)
    row = _row(PRODUCER, sizes.enqueue_tasks, figures["seconds"], figures["latencies"])
    return {**row, "succeeded": bench.redis().llen("cpu") - 1}


def _row(variant: str, n: int, seconds: float, latencies: list[float]) -> dict:
    return {
        "variant": variant,
        "n": n,
        "seconds": round(seconds, 3),
        "tasks_per_s": round(n / seconds, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 50), 2),
        "latency_p99_ms": round(1000 * percentile(latencies, 99), 2),
    }


def _median(rows: list[dict], variant: str) -> dict:
    """The run of median throughput; ok only if every run queued every task."""
    mine = [r for r in rows if r["variant"].split(",")[0] == variant.split(",")[0]]
    ranked = sorted(mine, key=lambda r: r.get("tasks_per_s") or 0)
    row = dict(ranked[len(ranked) // 2])
    row["succeeded"] = min(r["succeeded"] for r in mine)
    row["rounds"] = len(mine)
    row["errors"] = sorted({e for r in mine for e in r.get("errors") or []})
    return row


def _publish(n: int) -> dict:
    """What the CLI producer does per task (apply_async, the app's routes), timed per call."""
    from {{ cookiecutter.package }}.tasks import cpu

    cpu.count_primes.apply_async((2,))  # connected first: the figures are about publishing
    latencies = []
    started = time.perf_counter()
    for _ in range(n):
        begun = time.perf_counter()
        cpu.count_primes.apply_async((2,))
        latencies.append(time.perf_counter() - begun)
    return {"seconds": time.perf_counter() - started, "latencies": latencies}


if __name__ == "__main__":
    print(json.dumps(_publish(int(sys.argv[1]))))
