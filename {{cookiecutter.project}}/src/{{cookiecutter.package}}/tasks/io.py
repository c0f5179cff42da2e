"""I/O-bound tasks: network calls, run by the gevent worker (queue ``io``)."""

import time

import requests
from requests.adapters import HTTPAdapter

from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import run_info

MAX_DELAY = 60.0
_session: requests.Session | None = None


def session() -> requests.Session:
    """One keep-alive pool per worker process, as large as the pool's concurrency."""
    global _session
    if _session is None:
        size = get_settings().io_concurrency
        _session = requests.Session()
        _session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=size))
        _session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=size))
    return _session


@app.task(bind=True)
def fetch(self, url: str, timeout: float = 30.0) -> dict:
    """HTTP GET ``url``; fails (and is not retried) on a non-2xx answer."""
    started, cpu_started = time.time(), time.process_time()
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
    started, cpu_started = time.time(), time.process_time()
    base = str(get_settings().demo_api_url).rstrip("/")
    return {**_get(f"{base}/delay/{seconds}", seconds + 30), **run_info(self, started, cpu_started)}


def _get(url: str, timeout: float) -> dict:
    response = session().get(url, timeout=timeout)
    response.raise_for_status()
    return {"status": response.status_code, "bytes": len(response.content)}


@app.task(bind=True)
def noop(self) -> dict:
    """Does nothing: measures the queue's own per-task cost."""
    return run_info(self, time.time(), time.process_time())
