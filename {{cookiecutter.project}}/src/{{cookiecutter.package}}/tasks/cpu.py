"""CPU-bound tasks: pure Python computation, run by the prefork worker (queue ``cpu``)."""

import time

from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.tasks import cpu_clock, run_info

MAX_LIMIT = 50_000_000


@app.task(bind=True)
def count_primes(self, limit: int) -> dict:
    """Count primes below ``limit`` by trial division: holds the GIL the whole time."""
    started, cpu_started = time.time(), cpu_clock()
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 0 to {MAX_LIMIT}, got {limit!r}")
    count = sum(1 for n in range(2, limit) if _is_prime(n))
    return {"result": count, **run_info(self, started, cpu_started)}


@app.task(bind=True)
def noop(self) -> dict:
    """Does nothing: measures the queue's own per-task cost."""
    return run_info(self, time.time(), cpu_clock())


@app.task(bind=True)
def reduce_fetches(self, fetches: list[dict]) -> dict:
    """The reduce step of pipeline.py: totals over the fetches, and where each one ran."""
    started, cpu_started = time.time(), cpu_clock()
    steps = [{"step": "fetch", **_where(fetch)} for fetch in fetches]
    steps.append({"step": "reduce", **_where(run_info(self, started, cpu_started))})
    return {
        "fetches": len(fetches),
        "bytes": sum(fetch["bytes"] for fetch in fetches),
        "attempts": sum(fetch.get("attempts", 1) for fetch in fetches),
        "steps": steps,
    }


def _where(info: dict) -> dict:
    return {key: info[key] for key in ("worker", "queue", "pool", "pid")}


def _is_prime(n: int) -> bool:
    if n < 4:
        return n > 1
    if n % 2 == 0:
        return False
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True
