"""Which I/O failures are worth another try, and how long to wait before it.

Retried: connection errors, timeouts, a dropped connection, HTTP 5xx, and 429 (after at least
its Retry-After). Not retried: any other 4xx, and anything else a task raises; the request
itself is wrong, repeating it cannot help. A task out of retries fails and goes to the
dead-letter queue (deadletter.py).
"""

from __future__ import annotations

import random

import urllib3
from urllib3.exceptions import InvalidHeader, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from {{ cookiecutter.package }}.settings import get_settings


class HTTPStatusError(Exception):
    """The server answered, but not with a 2xx status: its request will not succeed as is."""


class TransientHTTPError(HTTPStatusError):
    """A 5xx or 429 answer: the server may do better later (``retry_after`` seconds, if said)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# Connect and read timeouts, refused or unresolvable hosts (NewConnectionError is a timeout
# subclass in urllib3), resets mid-answer.
TRANSIENT = (Urllib3Timeout, ProtocolError, TransientHTTPError)


def check_status(url: str, response: urllib3.BaseHTTPResponse) -> None:
    """Raise for a non-2xx answer, transient or not."""
    if 200 <= response.status < 300:
        return
    message = f"GET {url} answered {response.status}"
    if response.status == 429 or response.status >= 500:
        raise TransientHTTPError(message, retry_after(response))
    raise HTTPStatusError(message)


def retry_after(response: urllib3.BaseHTTPResponse) -> float | None:
    """The Retry-After header in seconds (both of its forms), None if absent or unreadable."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return urllib3.Retry().parse_retry_after(value)
    except InvalidHeader:
        return None


def backoff(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with "equal jitter": half of each step fixed, half random.

    Waits still grow with every attempt (step n lies in [base*2^n/2, base*2^n]), while
    tasks that failed together spread out instead of retrying in lockstep.
    """
    step = min(cap, base * 2**retries)
    return step / 2 + random.uniform(0, step / 2)  # noqa: S311 - jitter, not a secret


def retry_or_fail(task, exc: Exception):
    """Schedule ``task``'s next attempt after ``exc``; out of retries, ``exc`` is raised."""
    settings = get_settings()
    wait = backoff(task.request.retries, settings.retry_backoff_base, settings.retry_backoff_max)
    asked = getattr(exc, "retry_after", None)
    if asked is not None:
        if asked > settings.retry_backoff_max:
            # Waiting longer would hold the message past what the broker allows (see settings).
            raise HTTPStatusError(
                f"{exc}; Retry-After {asked:g} s is above RETRY_BACKOFF_MAX="
                f"{settings.retry_backoff_max:g}"
            ) from exc
        wait = max(wait, asked)
    return task.retry(exc=exc, countdown=wait, max_retries=settings.io_max_retries)
