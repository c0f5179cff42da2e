"""kombu's Redis transport with its delivery gaps closed.

Selected by the app with ``broker_transport``; the workers and the producer use it (Flower,
which consumes nothing it acknowledges, runs on kombu's own). Each fix was found by a fault
test and is shown by ``tests/test_transport.py`` (this library's):

1. kombu takes a message off the queue (BRPOP) and records it as unacknowledged in a second
   command. A Redis restart in between dropped the message before any worker saw it (1 of
   2,000 queued tasks in 5 of 6 restarts, measured). Here a worker consuming one queue takes
   the message with BLMOVE into ``<queue>.taken``, persisted like the queue, and records it
   with one script that first removes it from there: a message a sweep already put back is
   not recorded, and not run by this worker. Whatever stays in ``<queue>.taken`` (the worker
   died, or the reply or the record was lost) goes back on the queue after ``TAKEN_GRACE``
   seconds: every worker of the queue looks every ``SWEEP_EVERY``, busy or idle. The record
   is retried while Redis restarts, for up to ``RECORD_RETRY_SECONDS``.
2. After a lost connection, kombu put the worker's unacknowledged messages back on the queue
   while Redis was still unreachable, and acknowledged tasks that finished later on the
   closed channel: both raised out of the worker ("Unrecoverable error", measured on Redis
   restarts under load). Here the delivery tags are kept per process and settled in Redis
   every ``SWEEP_EVERY`` seconds (and by each new channel) once it answers.
3. A queue entry that is not a kombu JSON envelope (something else wrote to the list) raised
   inside the transport and took the whole worker down. Here it is logged, kept as it was in
   the ``REJECTED_KEY`` list for inspection, and the worker goes on.
4. A full Redis (``maxmemory`` with ``noeviction``) refuses BLMOVE: the refusal raised out
   of the transport and stopped the prefork worker ("Unrecoverable error: OutOfMemoryError").
   Here a refused take is retried every ``FULL_PAUSE`` seconds, logged once per full period;
   settles Redis refuses then are deferred as after a lost connection.
5. With ``appendfsync everysec`` a Redis crash loses its last second of writes, a task's
   result among them, while an ack deferred or retried past the restart still removed the
   record: the task was lost (1 of 2,000 in a kill -9 fault row). Each record notes which run
   of redis-server wrote it (``run_id``); an ack in another run puts the message back instead,
   so the task runs again (at least once).

Consumers that cannot take with BLMOVE (several queues, priorities, a key prefix, Redis older
than 6.2) keep kombu's BRPOP, with a warning naming why. ``guard.py`` stops the process
when kombu's internals used here change.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from queue import Empty
from typing import NamedTuple, Protocol

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

logger = logging.getLogger(__name__)

# Long enough for a Redis restart (a few seconds with a large append-only file); after that
# the message waits in <queue>.taken and the sweep returns it.
RECORD_RETRY_SECONDS = 30.0
RECORD_RETRY_PAUSE = 0.5

TAKEN_SUFFIX = ".taken"
# Above the record retry: a worker recording a message normally does so well within it. One
# that takes longer (reply parked while its prefetch is full) finds the entry put back and
# leaves the message to whoever takes it next.
TAKEN_GRACE = RECORD_RETRY_SECONDS + 30
SWEEP_EVERY = 10.0  # seconds between settles and looks at <queue>.taken, busy or idle
SWEEP_LOOK = 500  # entries looked at per sweep, oldest first: bounded cost after a mass failure

# Namespaced beside kombu's own keys (_kombu.binding.*), out of the way of queue names.
REJECTED_KEY = "_kombu.rejected"
REJECTED_KEEP = 1000  # newest entries kept: a flood of garbage cannot fill Redis
REJECTED_MAX_BYTES = 64 * 1024  # of each entry

FULL_PAUSE = 1.0  # seconds between takes while Redis is full: nothing to gain from asking faster
TAKING, SWEEPING = "taking tasks", "the sweep of unacknowledged tasks"  # what a full Redis pauses

BLMOVE_SINCE = (6, 2)
NO_LIFE_WARNING = (
    "Redis refuses INFO to scripts: an ack cannot tell a Redis restart, and a result written"
    " in the last second before a crash (appendfsync everysec) can be lost with its task"
)

# Which run of redis-server answers (its run_id, new on every start; NO_LIFE if INFO is not
# allowed). With appendfsync everysec a crash loses the last second of writes, a task's result
# among them: an ack in a later run than the record must not forget the delivery.
LIFE = b"""
local function life()
    local info = redis.pcall('INFO', 'server')
    if type(info) ~= 'string' then return '-' end
    return string.match(info, 'run_id:(%x+)') or '-'
end
"""
NO_LIFE = "-"

# Record a taken message as unacknowledged only if it is still in <queue>.taken. The ZSCORE
# check makes a retry after a lost reply see its own record. Returns the life, or 0.
# KEYS: taken, unacked_index, unacked. ARGV: entry, score, delivery tag, record.
RECORD = Script(None, LIFE + b"""
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
    redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
    return life()
end
local score = redis.call('ZSCORE', KEYS[2], ARGV[3])
if score and tonumber(score) == tonumber(ARGV[2]) then return life() end
return 0
""")  # fmt: skip

CURRENT_LIFE = Script(None, LIFE + b"return life()")

# Move an entry of <queue>.taken back onto the queue, unless someone else already did.
# KEYS: taken, queue. ARGV: entry, LREM count (1: newest first, -1: oldest first).
PUT_BACK = Script(None, b"""
if redis.call('LREM', KEYS[1], ARGV[2], ARGV[1]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[1])
    return 1
end
return 0
""")  # fmt: skip

# Keep a rejected entry, only if it was still this worker's to handle.
# KEYS: rejected, taken. ARGV: entry, what to keep, how many entries to keep.
REJECT = Script(None, b"""
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[3]) - 1)
return 1
""")  # fmt: skip


# Forget a delivery's record only if it is still this delivery's: kombu keeps a message's tag
# when it puts it back, so a copy another worker took since has the same tag, a newer score.
# And only in the life it was recorded in: after a restart, what the task wrote may be gone
# (returns LIFE_CHANGED, record kept: the caller puts the message back).
# Needs LIFE; results.py runs it after a task's result store, in the same script.
FORGET_FUNCTION = b"""
local function forget(index, unacked, tag, score, recorded_in)
    local current = redis.call('ZSCORE', index, tag)
    if not current or tonumber(current) ~= tonumber(score) then return 0 end
    if recorded_in ~= '-' and life() ~= recorded_in then return 2 end
    redis.call('ZREM', index, tag)
    redis.call('HDEL', unacked, tag)
    return 1
end
"""
# KEYS: unacked_index, unacked. ARGV: delivery tag, score written when it was recorded, life.
FORGET = Script(None, LIFE + FORGET_FUNCTION + b"""
return forget(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
""")  # fmt: skip
LIFE_CHANGED = 2


class HeldResult(Protocol):
    """A task's result waiting for its delivery's ack, to be stored in the same round trip."""

    server: tuple  # redis_server() of the backend's pool: only a channel on it can store it

    def settle(self, client, keys: list, args: list) -> int:
        """Store the result, then run FORGET's ``forget`` (keys, args): in one script."""

    def store(self) -> None:
        """Store it the backend's own way (retried): before the delivery is settled otherwise."""


def redis_server(pool) -> tuple:
    """Which Redis server and database a redis-py pool talks to."""
    kwargs = pool.connection_kwargs
    return (
        kwargs.get("host"),
        str(kwargs.get("port")),
        kwargs.get("path"),
        int(kwargs.get("db") or 0),
    )


class Taken(NamedTuple):
    """An entry this channel moved into a taken list and has not recorded yet."""

    key: str  # <queue>.taken
    raw: bytes  # the entry as Redis holds it


class ResultNotStored(Exception):
    """A held result could not be stored: its delivery is left unsettled, to run again."""


def store_result(result: HeldResult, delivery_tag: str) -> None:
    try:
        result.store()
    except Exception as exc:  # not a connection error: nothing may defer the settle now
        raise ResultNotStored(f"task result of delivery {delivery_tag}: {error_text(exc)}") from exc


class PutBack(Exception):
    """The entry left <queue>.taken before its record: the message is not this worker's."""


class NotAnEnvelope(Exception):
    """A queue entry kombu cannot turn into a message."""

    def __init__(self, payload, reason: str):
        super().__init__(reason)
        self.payload = payload


class ProcessState:
    """What a process keeps across its channels (one is built on every reconnect).

    Acks come from task threads or greenlets, settles and sweeps from the consumer loop:
    one lock for all of it.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # Deliveries, as (tag, score of their record; None if unknown): settled in Redis only
        # while the record is still theirs. Acks also keep the life they were recorded in.
        self.acks: set[tuple[str, float | None, str]] = set()  # done: forget them in Redis
        self.restores: set[tuple[str, float | None]] = set()  # put back on their queue
        self.seen: dict[str, dict[str, float]] = {}  # taken list -> entry digest -> first seen
        self.logged_once: set[str] = set()
        self.full: set[str] = set()  # what waits for a full Redis to have room
        # Deliveries this process recorded and has not settled: tag -> the QoS that settles it
        # and the delivered message's properties. A message put back keeps its tag, so a run
        # of an earlier delivery of it is told apart by that object (the task's
        # request.properties is the same one, except where the request was pickled: prefork).
        self.held: dict[str, tuple[QoS, dict]] = {}
        self.pid = os.getpid()  # a forked child inherits ``held``: it settles none of it

    def hold_result(self, delivery_tag: str, properties, result: HeldResult) -> bool:
        """Keep a task's result for its delivery's ack, which then stores it in the same
        round trip; False (store it now) unless this process acks that very delivery later,
        on a channel to the result's Redis."""
        qos, delivered = self.held.get(delivery_tag, (None, None))
        if qos is None or delivered is not properties or os.getpid() != self.pid:
            return False
        if qos._closed() or qos.server() != result.server:
            return False
        qos.results[delivery_tag] = result
        return True

    def unhold(self, delivery_tag: str, qos: QoS) -> None:
        """``qos`` settles that delivery no more (another channel's copy keeps its own entry)."""
        if self.held.get(delivery_tag, (None,))[0] is qos:
            del self.held[delivery_tag]

    def store_held(self, delivery_tag: str) -> None:
        """Store now the result held for a delivery (another store follows, or another settle)."""
        if (qos := self.held.get(delivery_tag, (None,))[0]) is not None:
            qos.store_held(delivery_tag)

    def full_for(self, what: str, exc: BaseException) -> None:
        """Say once per full period that ``what`` waits for room in Redis."""
        with self.lock:
            if what in self.full:
                return
            self.full.add(what)
        logger.warning(
            "Redis is full (maxmemory, noeviction): %s paused until it has room (%s)",
            what, error_text(exc),
        )  # fmt: skip

    def room_for(self, what: str) -> None:
        if what not in self.full:  # the every-call path: one set look-up
            return
        with self.lock:
            self.full.discard(what)
        logger.warning("Redis has room again: %s resumed", what)

    def defer(
        self, tag: str, requeue: bool, score: float | None = None, life: str = NO_LIFE
    ) -> None:
        with self.lock:
            self.restores.discard((tag, score))
            if requeue:
                self.restores.add((tag, score))
            else:
                self.acks.add((tag, score, life))

    def settle(self, qos: QoS) -> None:
        """Finish in Redis what failed earlier; a tag that fails again stays for next time."""
        for pending, finish in ((self.acks, qos.forget), (self.restores, qos.restore_owned)):
            with self.lock:
                deliveries = list(pending)
            for delivery in deliveries:
                with self.lock:  # held so an ack cannot move the tag while it is restored
                    if delivery not in pending:
                        continue
                    try:
                        finish(*delivery)
                    except Exception as exc:  # never out of a channel or the consumer loop
                        logger.warning(
                            "task %s not settled in Redis yet: %s", delivery[0], error_text(exc)
                        )
                        continue
                    pending.discard(delivery)

    def taken_too_long(self, taken: str, entries: list[bytes], now: float) -> list[bytes]:
        """Entries of ``taken`` this process has seen there for TAKEN_GRACE seconds."""
        current = {hashlib.sha256(raw).hexdigest(): raw for raw in entries}
        with self.lock:
            seen = self.seen.setdefault(taken, {})
            for digest in seen.keys() - current.keys():  # recorded, or put back by someone
                del seen[digest]
            old = [d for d in current if now - seen.setdefault(d, now) >= TAKEN_GRACE]
            for digest in old:
                del seen[digest]
        return [current[d] for d in old]

    def log_once(self, level: int, message: str) -> None:
        with self.lock:
            if message in self.logged_once:
                return
            self.logged_once.add(message)
        logger.log(level, message)


STATE = ProcessState()


def _reset_state() -> None:
    # A forked child settles nothing of its parent's, and must not inherit a held lock.
    global STATE
    STATE = ProcessState()


os.register_at_fork(after_in_child=_reset_state)


def envelope_problem(payload, channel) -> str | None:
    """Why ``payload`` is not a kombu message, or None: the fields kombu and QoS read."""
    if not isinstance(payload, dict):
        return f"a JSON {type(payload).__name__}, not an object"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "no 'properties' object"
    info = properties.get("delivery_info")
    if not isinstance(properties.get("delivery_tag"), str):
        return "no delivery_tag string"
    if not isinstance(info, dict) or not {"exchange", "routing_key"} <= info.keys():
        return "no delivery_info with exchange and routing_key"
    if not isinstance(payload.get("headers"), dict | None):
        return "headers not an object"
    if not isinstance(payload.get("body"), str | None):
        return "body not a string"
    encoding = properties.get("body_encoding")
    known = encoding is None or encoding in channel.codecs or str(encoding).lower() == "utf-8"
    if not known:
        return f"unknown body_encoding {encoding!r}"
    return None


def error_text(exc: BaseException) -> str:
    # redis-py's exceptions repr as e.g. "server:ResponseError", without the server's words.
    return f"{type(exc).__name__}: {exc}"


def blmove_supported(version: str) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= BLMOVE_SINCE


class Message(kombu_redis.Channel.Message):
    def __init__(self, payload, channel=None, **kwargs):
        problem = envelope_problem(payload, channel)
        if problem:
            raise NotAnEnvelope(payload, problem)
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except binascii.Error as exc:
            raise NotAnEnvelope(payload, f"body not base64: {exc}") from exc


class QoS(kombu_redis.QoS):
    @property
    def scores(self) -> dict[str, float]:
        """Delivery tag -> score of the record this channel wrote: what makes it this delivery's."""
        return self.__dict__.setdefault("_scores", {})

    @property
    def lives(self) -> dict[str, str]:
        """Delivery tag -> the life of Redis its record was written in."""
        return self.__dict__.setdefault("_lives", {})

    @property
    def results(self) -> dict[str, HeldResult]:
        """Delivery tag -> its task's result, held for the ack (STATE.hold_result)."""
        return self.__dict__.setdefault("_results", {})

    def server(self) -> tuple:
        return redis_server(self.channel.pool)

    def store_held(self, delivery_tag: str) -> None:
        if (result := self.results.pop(delivery_tag, None)) is not None:
            store_result(result, delivery_tag)

    def _release(self, delivery_tag: str) -> tuple[float | None, str]:
        STATE.unhold(delivery_tag, self)
        return self.scores.pop(delivery_tag, None), self.lives.pop(delivery_tag, NO_LIFE)

    def append(self, message, delivery_tag):
        taken = self.channel.pop_taken()
        delivery = message.delivery_info
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        score = time.time()
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        while True:
            try:
                if taken is None:
                    life = self._record(delivery_tag, score, record)
                elif not (life := self._record_taken(taken, delivery_tag, score, record)):
                    raise PutBack(delivery_tag)
                if life == NO_LIFE:
                    STATE.log_once(logging.WARNING, NO_LIFE_WARNING)
                self.scores[delivery_tag], self.lives[delivery_tag] = score, life
                STATE.held[delivery_tag] = (self, message.properties)
                return virtual.QoS.append(self, message, delivery_tag)
            except (*self.channel.connection_errors, OutOfMemoryError) as exc:
                # A full Redis refuses kombu's MULTI record (BRPOP path) as a whole: retried.
                if time.monotonic() >= deadline:
                    # The record may have run with its reply lost (Redis stopping right after
                    # it; measured in a 90 s outage): put it back once Redis answers, or it
                    # would wait VISIBILITY_TIMEOUT. Absent, restore_owned does nothing.
                    STATE.defer(delivery_tag, True, score)
                    where = "put back once Redis answers" if taken else "lost unless recorded"
                    logger.error(
                        "task %s not recorded, %s: %s",
                        (message.headers or {}).get("id"), where, error_text(exc),
                    )  # fmt: skip
                    raise
                time.sleep(RECORD_RETRY_PAUSE)

    def _record(self, delivery_tag: str, score: float, record: str) -> str:
        with self.pipe_or_acquire() as pipe:
            pipe.zadd(self.unacked_index_key, {delivery_tag: score})
            pipe.hset(self.unacked_key, delivery_tag, record)
            CURRENT_LIFE(client=pipe)
            return bytes_to_str(pipe.execute()[-1])  # MULTI/EXEC: all or nothing, repeatable

    def _record_taken(
        self, taken: Taken, delivery_tag: str, score: float, record: str
    ) -> str | None:
        """The life the record was written in, or None: the entry was no longer taken."""
        keys = [taken.key, self.unacked_index_key, self.unacked_key]
        with self.channel.conn_or_acquire() as client:
            life = RECORD(keys, [taken.raw, repr(score), delivery_tag, record], client)
        return None if life == 0 else bytes_to_str(life)

    def _closed(self) -> bool:
        # kombu detaches a closed channel from its transport: it has no way to Redis left.
        return self.channel.connection is None

    def restore_unacked(self, client=None):
        tags = list(self._delivered)
        try:
            super().restore_unacked(client)
            for tag in tags:
                self._release(tag)
            return None
        except self.channel.connection_errors as exc:
            for tag in tags:
                # Kept: a task still running acks this delivery later, cancelling the restore.
                STATE.defer(tag, True, self.scores.get(tag))
                # No result is held for it from now on, and this closed QoS is not kept alive
                # for deliveries that never ack (reserved ones, dropped by Celery).
                STATE.unhold(tag, self)
            self._delivered.clear()
            logger.warning(
                "%d unacknowledged tasks go back once Redis answers: %s", len(tags), error_text(exc)
            )

    def ack(self, delivery_tag):
        self._or_defer(delivery_tag, False, partial(self._ack_owned, delivery_tag))

    def reject(self, delivery_tag, requeue=False):
        self._or_defer(delivery_tag, requeue, partial(self._reject_owned, delivery_tag, requeue))

    def _reject_owned(self, delivery_tag: str, requeue: bool) -> None:
        self.store_held(delivery_tag)
        score = self.scores.get(delivery_tag)
        if requeue:
            self.restore_owned(delivery_tag, score, leftmost=True)
        else:
            self.forget(delivery_tag, score, self.lives.get(delivery_tag, NO_LIFE))
        virtual.QoS.ack(self, delivery_tag)
        self._release(delivery_tag)

    def _ack_owned(self, delivery_tag: str) -> None:
        # A task that outran the visibility timeout was handed to another worker under the same
        # tag: its ack must leave that worker's record alone.
        self.forget(
            delivery_tag, self.scores.get(delivery_tag), self.lives.get(delivery_tag, NO_LIFE)
        )
        virtual.QoS.ack(self, delivery_tag)
        self._release(delivery_tag)

    def restore_by_tag(self, tag, client=None, leftmost=False):
        # kombu's, limited to this delivery's record when this channel wrote it.
        self.restore_owned(tag, self.scores.get(tag), client, leftmost)

    def _or_defer(self, delivery_tag: str, requeue: bool, settle: Callable[[], None]) -> None:
        if not self._closed():
            try:
                return settle()
            except (*self.channel.connection_errors, OutOfMemoryError) as exc:
                logger.warning("task settled once Redis answers (%s)", error_text(exc))
        self.store_held(delivery_tag)  # the result before the settle, deferred or not
        STATE.defer(delivery_tag, requeue, *self._release(delivery_tag))
        virtual.QoS.ack(self, delivery_tag)  # settled in memory; in Redis by STATE.settle

    def forget(self, delivery_tag: str, score: float | None = None, life: str = NO_LIFE) -> None:
        """Remove the record of a delivery; with its score, only while it is still its; with
        its life, only if Redis has not restarted since: else the message goes back."""
        result = self.results.pop(delivery_tag, None)
        if score is None:
            if result is not None:
                store_result(result, delivery_tag)
            self._remove_from_indices(delivery_tag).execute()
            return
        keys, args = [self.unacked_index_key, self.unacked_key], [delivery_tag, repr(score), life]
        with self.channel.conn_or_acquire() as client:
            try:
                # A held result: stored, then the record forgotten, in one round trip.
                settled = (
                    result.settle(client, keys, args) if result else FORGET(keys, args, client)
                )
            except (*self.channel.connection_errors, OutOfMemoryError):
                if result is None:
                    raise
                store_result(result, delivery_tag)  # retried, waits for room; then as before
                settled = FORGET(keys, args, client)
            if settled != LIFE_CHANGED:
                return
        logger.warning(
            "task %s finished across a Redis restart: put back to run again, as what it "
            "wrote before the restart may be lost", self._task_id(delivery_tag)
        )  # fmt: skip
        self.restore_owned(delivery_tag, score)

    def _task_id(self, delivery_tag: str) -> str:
        message = self._delivered.get(delivery_tag)
        return (getattr(message, "headers", None) or {}).get("id") or delivery_tag

    def restore_owned(self, tag: str, score: float | None, client=None, leftmost=False) -> None:
        """Put a delivery's message back (kombu's restore_by_tag); with its score, only while
        the record is still this delivery's: one WATCH/MULTI transaction either way."""

        def restore(pipe):
            current = pipe.zscore(self.unacked_index_key, tag)
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            if score is not None and (current is None or float(current) != score):
                return  # another delivery's now, or already settled
            self._remove_from_indices(tag, pipe)
            if raw:
                M, EX, RK = loads(bytes_to_str(raw))
                self.channel._do_restore_message(M, EX, RK, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as client:
            client.transaction(restore, self.unacked_key, self.unacked_index_key)

    def restore_visible(self, *args, **kwargs):
        super().restore_visible(*args, **kwargs)
        self.channel.periodic()


class Channel(kombu_redis.Channel):
    QoS = QoS
    Message = Message

    def __init__(self, *args, **kwargs):
        self._ack_queues: set[str] = set()  # queues consumed with acknowledgements
        self._taking: str | None = None  # queue of the BLMOVE in flight
        self._taken: Taken | None = None
        self._swept_at = float("-inf")
        self._redis_version: str | None = None
        self._shared_client = None
        self._full_until = float("-inf")  # no take before then: Redis was full
        super().__init__(*args, **kwargs)  # has reached Redis (kombu pings it)
        STATE.settle(self.qos)

    @contextmanager
    def conn_or_acquire(self, client=None):
        # kombu builds a redis.Redis for every call (each record, ack and publish), and redis-py
        # fills its ~170 response callbacks each time: the largest worker-side cost per no-op
        # task in a profile of the io worker. One per pool does: it borrows a connection per
        # command, so greenlets and threads share it safely.
        if client:
            yield client
            return
        if self._pool is None and getattr(self.connection, "client", None) is None:
            # Closing: kombu has detached the channel (seen on a Redis outage, from the restore
            # in close()). Said as a lost connection, so the caller defers what it settles.
            raise RedisConnectionError("channel closed: no connection to Redis left")
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def basic_consume(self, queue, no_ack, *args, **kwargs):
        # Only acknowledged messages are recorded, which is what empties <queue>.taken:
        # no_ack consumers (e.g. replies to `celery inspect`) keep plain BRPOP.
        if no_ack:
            self._ack_queues.discard(queue)
        else:
            self._ack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag):
        ret = super().basic_cancel(consumer_tag)
        # kombu may finish a cancel after the current read: forget only what it dropped.
        self._ack_queues.intersection_update(self.active_queues)
        return ret

    def _blmove_queue(self) -> str | None:
        """The one queue to take from with BLMOVE, or None for kombu's BRPOP (logged once)."""
        queues = self.active_queues
        if not queues:
            return None
        reason = self._plain_reason(queues)
        if reason is None:
            return queues[0]
        # No acknowledgements: nothing to lose by BRPOP, and `celery inspect` would print it.
        level = logging.INFO if reason.startswith("no ack") else logging.WARNING
        STATE.log_once(level, f"kombu's BRPOP, no taken list, for a consumer with {reason}")
        return None

    def _plain_reason(self, queues: list[str]) -> str | None:
        if len(queues) > 1:
            return "several queues (BLMOVE takes from one list)"
        if list(self.priority_steps) != [0]:
            return "priorities (priority_steps other than [0]: one list per priority)"
        if self.global_keyprefix:
            return "a global_keyprefix"
        if queues[0] not in self._ack_queues:
            return "no acknowledgements (nothing to record)"
        version = self._server_version()
        if not blmove_supported(version):
            return f"Redis {version} (BLMOVE needs 6.2 or later)"
        return None

    def _server_version(self) -> str:
        if self._redis_version is None:
            with self.conn_or_acquire() as client:
                try:
                    self._redis_version = client.info("server")["redis_version"]
                except self.ResponseError:  # INFO disabled: BRPOP works everywhere
                    self._redis_version = "unknown"
        return self._redis_version

    def _brpop_start(self, timeout=None):
        self.periodic()
        queue = self._taking = self._blmove_queue()  # set on every start: no stale queue
        if queue is None:
            return super()._brpop_start(timeout)
        if time.monotonic() < self._full_until:
            # Nothing sent: the event loop asks again on its next tick (at most a second),
            # a synchronous consumer after its poll timeout.
            self._taking = None
            return None
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        wait = self.brpop_timeout if timeout is None else timeout
        command = ("BLMOVE", queue, queue + TAKEN_SUFFIX, "RIGHT", "LEFT", wait or 0)
        self.client.connection.send_command(*command)

    def _on_connection_disconnect(self, connection):
        if self._in_poll is connection:
            self._taking = None  # the reply is gone; the entry, if any, waits in .taken
        super()._on_connection_disconnect(connection)

    def _brpop_read(self, **options):
        try:
            if self._taking is None:
                return super()._brpop_read(**options)
            return self._take(**options)
        except json.JSONDecodeError as exc:
            self._reject(exc.doc, f"not JSON: {exc}")
        except UnicodeDecodeError as exc:
            self._reject(exc.object, "not UTF-8")
        except NotAnEnvelope as exc:
            # kombu's BRPOP path keeps only the parsed entry: stored re-serialized then.
            self._reject(dumps(exc.payload), f"not a kombu message: {exc}")
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
            except OutOfMemoryError as exc:  # refused before it took anything
                self._full_until = time.monotonic() + FULL_PAUSE
                STATE.full_for(TAKING, exc)
                raise Empty() from None
            STATE.room_for(TAKING)
            if not item:
                raise Empty()
            self._taken = Taken(queue + TAKEN_SUFFIX, item)
            self._hand_over(queue, self._taken)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _hand_over(self, queue: str, taken: Taken) -> None:
        if queue not in self.connection._callbacks:
            # Read after basic_cancel (e.g. at shutdown): straight back to the queue.
            with self.conn_or_acquire() as client:
                PUT_BACK([taken.key, queue], [taken.raw, 1], client)
            return
        try:
            self.connection._deliver(loads(bytes_to_str(taken.raw)), queue)
        except PutBack as exc:
            logger.info("task %s was put back on %r before its record: not run here", exc, queue)

    def pop_taken(self) -> Taken | None:
        taken, self._taken = self._taken, None
        return taken

    def _reject(self, raw: str | bytes, reason: str) -> None:
        taken = self.pop_taken()
        raw = taken.raw if taken else raw  # the entry as it was, not re-serialized
        raw = raw.encode() if isinstance(raw, str) else raw
        kept = raw[:REJECTED_MAX_BYTES]
        logger.error("rejected a queue entry (%s), kept in Redis list %r (%d of %d bytes): %.80r",
                     reason, REJECTED_KEY, len(kept), len(raw), raw)  # fmt: skip
        with self.conn_or_acquire() as client:
            if taken:
                REJECT([REJECTED_KEY, taken.key], [raw, kept, REJECTED_KEEP], client)
                return
            client.lpush(REJECTED_KEY, kept)
            client.ltrim(self.global_keyprefix + REJECTED_KEY, 0, REJECTED_KEEP - 1)

    def periodic(self) -> None:
        """Settle deferred tags and sweep <queue>.taken, at most every SWEEP_EVERY seconds.

        Also called before each take: kombu's restore hook runs from the event loop's timer
        or when a worker without one is idle, and a busy worker must still do both."""
        now = time.monotonic()
        if now - self._swept_at < SWEEP_EVERY:
            return
        self._swept_at = now
        STATE.settle(self.qos)
        try:
            self.sweep_taken()
            # kombu's own visibility restore (tasks of a killed worker) is skipped as well
            # when every poll returns a reply: a fresh gevent worker never ran it (a kill -9ed
            # io worker's 26 tasks stayed in 'unacked' for the 400 s a test waited).
            kombu_redis.QoS.restore_visible(self.qos, num=self.unacked_restore_limit, interval=1)
            STATE.room_for(SWEEPING)
        except self.connection_errors as exc:
            logger.debug("sweep of the taken list skipped: %s", error_text(exc))
        except OutOfMemoryError as exc:  # kombu's restore takes a lock with SET NX
            STATE.full_for(SWEEPING, exc)
        except self.ResponseError as exc:
            logger.warning("sweep of the taken list failed, will retry: %s", error_text(exc))

    def sweep_taken(self) -> None:
        """Put back entries that stayed in <queue>.taken for TAKEN_GRACE seconds."""
        queue = self._blmove_queue()
        if queue is None:
            return
        taken = queue + TAKEN_SUFFIX
        with self.conn_or_acquire() as client:
            entries = client.lrange(taken, -SWEEP_LOOK, -1)  # BLMOVE pushes left: oldest last
            for raw in STATE.taken_too_long(taken, entries, time.monotonic()):
                if PUT_BACK([taken, queue], [raw, -1], client):
                    logger.warning("put back a task taken but never recorded: %.80r", raw)

    def _size(self, queue):
        # Counted while taken: a stuck entry is still a task waiting to run.
        with self.conn_or_acquire() as client:
            return super()._size(queue) + client.llen(queue + TAKEN_SUFFIX)

    def _purge(self, queue):
        # A worker still recording a purged entry finds it gone and does not run it.
        key = queue + TAKEN_SUFFIX
        with self.conn_or_acquire() as client:
            taken, _ = client.pipeline().llen(key).delete(key).execute()
        return super()._purge(queue) + taken

    def _delete(self, queue, *args, **kwargs):
        super()._delete(queue, *args, **kwargs)
        with self.conn_or_acquire(client=kwargs.get("client")) as client:
            client.delete(queue + TAKEN_SUFFIX)


class Transport(kombu_redis.Transport):
    Channel = Channel
