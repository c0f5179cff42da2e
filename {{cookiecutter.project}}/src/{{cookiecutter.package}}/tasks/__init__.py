"""Tasks, one module per queue: the module a task lives in decides where it runs.

``cpu.py`` -> queue ``cpu`` -> prefork worker; ``io.py`` -> queue ``io`` -> gevent worker.
"""

import os
import time

from {{ cookiecutter.package }}.celery_app import RUNTIME

# Every process that runs tasks records their final failures in the dead-letter queue.
from {{ cookiecutter.package }}.deadletter import record as _record_failures  # noqa: F401


def cpu_clock() -> float | None:
    """CPU seconds of the running task's own process or thread; None under gevent.

    A prefork child or a solo worker runs one task at a time, a thread pool one task per thread;
    gevent's greenlets share one thread, so no clock tells one task's CPU from another's.
    """
    pool = RUNTIME["pool"]
    if pool == "gevent":
        return None
    return time.thread_time() if pool == "threads" else time.process_time()


def run_info(task, started: float, cpu_started: float | None) -> dict:
    """What every example task returns: where and how it ran, from its own clock."""
    return {
        "worker": task.request.hostname,
        "queue": (task.request.delivery_info or {}).get("routing_key"),
        "pool": RUNTIME["pool"],
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "cpu_seconds": None if cpu_started is None else cpu_clock() - cpu_started,
    }
