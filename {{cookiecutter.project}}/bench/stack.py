"""``--stack``: the running compose stack's own workers, measured from inside its network.

``python -m bench --stack`` runs this module in a one-off container of the stack
(``docker compose run`` of the producer service, with ``bench/`` mounted), so it reaches Redis
without publishing it. It prints one JSON document on stdout; progress goes to stderr.
Nothing is started or stopped: whatever runs (scaled replicas, .env concurrency) is measured.
"""

from __future__ import annotations

import argparse
import json
import sys

from {{ cookiecutter.package }}.celery_app import CPU_QUEUE, IO_QUEUE, app
from {{ cookiecutter.package }}.producer import Job, submit, wait
from {{ cookiecutter.package }}.tasks import cpu, io

from bench.runs import latencies, percentile, task_timings

# (I/O tasks, their latency s, CPU tasks, prime limit, I/O tasks beside the CPU batch)
SIZES = {"full": (4000, 0.5, 20, 300_000, 400), "smoke": (100, 0.2, 4, 20_000, 20)}


def slots() -> dict[str, dict[str, int]]:
    """Concurrency of each live worker, by kind (the part of its name before the @)."""
    stats = app.control.inspect(timeout=5).stats() or {}
    found: dict[str, dict[str, int]] = {kind: {} for kind in ("cpu", "io")}
    for name, info in stats.items():
        kind = name.split("@", 1)[0]
        if kind in found:
            found[kind][name] = info["pool"].get("max-concurrency", 1)
    return found


def run(jobs: list[Job], timeout: float) -> dict:
    submit(jobs)
    wait(jobs, timeout)
    return task_timings(jobs)


def io_row(n: int, latency: float, io_slots: int) -> dict:
    jobs = [Job(IO_QUEUE, io.wait_on_api.s(latency)) for _ in range(n)]
    result = run(jobs, 120 + 5 * n * latency / max(1, io_slots))
    bound = io_slots / latency
    measured = result.get("tasks_per_s")
    return {
        "variant": "stack io",
        "latency_s": latency,
        "slots": io_slots,
        "bound_tasks_per_s": round(bound, 1),
        "pct_of_bound": round(100 * measured / bound, 1) if measured else None,
        **result,
    }


def mixed_row(n_cpu: int, limit: int, n_io: int, latency: float) -> dict:
    """A CPU batch, then I/O tasks queued behind it: does I/O wait for the CPU work?"""
    cpu_jobs = [Job(CPU_QUEUE, cpu.count_primes.s(limit)) for _ in range(n_cpu)]
    io_jobs = [Job(IO_QUEUE, io.wait_on_api.s(latency)) for _ in range(n_io)]
    result = run(cpu_jobs + io_jobs, 300 + 10 * n_cpu)
    lat = latencies(io_jobs)
    return {
        "variant": "stack cpu + io",
        "io_task_s": latency,
        "io_latency_p50_s": round(percentile(lat, 50), 3) if lat else None,
        "io_latency_p99_s": round(percentile(lat, 99), 3) if lat else None,
        "workers": sorted({job.value["worker"] for job in cpu_jobs + io_jobs if job.value}),
        **result,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    n_io, latency, n_cpu, limit, n_mixed = SIZES["smoke" if args.smoke else "full"]
    found = slots()
    if not found["cpu"] or not found["io"]:
        print(f"error: no cpu and io workers answer ({found}); is the stack up?", file=sys.stderr)
        return 1
    print(f"measuring workers {sorted(found['cpu'])} {sorted(found['io'])}", file=sys.stderr)
    rows = [
        io_row(n_io, latency, sum(found["io"].values())),
        mixed_row(n_cpu, limit, n_mixed, latency),
    ]
    results = {"stack": rows}
    json.dump({"mode": "stack", "slots": found, "results": results}, sys.stdout)
    return 0 if all(row["succeeded"] == row["n"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
