"""Tasks, one module per queue: the module a task lives in decides where it runs.

``cpu.py`` -> queue ``cpu`` -> prefork worker; ``io.py`` -> queue ``io`` -> gevent worker.
"""

import os
import time

from {{ cookiecutter.package }}.celery_app import RUNTIME

# Every process that runs tasks records their final failures in the dead-letter queue.
from {{ cookiecutter.package }}.deadletter import record as _record_failures  # noqa: F401


def run_info(task, started: float, cpu_started: float) -> dict:
    """What every example task returns: where and how it ran, from its own clock."""
    return {
        "worker": task.request.hostname,
        "queue": (task.request.delivery_info or {}).get("routing_key"),
        "pool": RUNTIME["pool"],
        "pid": os.getpid(),
        "started": started,
        "finished": time.time(),
        "cpu_seconds": time.process_time() - cpu_started,
    }
