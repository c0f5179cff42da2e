"""Container health checks, kept free of heavy imports: each probe is a fresh process.

python -m {{ cookiecutter.package }}.health heartbeat   # worker, beat: heartbeat file is fresh
python -m {{ cookiecutter.package }}.health ready       # and the worker's broker answers

With IO_PROCESSES > 1 both check every io process's file: one frozen process fails the container.
python -m {{ cookiecutter.package }}.health http URL    # Flower / demo API answer 200
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request

# The worker touches its file every 5 s; three missed beats mean it is stuck or gone.
MAX_AGE_SECONDS = 15.0
BROKER_AWAY = "broker-away"  # what a worker's heartbeat holds while Redis does not answer


def touch(path: str) -> None:
    """Write a heartbeat: the probe reads the file's age."""
    with open(path, "a"):
        pass
    os.utime(path)


def write_beat(path: str, content: str) -> None:
    """A heartbeat with what the worker saw (heartbeat.py), replaced whole: never half-read."""
    partial = f"{path}.partial"
    with open(partial, "w") as out:
        out.write(content)
    os.replace(partial, path)


def process_beats(path: str, processes: int) -> list[str]:
    """Each io process's heartbeat file when a container runs several (supervise.py)."""
    return [f"{path}.{n}" for n in range(1, processes + 1)]


def listing(path: str) -> str:
    """Where the supervisor lists its processes' heartbeat files, one a line."""
    return f"{path}.processes"


def beats(path: str) -> list[str]:
    """The files a probe checks: every process's if listed (all must pass), else ``path``."""
    try:
        with open(listing(path)) as listed:
            return listed.read().splitlines() or [path]
    except FileNotFoundError:
        return [path]


def ready_ok(path: str, max_age: float = MAX_AGE_SECONDS) -> bool:
    if not heartbeat_ok(path, max_age):
        return False
    try:
        with open(path) as beat:
            return beat.read() != BROKER_AWAY
    except FileNotFoundError:
        return False


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
    beat = os.environ.get("HEARTBEAT_FILE", "/tmp/worker-heartbeat")
    if args[:1] == ["heartbeat"] and len(args) == 1:
        return 0 if all(heartbeat_ok(path) for path in beats(beat)) else 1
    if args[:1] == ["ready"] and len(args) == 1:
        return 0 if all(ready_ok(path) for path in beats(beat)) else 1
    if args[:1] == ["http"] and len(args) == 2:
        return 0 if http_ok(args[1]) else 1
    print(
        "usage: python -m {{ cookiecutter.package }}.health heartbeat | ready | http URL",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
