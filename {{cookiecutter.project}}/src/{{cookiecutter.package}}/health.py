"""Container health checks, kept free of heavy imports: each probe is a fresh process.

python -m {{ cookiecutter.package }}.health heartbeat   # worker, beat: heartbeat file is fresh
python -m {{ cookiecutter.package }}.health http URL    # Flower / demo API answer 200
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

# The worker touches its file every 5 s; three missed beats mean it is stuck or gone.
MAX_AGE_SECONDS = 15.0


def touch(path: str) -> None:
    """Write a heartbeat: the probe reads the file's age."""
    with open(path, "a"):
        pass
    os.utime(path)


def heartbeat_ok(path: str, max_age: float = MAX_AGE_SECONDS) -> bool:
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    return age <= max_age


def http_ok(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - local probe
            return response.status == 200
    except OSError:
        return False


def main(args: list[str]) -> int:
    if args[:1] == ["heartbeat"] and len(args) == 1:
        return 0 if heartbeat_ok(os.environ.get("HEARTBEAT_FILE", "/tmp/worker-heartbeat")) else 1
    if args[:1] == ["http"] and len(args) == 2:
        return 0 if http_ok(args[1]) else 1
    print(
        "usage: python -m {{ cookiecutter.package }}.health heartbeat | http URL",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
