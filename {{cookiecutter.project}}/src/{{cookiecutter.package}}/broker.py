"""kombu's Redis transport with its delivery gaps closed.

Selected in ``celery_app.py`` with ``broker_transport``; every Celery client of the app
(workers, producer, Flower) uses it. Each fix was found by a fault test and is shown by
``tests/test_broker.py``:

1. kombu takes a message off the queue (BRPOP) and records it as unacknowledged in a second
   command. A Redis restart in between dropped the message before any worker saw it (1 of
   2,000 queued tasks in 5 of 6 restarts, measured). Here a worker consuming one queue takes
   the message with BLMOVE into ``<queue>.taken``, persisted like the queue, and removes it
   from there in the same transaction that records it. Whatever stays in ``<queue>.taken``
   (the worker died, or the reply or the record was lost) goes back on the queue after
   ``TAKEN_GRACE`` seconds: every worker of the queue looks every ``SWEEP_EVERY``, busy or idle.
   The record itself is retried while Redis restarts, for up to ``RECORD_RETRY_SECONDS``.
2. After a lost connection, kombu put the worker's unacknowledged messages back on the queue
   while Redis was still unreachable, and acknowledged tasks that finished later on the
   closed channel: both raised out of the worker ("Unrecoverable error", measured on Redis
   restarts under load). Here the delivery tags are kept, and the next channel, once it has
   reached Redis, puts those messages back or removes the acknowledged ones.
3. A queue entry that is not a kombu JSON envelope (something else wrote to the list) raised
   inside the transport and took the whole worker down. Here it is logged, kept in the
   ``REJECTED_KEY`` list for inspection, and the worker goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from queue import Empty

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

# Long enough for a Redis restart (a few seconds with a large append-only file); after that
# the message waits in <queue>.taken and the sweep returns it.
RECORD_RETRY_SECONDS = 30.0
RECORD_RETRY_PAUSE = 0.5

TAKEN_SUFFIX = ".taken"
# Above the record retry, so a message a worker is still recording is never put back.
TAKEN_GRACE = RECORD_RETRY_SECONDS + 30
SWEEP_EVERY = 10.0  # seconds between looks at <queue>.taken, busy or idle

# Put an entry of <queue>.taken back on the queue, unless another worker already did.
PUT_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[1])
    return 1
end
return 0
"""

# Entry digest -> when this process first saw it in a taken list. Per process, not per channel:
# a channel is replaced on every reconnect, and the grace must not start over each time.
TAKEN_SEEN: dict[str, float] = {}

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
        taken = self.channel.pop_taken()
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        while True:
            try:
                with self.pipe_or_acquire() as pipe:
                    pipe.zadd(self.unacked_index_key, {delivery_tag: time.time()})
                    pipe.hset(self.unacked_key, delivery_tag, record)
                    if taken:
                        pipe.lrem(*taken)
                    pipe.execute()  # MULTI/EXEC: all or nothing, and safe to repeat
                return virtual.QoS.append(self, message, delivery_tag)
            except self.channel.connection_errors as exc:
                if time.monotonic() >= deadline:
                    task_id = (message.headers or {}).get("id")
                    logger.error("task %s left in the taken list: %r", task_id, exc)
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

    def restore_visible(self, *args, **kwargs):
        super().restore_visible(*args, **kwargs)
        self.channel.sweep_taken()


class Channel(kombu_redis.Channel):
    QoS = QoS
    Message = Message

    def __init__(self, *args, **kwargs):
        self._acked: set[str] = set()  # queues consumed with acknowledgements
        self._taking: str | None = None  # queue of the BLMOVE in flight
        self._taken: tuple[str, int, str] | None = None  # (list, count, entry) for LREM
        self._swept_at = 0.0
        super().__init__(*args, **kwargs)  # has reached Redis (kombu pings it)
        self.qos.settle_pending()

    def basic_consume(self, queue, no_ack, *args, **kwargs):
        # Only acknowledged messages are recorded, which is what empties <queue>.taken:
        # no_ack consumers (e.g. replies to `celery inspect`) keep plain BRPOP.
        if no_ack:
            self._acked.discard(queue)
        else:
            self._acked.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _single_queue(self) -> str | None:
        """The queue to take from with BLMOVE: one acknowledged queue, no priority lists, no
        key prefix (a worker of this stack consumes exactly one such queue)."""
        queues = self.active_queues
        plain = list(self.priority_steps) == [0] and not self.global_keyprefix
        if len(queues) == 1 and queues[0] in self._acked and plain:
            return queues[0]
        return None

    def _brpop_start(self, timeout=None):
        queue = self._single_queue()
        if queue is None:
            return super()._brpop_start(timeout)
        self._sweep_between_takes()
        self._taking = queue
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        wait = self.brpop_timeout if timeout is None else timeout
        command = ("BLMOVE", queue, queue + TAKEN_SUFFIX, "RIGHT", "LEFT", wait or 0)
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options):
        try:
            if self._taking is None:
                return super()._brpop_read(**options)
            return self._take(**options)
        except json.JSONDecodeError as exc:
            self._reject(exc.doc, f"not JSON: {exc}")
        except NotAnEnvelope as exc:
            self._reject(exc.raw, f"not a kombu message: {exc}")
        finally:
            self._taken = None  # after _reject, which removes the entry from <queue>.taken
        return True

    def _take(self, **options):
        queue, self._taking = self._taking, None
        connection = self.client.connection
        try:
            try:
                item = self.client.parse_response(connection, "BLMOVE", **options)
            except self.connection_errors:
                connection.disconnect()  # reconnect on the next round; the entry waits in .taken
                raise
            if not item:
                raise Empty()
            raw = bytes_to_str(item)
            self._taken = (queue + TAKEN_SUFFIX, 1, raw)
            self.connection._deliver(loads(raw), queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def pop_taken(self) -> tuple[str, int, str] | None:
        taken, self._taken = self._taken, None
        return taken

    def _reject(self, raw: str, reason: str) -> None:
        logger.error(
            "rejected a queue entry (%s), kept in Redis list %r: %.80r", reason, REJECTED_KEY, raw
        )
        taken = self.pop_taken()
        with self.conn_or_acquire() as client:
            pipe = client.pipeline()
            pipe.lpush(REJECTED_KEY, raw).ltrim(REJECTED_KEY, 0, REJECTED_KEEP - 1)
            if taken:
                pipe.lrem(*taken)
            pipe.execute()

    def _sweep_between_takes(self) -> None:
        # kombu's restore hook runs only when the worker is idle (gevent, threads, solo): a
        # worker busy for hours must still sweep. Never between a take and its record.
        try:
            self.sweep_taken()
        except self.connection_errors as exc:
            logger.debug("sweep of the taken list skipped: %r", exc)

    def sweep_taken(self) -> None:
        """Put back entries that stayed in <queue>.taken for TAKEN_GRACE seconds."""
        queue, now = self._single_queue(), time.monotonic()
        if queue is None or now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        taken = queue + TAKEN_SUFFIX
        with self.conn_or_acquire() as client:
            entries = {f"{taken}:{hashlib.sha256(raw).hexdigest()}": raw
                       for raw in client.lrange(taken, 0, -1)}  # fmt: skip
            # Forget entries that left the list (recorded, or put back by another worker).
            for key in [k for k in TAKEN_SEEN if k.startswith(f"{taken}:") and k not in entries]:
                del TAKEN_SEEN[key]
            put_back = client.register_script(PUT_BACK)
            for key, raw in entries.items():
                if now - TAKEN_SEEN.setdefault(key, now) < TAKEN_GRACE:
                    continue
                del TAKEN_SEEN[key]
                if put_back(keys=[taken, queue], args=[raw]):
                    logger.warning("put back a task taken but never recorded: %.80r", raw)


class Transport(kombu_redis.Transport):
    Channel = Channel
