"""kombu's Redis transport with two delivery gaps closed.

Selected in ``celery_app.py`` with ``broker_transport``; every Celery client of the app
(workers, producer, Flower) uses it.

1. kombu takes a message off the queue (BRPOP) and records it as unacknowledged in a second
   command. When Redis restarted between the two, the record failed and the message was
   dropped before any worker saw it (1 of 2,000 queued tasks in some restarts, measured).
   Here the record is retried until Redis is back, for up to ``RECORD_RETRY_SECONDS``.
2. After a lost connection, kombu put the worker's unacknowledged messages back on the queue
   while Redis was still unreachable, and acknowledged tasks that finished later on the
   closed channel: both raised out of the worker ("Unrecoverable error", measured on each
   Redis restart under load). Here the delivery tags are kept, and the next channel, once
   it has reached Redis, puts those messages back or removes the acknowledged ones.
3. A queue entry that is not a kombu JSON envelope (something else wrote to the list) raised
   inside the transport and took the whole worker down. Here it is logged, kept in the
   ``REJECTED_KEY`` list for inspection, and the worker goes on.
"""

from __future__ import annotations

import json
import logging
import time

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)

# Long enough for a Redis restart (a few seconds with a large append-only file), short enough
# that a broker gone for good shows up as a worker error rather than a silent hang.
RECORD_RETRY_SECONDS = 120.0
RECORD_RETRY_PAUSE = 0.5

# Delivery tags this process could not settle in Redis; the next channel does it.
PENDING_RESTORE: set[str] = set()  # back on the queue
PENDING_ACK: set[str] = set()  # done: forget them

REJECTED_KEY = "rejected"
REJECTED_KEEP = 1000  # newest entries kept: a flood of garbage cannot fill Redis


class NotAnEnvelope(Exception):
    """A queue entry kombu cannot turn into a message."""

    def __init__(self, raw: str, reason: str):
        super().__init__(reason)
        self.raw = raw


class Message(kombu_redis.Channel.Message):
    def __init__(self, payload, channel=None, **kwargs):
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise NotAnEnvelope(dumps(payload), f"{type(exc).__name__}: {exc}") from exc


class QoS(kombu_redis.QoS):
    def append(self, message, delivery_tag):
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        while True:
            try:
                return super().append(message, delivery_tag)
            except self.channel.connection_errors as exc:
                # ZADD and HSET are idempotent: a retry after a lost reply does no harm.
                if time.monotonic() >= deadline:
                    logger.critical(
                        "task %s taken from the queue but not recorded in Redis: %r",
                        (message.headers or {}).get("id"),
                        exc,
                    )
                    raise
                time.sleep(RECORD_RETRY_PAUSE)

    def _unreachable(self) -> tuple[type[BaseException], ...]:
        # AttributeError: kombu 5.7 reaches for the pool of a closed channel's connection.
        return (*self.channel.connection_errors, AttributeError)

    def restore_unacked(self, client=None):
        tags = list(self._delivered)
        try:
            return super().restore_unacked(client)
        except self._unreachable() as exc:
            PENDING_RESTORE.update(tags)
            self._delivered.clear()
            logger.warning("%d unacknowledged tasks go back once Redis answers: %r", len(tags), exc)

    def ack(self, delivery_tag):
        try:
            return super().ack(delivery_tag)
        except self._unreachable() as exc:
            self._defer(delivery_tag, PENDING_ACK, exc)

    def reject(self, delivery_tag, requeue=False):
        try:
            return super().reject(delivery_tag, requeue=requeue)
        except self._unreachable() as exc:
            self._defer(delivery_tag, PENDING_RESTORE if requeue else PENDING_ACK, exc)

    def _defer(self, delivery_tag: str, pending: set[str], exc: BaseException) -> None:
        PENDING_RESTORE.discard(delivery_tag)
        pending.add(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)  # settled in memory; Redis later
        logger.warning("task settled once Redis answers (%r)", exc)

    def settle_pending(self) -> None:
        for tag in list(PENDING_ACK):
            self._remove_from_indices(tag).execute()
            PENDING_ACK.discard(tag)
        # A transaction on the unacked hash: a message already put back (by the visibility
        # sweep of any worker) is not queued twice.
        for tag in list(PENDING_RESTORE):
            self.restore_by_tag(tag)
            PENDING_RESTORE.discard(tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    Message = Message

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # has reached Redis (kombu pings it)
        self.qos.settle_pending()

    def _brpop_read(self, **options):
        try:
            return super()._brpop_read(**options)
        except json.JSONDecodeError as exc:
            self._reject(exc.doc, f"not JSON: {exc}")
        except NotAnEnvelope as exc:
            self._reject(exc.raw, f"not a kombu message: {exc}")
        return True

    def _reject(self, raw: str, reason: str) -> None:
        logger.error(
            "rejected a queue entry (%s), kept in Redis list %r: %.80r", reason, REJECTED_KEY, raw
        )
        with self.conn_or_acquire() as client:
            client.pipeline().lpush(REJECTED_KEY, raw).ltrim(
                REJECTED_KEY, 0, REJECTED_KEEP - 1
            ).execute()


class Transport(kombu_redis.Transport):
    Channel = Channel
