"""A slow, flaky HTTP upstream for the tests and the benchmark (not in the image).

    python -m bench.upstream --port 8000    # on 127.0.0.1

``GET /delay/<seconds>`` answers after that many seconds (at most 60); ``GET /healthz``
answers at once. gevent's server keeps thousands of slow requests open in one process.

``GET /flaky/<key>?fail=K&status=503&retry_after=S`` answers ``status`` (400..599, with a
``Retry-After: S`` header if given) to the first K calls for ``key``, then 200: an upstream
that recovers. ``GET /hits/<key>`` lists when the last calls for ``key`` arrived (epoch
seconds). Memory stays bounded: the newest ``MAX_KEYS`` keys and ``MAX_HITS`` times per key.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import OrderedDict, deque
from urllib.parse import parse_qs

import gevent
from gevent.pywsgi import WSGIServer

MAX_DELAY = 60.0
FLAKY_LIMITS = {"fail": (0, 1000, 1), "status": (400, 599, 503), "retry_after": (0, 3600, None)}

MAX_KEYS = 10_000
MAX_HITS = 100
# key -> (calls so far, arrival times of the last MAX_HITS) for /flaky/<key>, oldest key first
HITS: OrderedDict[str, tuple[int, deque[float]]] = OrderedDict()


def _record(key: str) -> int:
    """Count a call for ``key``; its number. One greenlet at a time runs this (no yield)."""
    calls, times = HITS.pop(key, (0, deque(maxlen=MAX_HITS)))
    times.append(time.time())
    HITS[key] = (calls + 1, times)
    while len(HITS) > MAX_KEYS:
        HITS.popitem(last=False)
    return calls + 1


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/healthz":
        return _reply(start_response, "200 OK", {"ok": True})
    if path.startswith("/delay/"):
        try:
            seconds = float(path.removeprefix("/delay/"))
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds <= MAX_DELAY:
            return _reply(
                start_response, "400 Bad Request", {"error": f"delay must be 0..{MAX_DELAY}"}
            )
        gevent.sleep(seconds)
        return _reply(start_response, "200 OK", {"delayed": seconds})
    if path.startswith("/flaky/"):
        return _flaky(path.removeprefix("/flaky/"), environ.get("QUERY_STRING", ""), start_response)
    if path.startswith("/hits/"):
        _, times = HITS.get(path.removeprefix("/hits/"), (0, ()))
        return _reply(start_response, "200 OK", {"hits": list(times)})
    return _reply(
        start_response, "404 Not Found", {"error": "try /delay/<s>, /flaky/<key>, /hits/<key>"}
    )


def _flaky(key: str, query: str, start_response) -> list[bytes]:
    try:
        params = _flaky_params(query)
    except ValueError as exc:
        return _reply(start_response, "400 Bad Request", {"error": str(exc)})
    call = _record(key)
    if call > params["fail"]:
        return _reply(start_response, "200 OK", {"key": key, "call": call})
    headers = [] if params["retry_after"] is None else [("Retry-After", str(params["retry_after"]))]
    status = f"{params['status']} Failing on purpose"
    return _reply(start_response, status, {"key": key, "call": call}, headers)


def _flaky_params(query: str) -> dict[str, int | None]:
    given = {name: values[-1] for name, values in parse_qs(query).items()}
    params = {}
    for name, (low, high, default) in FLAKY_LIMITS.items():
        text = given.get(name)
        value = int(text) if text is not None and text.isdigit() else default
        if text is not None and (value is None or not low <= value <= high):
            raise ValueError(f"{name} must be an integer from {low} to {high}")
        params[name] = value
    return params


def _reply(start_response, status: str, body: dict, headers=()) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
    )
    return [data]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args(argv).port
    # Loopback only: an upstream for the tests and the benchmark, never a service.
    WSGIServer(("127.0.0.1", port), app, log=None).serve_forever()


if __name__ == "__main__":
    main()
