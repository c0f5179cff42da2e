"""The Celery app: queues, routes and per-pool tuning, all in one place.

What each setting bought, measured, is in docs/benchmark.md ("Figures behind the settings").
"""

from __future__ import annotations

import os
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit

from celery import Celery, Task, signals
from celery.concurrency import get_implementation
from celery.utils.time import maybe_make_aware
from celery_redis_reliable.events import BufferedTaskEvents
from kombu import Exchange, Queue

from {{ cookiecutter.package }}.heartbeat import Heartbeat
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
# any other call. Sent by the beat service (beat.py); intervals in seconds or celery crontabs:
#   "refresh-rates-hourly": {"task": "{{ cookiecutter.package }}.tasks.io.fetch",
#                            "schedule": 3600.0, "args": ("https://rates.example/today",)},
BEAT_SCHEDULE: dict[str, dict] = {}


class DemoMissing(RuntimeError):
    """DEMO=true, but the demo package has been deleted."""


def beat_schedule(demo: bool) -> dict[str, dict]:
    """BEAT_SCHEDULE, plus the demo's example entries when DEMO=true (demo/schedule.py)."""
    if not demo:
        return dict(BEAT_SCHEDULE)
    try:
        from {{ cookiecutter.package }}.demo.schedule import DEMO_SCHEDULE
    except ImportError as exc:
        raise DemoMissing(
            "DEMO=true, but {{ cookiecutter.package }}.demo is not there (deleted with make "
            "delete-demo?); accepted: DEMO=false, or restore src/{{ cookiecutter.package }}/demo"
        ) from exc
    return {**DEMO_SCHEDULE, **BEAT_SCHEDULE}


# Set in each worker at start-up, inherited by prefork children: the pool that really runs tasks.
RUNTIME = {"pool": "unknown"}


class DelayTooLong(ValueError):
    """A countdown or ETA the broker cannot hold: the task would run more than once."""


def delay_problem(app: Celery, name: str, countdown, eta) -> str | None:
    """Why ``countdown``/``eta`` is refused for task ``name``, or None if it fits.

    On Redis a delayed task waits unacknowledged in the worker that took it; once it has been
    unacknowledged for VISIBILITY_TIMEOUT, Redis hands a copy to another worker, then another
    (celery#3270, celery#5935), and every copy runs. Waiting plus running must fit inside it.
    """
    if countdown is not None:
        delay = float(countdown)
    elif eta is not None:
        when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
        delay = (maybe_make_aware(when) - app.now()).total_seconds()
    else:
        return None
    settings = get_settings()
    limit = settings.visibility_timeout - settings.task_time_limit
    if delay <= limit:
        return None
    return (
        f"{name}: a countdown/eta {delay:.0f} s ahead is above {limit} s (VISIBILITY_TIMEOUT="
        f"{settings.visibility_timeout} - TASK_TIME_LIMIT={settings.task_time_limit}), so Redis "
        "would hand the waiting task to more workers and run it several times; accepted: at "
        f"most {limit} s ahead (or raise VISIBILITY_TIMEOUT, or schedule it with beat)"
    )


class App(Celery):
    """Celery refusing, in the process that publishes, a delay the broker cannot hold.

    Refused rather than warned: a duplicate run is silent and a warning in a producer's log
    is rarely read; the caller gets one line saying what to change, and nothing is sent.
    Every publish goes through ``send_task``: ``delay``, ``apply_async``, canvas, retries.
    """

    def send_task(self, name, args=None, kwargs=None, countdown=None, eta=None, **options):
        if problem := delay_problem(self, name, countdown, eta):
            raise DelayTooLong(problem)
        return super().send_task(name, args, kwargs, countdown=countdown, eta=eta, **options)


class GuardedTask(Task):
    """Refuses a too-long retry wait before Celery publishes the retry.

    Celery turns an error while publishing a retry into a Reject: the task would be dropped
    without a failure, so no dead-letter entry. Raised here, it fails the task instead.
    """

    def retry(
        self,
        args=None,
        kwargs=None,
        exc=None,
        throw=True,
        eta=None,
        countdown=None,
        max_retries=None,
        **options,
    ):
        # Celery's own default when neither is given.
        wait = self.default_retry_delay if not eta and countdown is None else countdown
        if problem := delay_problem(self.app, self.name, wait, eta):
            raise DelayTooLong(problem) from exc
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)


def tls_options(url: str) -> dict[str, str] | None:
    """The ssl_* parameters of a rediss:// URL (None for redis://)."""
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return None
    return {k: v for k, v in parse_qsl(parts.query) if k.startswith("ssl_")}


def make_app() -> Celery:
    settings = get_settings()
    app = App(
        "{{ cookiecutter.package }}",
        task_cls=GuardedTask,
        include=[
            "{{ cookiecutter.package }}.tasks.cpu",
            "{{ cookiecutter.package }}.tasks.io",
        ],
    )
    app.conf.update(
        broker_url=settings.broker_url,
        # The reliability layer (packages/celery-redis-reliable/README.md); RELIABLE_REDIS=false
        # selects stock kombu and Celery's RedisBackend instead.
        broker_transport="celery_redis_reliable.transport:Transport"
        if settings.reliable_redis
        else "redis",
        result_backend=(
            f"celery_redis_reliable.results:Backend+{settings.broker_url}"
            if settings.reliable_redis
            else settings.broker_url
        ),
        reliable_task_events_flush_interval=settings.task_events_flush_interval,
        reliable_durable_publish_timeout=settings.durable_publish_timeout,
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
        # Celery 5's default, said out loud (Celery 6 flips it): a task running when the Redis
        # connection drops keeps running; its message goes back and may run again (at least
        # once), and its late ack no longer touches the copy's record (the library's settles).
        # Cancelling would throw away every long task on each blip.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_time_limit=settings.task_time_limit,
        task_track_started=False,
        # Under gevent every greenlet counts as a thread; a per-thread backend built a
        # Redis pool per task (over twice the throughput when shared).
        result_backend_thread_safe=True,
        result_expires=settings.result_expires,
        result_extended=False,
        worker_send_task_events=settings.task_events,
        # The producer's task-sent event carries the queue and the time sent: the exporter's
        # metrics by queue and time waiting in the queue need it (metrics.py).
        task_send_sent_event=settings.task_events,
        broker_connection_retry_on_startup=True,
        # Flower's broker page builds its own Redis client from this alone, not from the URL.
        broker_use_ssl=tls_options(settings.broker_url),
        broker_transport_options={
            # Redis re-delivers a task not acked within this time: keep it above the longest task.
            "visibility_timeout": settings.visibility_timeout,
            # Look for such tasks every 10 s: kombu's default scans every 10th 10 s tick, which
            # left tasks of a SIGKILLed worker waiting up to 100 s past the timeout (measured).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # One Redis list per queue (no priorities): lets the library's transport take a
            # message and keep it in <queue>.taken in one command (BLMOVE), so a restart
            # cannot lose it.
            "priority_steps": [0],
            # kombu's default of 10 connections starves acks from hundreds of greenlets.
            "max_connections": settings.io_concurrency + 20,
            # redis-py blocks forever by default: a half-open connection would hang the
            # prefork hub in a record or an ack. Above brpop_timeout (1 s).
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
        beat_schedule=beat_schedule(settings.demo),
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
    if settings.reliable_redis:
        app.steps["consumer"].add(BufferedTaskEvents)
    return app


@signals.worker_init.connect
def _record_pool(sender=None, **kwargs):
    # e.g. celery.concurrency.gevent:TaskPool -> "gevent"
    name = get_implementation(sender.pool_cls).__module__.rsplit(".", 1)[-1]
    RUNTIME["pool"] = {"thread": "threads"}.get(name, name)


# Niceness of the processes running CPU-bound tasks (prefork children; a solo worker itself).
# Saturating every core, they delayed the io worker sharing the machine: niced, the I/O p99
# during a CPU flood halved, the CPU batch's makespan unchanged (benchmark, mixed scenario).
# Across containers the kernel weighs cgroups, not niceness:
# give compose services cpu_shares for the same effect.
CPU_CHILD_NICE = 10


@signals.worker_process_init.connect
def _lower_cpu_children_priority(**kwargs):
    from celery import current_app

    # Only this app's workers: the benchmark's untuned baseline imports this module too.
    if current_app._get_current_object() is app:
        os.nice(CPU_CHILD_NICE)


app = make_app()
