"""I/O-bound tasks: network calls, run by the gevent worker (queue ``io``)."""

import time

import urllib3

from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import cpu_clock, run_info

MAX_DELAY = 60.0
_pool: urllib3.PoolManager | None = None


class HTTPStatusError(Exception):
    """The server answered, but not with a 2xx status."""


def http() -> urllib3.PoolManager:
    """One keep-alive pool per worker process, as large as the pool's concurrency.

    urllib3 directly, not requests: 0.8 ms of CPU per GET instead of 1.5 ms (measured here),
    and CPU per task is what caps one gevent process.
    """
    global _pool
    if _pool is None:
        _pool = urllib3.PoolManager(num_pools=4, maxsize=get_settings().io_concurrency)
    return _pool


@app.task(bind=True)
def fetch(self, url: str, timeout: float = 30.0) -> dict:
    """HTTP GET ``url``; fails (and is not retried) on a non-2xx answer."""
    started, cpu_started = time.time(), cpu_clock()
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL string, got {url!r}")
    return {**_get(url, timeout), **run_info(self, started, cpu_started)}


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
    return {**_get(f"{base}/delay/{seconds}", seconds + 30), **run_info(self, started, cpu_started)}


def _get(url: str, timeout: float) -> dict:
    # No transport retries: a failed call fails the task, visibly.
    response = http().request("GET", url, timeout=timeout, retries=False)
    if not 200 <= response.status < 300:
        raise HTTPStatusError(f"GET {url} answered {response.status}")
    return {"status": response.status, "bytes": len(response.data)}


@app.task(bind=True)
def noop(self) -> dict:
    """Does nothing: measures the queue's own per-task cost."""
    return run_info(self, time.time(), cpu_clock())
