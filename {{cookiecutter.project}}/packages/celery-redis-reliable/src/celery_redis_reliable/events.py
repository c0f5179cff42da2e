"""Task events in batches on workers without an event loop (gevent), as prefork already does.

Celery buffers task events only when the worker runs an event-loop hub (prefork, solo,
threads); under gevent every ``task-received``/``started``/``succeeded`` is its own Redis
publish (the ``XXX`` note in ``celery/worker/consumer/events.py``), which costs the io worker
a good part of its throughput (the project's docs/benchmark.md has the figures). This
consumer bootstep gives the gevent worker's dispatcher the same task
buffer (sent as ``task.multi``, which Flower and Celery's event receivers read), flushed
every ``TASK_EVENTS_FLUSH_INTERVAL`` seconds, when ``buffer_limit`` events are waiting, before a reconnect
and at shutdown. Workers with a hub are left exactly as Celery runs them.

It relies on ``EventDispatcher`` internals (``buffer_group``, ``_group_buffer``, ``flush``);
``check_celery()`` verifies them when the worker starts and stops it with one line if a
Celery upgrade changed them.
"""

from __future__ import annotations

import logging

from celery import bootsteps
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer.events import Events

logger = logging.getLogger(__name__)

GROUP = "task"


def check_celery() -> None:
    """Fail at start-up, naming what is missing, if Celery's dispatcher no longer buffers."""
    probe = EventDispatcher(enabled=False, buffer_group=[GROUP])
    missing = [
        name
        for name in ("buffer_group", "buffer_limit", "_group_buffer", "flush")
        if not hasattr(probe, name)
    ]
    if missing or GROUP not in probe.buffer_group:
        raise RuntimeError(
            f"{__name__}: celery.events.EventDispatcher changed (missing: {missing or 'buffer'}); "
            "this module supports Celery 5.7: remove the BufferedTaskEvents step or adapt it"
        )


class BufferedTaskEvents(bootsteps.StartStopStep):
    """Buffer task events of a hub-less consumer and flush them from the worker's timer."""

    requires = (Events,)

    def __init__(self, c, **kwargs):
        super().__init__(c, **kwargs)
        check_celery()
        self.dispatcher: EventDispatcher | None = None
        self.tref = None

    def start(self, c):
        dispatcher = c.event_dispatcher
        if c.hub is not None or dispatcher is None:
            return  # prefork & co. already buffer through their event loop
        dispatcher.buffer_group = frozenset(dispatcher.buffer_group) | {GROUP}
        self._carry_over(dispatcher)
        self.dispatcher = dispatcher
        # The app sets it from its settings; 0.5 s when it does not.
        interval = float(c.app.conf.get("reliable_task_events_flush_interval", 0.5))
        self.tref = c.timer.call_repeatedly(interval, self.flush)

    def _carry_over(self, dispatcher: EventDispatcher) -> None:
        # A reconnect replaces the dispatcher; Celery carries its unsent messages over, not its
        # group buffers: move events buffered since the last flush to the new one.
        previous = self.dispatcher
        if previous is None or previous is dispatcher:
            return
        for group, events in previous._group_buffer.items():
            dispatcher._group_buffer[group].extend(events)
            events.clear()

    def flush(self):
        if self.dispatcher is not None:
            try:
                self.dispatcher.flush()
            except Exception as exc:  # a dead broker connection: the next flush retries
                logger.warning("task events not flushed yet: %r", exc)

    def stop(self, c):
        # Runs at a warm shutdown (under gevent after the pool's last tasks ended) and before
        # a reconnect: what cannot be published then is kept by the dispatcher
        # (buffer_while_offline) and sent by the next one.
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        self.flush()

    def shutdown(self, c):
        # Last call before Celery closes the dispatcher, whatever the order steps stopped in.
        self.flush()
