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
