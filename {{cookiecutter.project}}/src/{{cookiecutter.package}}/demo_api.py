"""A tiny HTTP endpoint that answers slowly: the demo target of the I/O tasks.

    python -m {{ cookiecutter.package }}.demo_api --port 8000

``GET /delay/<seconds>`` answers after that many seconds (at most 60); ``GET /healthz``
answers at once. gevent's server keeps thousands of slow requests open in one process.
"""

from __future__ import annotations

import argparse
import json

import gevent
from gevent.pywsgi import WSGIServer

MAX_DELAY = 60.0


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
    return _reply(start_response, "404 Not Found", {"error": "try /delay/<seconds> or /healthz"})


def _reply(start_response, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside its container
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    WSGIServer((args.host, args.port), app, log=None).serve_forever()


if __name__ == "__main__":
    main()
