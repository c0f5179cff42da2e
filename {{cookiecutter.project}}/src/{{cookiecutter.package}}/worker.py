"""The one definition of each worker's command line, used by compose and the tests alike.

    python -m {{ cookiecutter.package }}.worker cpu    # prefork (or solo), queue "cpu"
    python -m {{ cookiecutter.package }}.worker io     # gevent (or threads), queue "io"

The settings are checked first (the reliability library checks kombu when imported), then the process
is replaced by Celery (``exec``) so signals from Docker reach the worker directly. With
IO_PROCESSES > 1 the io command instead starts that many Celery workers, io@%h, io@%h-2, ..., each
with its own heartbeat file, and supervises them (supervise.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from {{ cookiecutter.package }}.health import listing, process_beats, write_beat
from {{ cookiecutter.package }}.settings import Settings, get_settings
from {{ cookiecutter.package }}.supervise import supervise

KINDS = ("cpu", "io")


def worker_argv(kind: str, settings: Settings, process: int = 1) -> list[str]:
    """Celery's command line for the worker of ``kind`` ("cpu" or "io"); ``process``: which of
    the container's io processes (the first keeps the plain name)."""
    if kind == "cpu":
        pool = settings.cpu_pool
        # solo runs one task at a time in the worker process itself: scale it by replicas.
        concurrency = "1" if pool == "solo" else str(settings.cpu_concurrency)
        prefetch = settings.cpu_prefetch_multiplier
    elif kind == "io":
        pool = settings.io_pool
        concurrency = str(settings.io_concurrency)
        prefetch = settings.io_prefetch_multiplier
    else:
        raise ValueError(f"unknown worker kind {kind!r}; accepted: {', '.join(KINDS)}")
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "{{ cookiecutter.package }}.celery_app",
        "worker",
        f"--queues={kind}",
        # "io@" first in every name: alerts, Flower filters and bench/stack.py go by it.
        f"--hostname={kind}@%h" if process == 1 else f"--hostname={kind}@%h-{process}",
        # The pool must be on the command line: Celery monkey-patches for gevent only
        # when it sees "-P gevent" there, not when it comes from the environment.
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--prefetch-multiplier={prefetch}",
        f"--loglevel={settings.log_level}",
        # Mingle (sync with peers at start) cost ~1 s per start; gossip scales with the
        # number of workers. Neither is needed: Flower uses events.
        "--without-mingle",
        "--without-gossip",
    ]
    if pool == "prefork" and settings.max_memory_per_child:
        # A child above the cap is replaced after its current task: leaks cannot grow forever.
        argv.append(f"--max-memory-per-child={settings.max_memory_per_child}")
    if soft_shutdown(kind, settings):
        # Config after "--" applies to this worker only (the io worker must not get it).
        argv += ["--", f"worker_soft_shutdown_timeout={settings.cpu_soft_shutdown_timeout}"]
    return argv


def soft_shutdown(kind: str, settings: Settings) -> bool:
    """Soft shutdown for the prefork cpu worker only: in celery 5.7 it crashes gevent."""
    prefork = kind == "cpu" and settings.cpu_pool == "prefork"
    return prefork and settings.cpu_soft_shutdown_timeout > 0


def worker_env(kind: str, settings: Settings) -> dict[str, str]:
    """The environment Celery starts with."""
    env = dict(os.environ)
    if soft_shutdown(kind, settings):
        # SIGTERM (docker stop) starts the soft shutdown: tasks get the timeout to finish,
        # then the rest are cancelled and re-queued at once, before the SIGKILL that would
        # leave them unacknowledged until VISIBILITY_TIMEOUT.
        env["REMAP_SIGTERM"] = "SIGQUIT"
    return env


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    if len(args) != 1 or args[0] not in KINDS:
        print(
            "usage: python -m {{ cookiecutter.package }}.worker cpu|io",
            file=sys.stderr,
        )
        raise SystemExit(2)
    settings = get_settings()
    env = worker_env(args[0], settings)
    if args[0] == "io" and settings.io_processes > 1:
        raise SystemExit(supervise(io_commands(settings, env)))
    # A listing left by an earlier IO_PROCESSES > 1 run here would point the probe elsewhere.
    Path(listing(settings.heartbeat_file)).unlink(missing_ok=True)
    argv = worker_argv(args[0], settings)
    os.execve(argv[0], argv, env)  # noqa: S606 - become Celery


def io_commands(settings: Settings, env: dict[str, str]) -> list[tuple[list[str], dict[str, str]]]:
    """One io worker per IO_PROCESSES, each beating in a file of its own that the probe checks."""
    files = process_beats(settings.heartbeat_file, settings.io_processes)
    for file in files:
        # Left by the run before a restart, it would pass the probe before its process is up.
        Path(file).unlink(missing_ok=True)
    write_beat(listing(settings.heartbeat_file), "\n".join(files))
    return [
        (worker_argv("io", settings, number), {**env, "HEARTBEAT_FILE": file})
        for number, file in enumerate(files, 1)
    ]


if __name__ == "__main__":
    main()
