"""The demo API: a slow HTTP endpoint standing in for an upstream service.

    python -m {{ cookiecutter.package }}.demo.api --port 8000

``GET /delay/<seconds>`` answers after that many seconds (0 to 60), ``GET /healthz`` at once.
gevent's server holds thousands of slow requests open in one process; it keeps no state.
"""

from __future__ import annotations

import argparse
import json

import gevent
from gevent.pywsgi import WSGIServer

MAX_DELAY = 60.0


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    status, body = "404 Not Found", {"error": "try /delay/<seconds> or /healthz"}
    if path == "/healthz":
        status, body = "200 OK", {"ok": True}
    elif path.startswith("/delay/"):
        seconds = _seconds(path.removeprefix("/delay/"))
        if seconds is None:
            status, body = "400 Bad Request", {"error": f"delay must be 0..{MAX_DELAY} seconds"}
        else:
            gevent.sleep(seconds)
            status, body = "200 OK", {"delayed": seconds}
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers)
    return [data]


def _seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= MAX_DELAY else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside its container
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    WSGIServer((args.host, args.port), app, log=None).serve_forever()


if __name__ == "__main__":
    main()
