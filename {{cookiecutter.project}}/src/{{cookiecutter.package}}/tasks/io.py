"""I/O-bound tasks: network calls, run by the gevent worker (queue ``io``).

Transient failures (connection errors, timeouts, 5xx, 429) are retried with backoff, other
failures fail at once: see retries.py.
"""

import time

import urllib3

from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.retries import (
    TRANSIENT,
    check_status,
    retry_or_fail,
)
from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import cpu_clock, run_info

MAX_DELAY = 60.0
_pool: urllib3.PoolManager | None = None


def http() -> urllib3.PoolManager:
    """One keep-alive pool per worker process, as large as the pool's concurrency.

    urllib3 directly, not requests: about half the CPU per GET (docs/benchmark.md), and CPU
    per task is what caps one gevent process.
    """
    global _pool
    if _pool is None:
        _pool = urllib3.PoolManager(num_pools=4, maxsize=get_settings().io_concurrency)
    return _pool


@app.task(bind=True)
def fetch(self, url: str, timeout: float = 30.0) -> dict:
    """HTTP GET ``url``; retries transient failures, fails at once on a 4xx answer."""
    started, cpu_started = time.time(), cpu_clock()
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL string, got {url!r}")
    return {**_get(self, url, timeout), **run_info(self, started, cpu_started)}


@app.task(bind=True)
def wait_on_api(self, seconds: float) -> dict:
    """Ask the demo API to answer after ``seconds``: a stand-in for a slow upstream."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= MAX_DELAY
    ):
        raise ValueError(f"seconds must be a number from 0 to {MAX_DELAY}, got {seconds!r}")
    started, cpu_started = time.time(), cpu_clock()
    base = str(get_settings().demo_api_url).rstrip("/")
    url = f"{base}/delay/{seconds}"
    return {**_get(self, url, seconds + 30), **run_info(self, started, cpu_started)}


def _get(task, url: str, timeout: float) -> dict:
    # No transport retries: the task retries, as a new message, so the wait holds no greenlet
    # and every attempt shows in the worker's log and in Flower.
    try:
        response = http().request("GET", url, timeout=timeout, retries=False)
        check_status(url, response)
    except TRANSIENT as exc:
        raise retry_or_fail(task, exc) from exc
    return {
        "status": response.status,
        "bytes": len(response.data),
        "attempts": task.request.retries + 1,
    }


@app.task(bind=True)
def noop(self) -> dict:
    """Does nothing: measures the queue's own per-task cost."""
    return run_info(self, time.time(), cpu_clock())
