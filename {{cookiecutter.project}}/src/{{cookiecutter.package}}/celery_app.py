"""The Celery app: queues, routes and per-pool tuning, all in one place.

Figures quoted below were measured on a 2-core machine (celery 5.7, gevent 26.9, Redis 7).
"""

from __future__ import annotations

import os

from celery import Celery, bootsteps, signals
from celery.concurrency import get_implementation
from kombu import Exchange, Queue

from {{ cookiecutter.package }}.events import BufferedTaskEvents
from {{ cookiecutter.package }}.health import touch
from {{ cookiecutter.package }}.settings import get_settings

CPU_QUEUE = "cpu"
IO_QUEUE = "io"

# Routing lives here, once, by module: a task's queue follows from the file it is
# defined in, so call sites never name a queue.
TASK_ROUTES = {
    "{{ cookiecutter.package }}.tasks.cpu.*": {"queue": CPU_QUEUE},
    "{{ cookiecutter.package }}.tasks.io.*": {"queue": IO_QUEUE},
}

# Periodic tasks, declared once beside the routes: each goes to cpu or io by its module, like
# any other call. Sent by the beat service (beat.py); intervals in seconds or celery crontabs.
BEAT_SCHEDULE = {
    "count-primes-every-minute": {
        "task": "{{ cookiecutter.package }}.tasks.cpu.count_primes",
        "schedule": 60.0,
        "args": (100_000,),
    },
    "ping-api-every-30s": {
        "task": "{{ cookiecutter.package }}.tasks.io.wait_on_api",
        "schedule": 30.0,
        "args": (0,),
    },
}

# Set in each worker at start-up, inherited by prefork children: the pool that really runs tasks.
RUNTIME = {"pool": "unknown"}


def make_app() -> Celery:
    settings = get_settings()
    app = Celery(
        "{{ cookiecutter.package }}",
        include=[
            "{{ cookiecutter.package }}.tasks.cpu",
            "{{ cookiecutter.package }}.tasks.io",
        ],
    )
    app.conf.update(
        broker_url=settings.broker_url,
        # kombu's Redis transport with three delivery gaps closed: see broker.py.
        broker_transport="{{ cookiecutter.package }}.broker:Transport",
        # Celery's Redis backend, storing a result in one round trip: see results.py.
        result_backend=f"{{ cookiecutter.package }}.results:Backend+{settings.broker_url}",
        # JSON only: a pickled message could run arbitrary code in the worker.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # One direct exchange per queue: left implicit, both queues would bind to the
        # default exchange with the default queue's routing key.
        task_queues=(
            Queue(CPU_QUEUE, Exchange(CPU_QUEUE), routing_key=CPU_QUEUE),
            Queue(IO_QUEUE, Exchange(IO_QUEUE), routing_key=IO_QUEUE),
        ),
        task_routes=TASK_ROUTES,
        # Anything unrouted lands on the prefork worker, which copes with any kind of work.
        task_default_queue=CPU_QUEUE,
        task_create_missing_queues=False,
        # At-least-once: ack after the task ran, re-queue if its process died.
        # The example tasks are idempotent (pure functions and GETs), so a re-run is safe.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_time_limit=settings.task_time_limit,
        task_track_started=False,
        # Under gevent every greenlet counts as a thread; a per-thread backend built a
        # Redis pool per task (224 -> 532 tasks/s when shared).
        result_backend_thread_safe=True,
        result_expires=settings.result_expires,
        result_extended=False,
        worker_send_task_events=settings.task_events,
        # The producer's task-sent event carries the queue and the time sent: the exporter's
        # metrics by queue and time waiting in the queue need it (metrics.py).
        task_send_sent_event=settings.task_events,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis re-delivers a task not acked within this time: keep it above the longest task.
            "visibility_timeout": settings.visibility_timeout,
            # Look for such tasks every 10 s: kombu's default scans every 10th 10 s tick, which
            # left tasks of a SIGKILLed worker waiting up to 100 s past the timeout (measured).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # One Redis list per queue (no priorities): lets broker.py take a message and keep
            # it in <queue>.taken in one command (BLMOVE), so a restart cannot lose it.
            "priority_steps": [0],
            # kombu's default of 10 connections starves acks from hundreds of greenlets.
            "max_connections": settings.io_concurrency + 20,
            # redis-py blocks forever by default: a half-open connection would hang the
            # prefork hub (and its heartbeat) in a record or an ack. Above brpop_timeout (1 s).
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
        },
        # The result backend's pool size is this option: Celery ignores a max_connections in
        # result_backend_transport_options, and redis-py 8 then caps the pool at 100. 500
        # greenlets storing results at once failed tasks with "Too many connections"
        # (405 of 5000 one-second tasks lost, measured by the benchmark).
        redis_max_connections=settings.io_concurrency + 20,
        # A result written while Redis restarts is retried, not dropped after the task ran
        # (a Redis restart under load lost one result without this). ~2 min at most.
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        result_backend_max_sleep_between_retries_ms=10_000,
        # Periodic tasks: RedBeat keeps the schedule and each entry's last run in Redis and
        # lets one beat send at a time (a lock renewed every loop); see beat.py.
        beat_schedule=BEAT_SCHEDULE,
        beat_scheduler="{{ cookiecutter.package }}.beat:Scheduler",
        beat_max_loop_interval=settings.beat_max_loop_interval,
        redbeat_redis_url=settings.broker_url,
        redbeat_redis_options={},
        redbeat_lock_timeout=settings.beat_lock_timeout,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts_level="INFO",
    )
    app.steps["worker"].add(Heartbeat)
    # Task events in batches under gevent too (see events.py).
    app.steps["consumer"].add(BufferedTaskEvents)
    return app


class Heartbeat(bootsteps.StartStopStep):
    """Touch a file every few seconds from the worker's own timer.

    The container health check reads the file's age: a cheap probe that also goes stale
    when the event loop is blocked (``celery inspect ping`` costs ~0.4 s CPU per probe).
    """

    requires = ("celery.worker.components:Timer",)
    interval = 5.0

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.path = get_settings().heartbeat_file
        self.tref = None

    def start(self, worker):
        self.beat()
        self.tref = worker.timer.call_repeatedly(self.interval, self.beat)

    def stop(self, worker):
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def beat(self):
        touch(self.path)


@signals.worker_init.connect
def _record_pool(sender=None, **kwargs):
    # e.g. celery.concurrency.gevent:TaskPool -> "gevent"
    name = get_implementation(sender.pool_cls).__module__.rsplit(".", 1)[-1]
    RUNTIME["pool"] = {"thread": "threads"}.get(name, name)


# Niceness of the processes running CPU-bound tasks (prefork children; a solo worker itself).
# Saturating every core, they delayed the io worker sharing the machine: I/O p99 during a CPU
# flood went from 1.46 s to 0.73 s for 0.5 s calls, the CPU batch's makespan unchanged
# (benchmark, mixed scenario). Across containers the kernel weighs cgroups, not niceness:
# give compose services cpu_shares for the same effect.
CPU_CHILD_NICE = 10


@signals.worker_process_init.connect
def _lower_cpu_children_priority(**kwargs):
    from celery import current_app

    # Only this app's workers: the benchmark's untuned baseline imports this module too.
    if current_app._get_current_object() is app:
        os.nice(CPU_CHILD_NICE)


app = make_app()
