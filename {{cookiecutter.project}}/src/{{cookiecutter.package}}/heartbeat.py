"""Worker liveness: the heartbeat file says "this worker is not stuck", not "Redis is up".

A thread of the worker's main process touches HEARTBEAT_FILE every 5 s while one holds:

- the worker's event loop ran in the last STALL_SECONDS (its own timer records each run);
- a solo worker runs a task that started less than TASK_TIME_LIMIT ago (solo runs tasks in
  the loop itself, and Celery enforces no time limit there: past it, the worker is restarted);
- the broker does not answer, or answered again less than RECONNECT_GRACE ago: the loop waits
  in Celery's reconnect, where a restart would only throw away the running tasks' acks.

Otherwise the file goes stale and the probe (``health heartbeat``) fails. The file holds
``ready`` or ``broker-away``; ``health ready`` also fails on the second (readiness).
Under gevent too it is an OS thread: a task that never yields stalls the loop, not the thread.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import bootsteps
from celery.concurrency import get_implementation
from celery.concurrency.solo import TaskPool as SoloPool
from celery.worker import state
from gevent import monkey

from {{ cookiecutter.package }}.health import write_beat
from {{ cookiecutter.package }}.settings import get_settings

logger = logging.getLogger(__name__)

# An OS thread and a real sleep even where gevent patched them: a greenlet would stall with
# the hub it should watch, and its DNS lookups queue on the hub's resolver (one stuck there
# for minutes while Redis was away, measured). Patched sockets in this thread get its own hub.
SLEEP = monkey.get_original("time", "sleep")
START_THREAD = monkey.get_original("_thread", "start_new_thread")


def native_thread(target) -> None:
    START_THREAD(target, ())


INTERVAL = 5.0
# The loop's timer runs every INTERVAL; three missed runs mean it is not running.
STALL_SECONDS = 3 * INTERVAL
# Celery retries the broker every 2, 4, ... up to 30 s (kombu's ensure_connection), then
# restarts its consumer steps: give it one full retry step and a margin after Redis is back.
RECONNECT_GRACE = 60.0


class Liveness:
    """The rules above, apart from threads and files so that a unit test can drive them."""

    def __init__(self, broker_up, solo: bool, time_limit: float, clock=time.monotonic):
        self.broker_up, self.solo, self.time_limit, self.clock = broker_up, solo, time_limit, clock
        self.loop_at = clock()
        self.broker_away_at: float | None = None

    def loop_ran(self) -> None:
        self.loop_at = self.clock()

    def check(self, longest_task: float | None) -> str | None:
        """``ready``, ``broker-away`` or None (stuck: do not beat). ``longest_task``: how long
        the oldest running task of this process has run, in seconds (None: none runs)."""
        now = self.clock()
        if not self.broker_up():
            # A loop frozen while Redis is away beats too: a restart would not bring Redis
            # back, and the grace below ends once it answers.
            self.broker_away_at = now
            return "broker-away"
        if now - self.loop_at <= STALL_SECONDS:
            return "ready"
        if self.broker_away_at is not None and now - self.broker_away_at <= RECONNECT_GRACE:
            return "broker-away"  # Redis is back; the consumer is still reconnecting
        if self.solo and longest_task is not None and longest_task <= self.time_limit:
            return "ready"
        return None


class Heartbeat(bootsteps.StartStopStep):
    """Starts the liveness thread; the worker's timer marks each run of the loop."""

    # After the pool: prefork's first children are forked before the thread exists.
    requires = ("celery.worker.components:Timer", "celery.worker.components:Pool")

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        settings = get_settings()
        self.path = settings.heartbeat_file
        self.client = redis.Redis.from_url(
            settings.broker_url, socket_timeout=2, socket_connect_timeout=2
        )
        self.liveness = Liveness(self._broker_up, False, settings.task_time_limit)
        self.stopped = False
        self.tref = None
        self.stuck_logged = False

    def _broker_up(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def start(self, worker):
        self.liveness.solo = get_implementation(worker.pool_cls) is SoloPool
        write_beat(self.path, "ready")
        self.tref = worker.timer.call_repeatedly(INTERVAL, self.liveness.loop_ran)
        native_thread(self._run)

    def stop(self, worker):
        self.stopped = True
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def _run(self) -> None:
        while not self.stopped:
            SLEEP(INTERVAL)
            try:
                self.beat()
            except Exception:  # the thread must outlive any one failure, or liveness lies
                logger.exception("heartbeat check failed")

    def beat(self) -> None:
        started = [r.time_start for r in list(state.active_requests) if r.time_start]
        verdict = self.liveness.check(time.time() - min(started) if started else None)
        if verdict is None:
            if not self.stuck_logged:
                logger.error(
                    "event loop has not run for %.0f s with Redis answering: heartbeat "
                    "stopped, the orchestrator will restart this worker",
                    time.monotonic() - self.liveness.loop_at,
                )
                self.stuck_logged = True
            return
        self.stuck_logged = False
        write_beat(self.path, verdict)
