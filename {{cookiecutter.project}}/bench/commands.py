"""The worker command lines a benchmark run compares.

Tuned workers come from ``worker.worker_argv``, the one definition compose runs; a scenario
changes only what it compares (queue, pool size). Untuned workers run the plain command.
"""

from __future__ import annotations

import sys

from {{ cookiecutter.package }}.settings import Settings
from {{ cookiecutter.package }}.worker import worker_argv


def tuned_argv(kind: str, env: dict[str, str], name: str, queue: str | None = None) -> list[str]:
    """The template's worker for ``kind``, settings from ``env``, optionally on another queue."""
    settings = Settings(**{key.lower(): value for key, value in env.items() if key.isupper()})
    replace = {"--hostname=": f"--hostname={name}@%h"}
    if queue:
        replace["--queues="] = f"--queues={queue}"
    return [_swap(arg, replace) for arg in worker_argv(kind, settings)]


def _swap(arg: str, replace: dict[str, str]) -> str:
    for prefix, new in replace.items():
        if arg.startswith(prefix):
            return new
    return arg


def untuned_argv(pool: str, concurrency: int, queue: str, name: str, events: bool) -> list[str]:
    """``celery worker --pool=P --concurrency=C``: Celery's defaults, nothing else.

    ``-Q`` picks the queue the scenario fills, ``--loglevel=INFO`` gives the "ready." line the
    benchmark waits for (the tuned worker logs at INFO too), ``-E`` is what Flower switches on.
    """
    app = "bench.untuned"
    argv = [sys.executable, "-m", "celery", "-A", app]
    argv += ["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--queues={queue}"]
    argv += [f"--hostname={name}@%h", "--loglevel=INFO"]
    return [*argv, "-E"] if events else argv
