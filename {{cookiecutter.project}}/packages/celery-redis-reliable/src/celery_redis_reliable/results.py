"""Celery's Redis result backend, storing each result in one round trip instead of two.

Celery 5.7 reads a task's stored result before writing the new one (a SUCCESS is never
overwritten: a re-delivered task must not replace it), then writes it with the PUBLISH that
wakes ``AsyncResult.get`` in a MULTI/EXEC transaction: two round trips per task, about a fifth
of the io worker's CPU for a no-op in a profile. Here one Lua script reads, checks, writes and
publishes; atomic too, so nothing can land between the check and the write.

It overrides ``_store_result``; ``guard.py`` checks the Celery internals it calls when the
library is imported. The script reads the stored status with ``cjson``, so it can only judge plain
JSON. Any other encoding (``result_serializer`` msgpack, pickle or yaml, or any
``result_compression``; Celery also reads a compressed value whatever its own setting) is never
guessed at: when a value is already stored and the script cannot read it, the store falls back to
Celery's own read-check-write, and a SUCCESS is kept exactly as stock Celery keeps it. A first
store (nothing there yet) stays one round trip with every encoding.

A full Redis (``maxmemory`` with ``noeviction``) refuses the write. Celery gave up on the
result at once (it retries connection errors only): the task had run, its result was lost.
Here the store waits for room, as long as Redis stays full, logged once per full period.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from kombu.utils.objects import cached_property
from redis.commands.core import Script
from redis.exceptions import OutOfMemoryError

from . import transport

# store(key, encoded meta, expiry in seconds (0: none), state that must not be overwritten, '1'
# when this backend writes plain JSON). Returns 1 if stored, 0 if that state was already there,
# -1 (nothing written) if a value is stored that the script cannot read: the caller then
# decides in Python, as Celery does.
STORE_FUNCTION = b"""
local function store(key, value, expires, keep, plain)
  local current = redis.call('GET', key)
  if current then
    if plain ~= '1' then return -1 end
    local ok, meta = pcall(cjson.decode, current)
    if not ok or type(meta) ~= 'table' then return -1 end
    if meta['status'] == keep then return 0 end
  end
  if expires ~= '0' then
    redis.call('SET', key, value, 'EX', expires)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
  return 1
end
"""
# KEYS[1] result key; ARGV: as store's.
STORE = STORE_FUNCTION + b"return store(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"

# A task's result, then its delivery's ack (the transport's FORGET), in one script: the result
# is written before the record goes, atomically. Returns -1 (nothing done) if store could not
# judge the stored value, else forget's answer.
# KEYS: unacked_index, unacked, result key. ARGV: tag, score, life (forget's), then store's.
SETTLE = Script(None, transport.LIFE + transport.FORGET_FUNCTION + STORE_FUNCTION + b"""
if store(KEYS[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]) == -1 then return -1 end
return forget(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
""")  # fmt: skip


UNREADABLE = -1
FULL_PAUSE_FIRST, FULL_PAUSE_MAX = 0.5, 5.0  # seconds between stores while Redis is full
STORING = "storing results"


@dataclass
class Held:
    """A SUCCESS kept for the ack of the delivery that ran it (transport.HeldResult)."""

    key: bytes
    value: bytes
    expires: int
    server: tuple
    store: partial  # Backend.store_result, not held: Celery's retries, the full-Redis wait

    def settle(self, client, keys: list, args: list) -> int:
        stored = [self.value, self.expires, states.SUCCESS, 1]  # plain JSON: only then held
        settled = SETTLE([*keys, self.key], [*args, *stored], client)
        if settled != UNREADABLE:
            return settled
        self.store()  # Celery's own check, in Python; then the ack alone
        return transport.FORGET(keys, args, client)


def delivery_tag(request) -> str | None:
    return (getattr(request, "properties", None) or {}).get("delivery_tag")


class Backend(RedisBackend):
    """``RedisBackend`` whose store is one ``EVALSHA``; reads are Celery's own."""

    @cached_property
    def _plain_json(self) -> bool:
        # Only then can the script's cjson read what this backend stores.
        return self.serializer == "json" and not self.compression

    @cached_property
    def _store_script(self):
        return self.client.register_script(STORE)

    @cached_property
    def _server(self) -> tuple:
        return transport.redis_server(self.client.connection_pool)

    def _store_result(
        self, task_id, result, state, traceback=None, request=None, held=True, **kwargs
    ):
        tag = delivery_tag(request)
        if tag is not None and held and self._can_hold(state, request):
            key, value = self._encoded(task_id, result, state, traceback, request)
            again = partial(
                self.store_result, task_id, result, state, traceback, request, held=False
            )
            expires = int(self.expires or 0)
            waiting = Held(key, value, expires, self._server, again)
            if transport.STATE.hold_result(tag, request.properties, waiting):
                return result
        elif tag is not None:
            # A SUCCESS held for this delivery is stored first: then it is never replaced.
            transport.STATE.store_held(tag)
        return self._store_now(task_id, result, state, traceback, request, **kwargs)

    def _can_hold(self, state, request) -> bool:
        # A chord's part is counted right after its store: that must see it stored.
        return state == states.SUCCESS and self._plain_json and not request.chord

    def _store_now(self, task_id, result, state, traceback=None, request=None, **kwargs):
        pause = FULL_PAUSE_FIRST
        while True:
            try:
                stored = self._store_once(task_id, result, state, traceback, request, **kwargs)
            except OutOfMemoryError as exc:
                # Holds the task's slot meanwhile; a full Redis hands out no new task anyway.
                transport.STATE.full_for(STORING, exc)
                time.sleep(pause)
                pause = min(pause * 2, FULL_PAUSE_MAX)
                continue
            transport.STATE.room_for(STORING)
            return stored

    def _encoded(self, task_id, result, state, traceback, request) -> tuple[bytes, bytes]:
        """The result's key and value, as Celery writes them."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        return self.get_key_for_task(task_id), value

    def _store_once(self, task_id, result, state, traceback, request, **kwargs):
        key, value = self._encoded(task_id, result, state, traceback, request)
        expires = self.failure_expires if state == states.FAILURE else self.expires
        # Connection errors are retried as Celery's own set() retries them.
        stored = self.ensure(self._store, (key, value, int(expires or 0)))
        if stored == UNREADABLE:
            # Celery's own GET, decode in Python, check, then MULTI/SET/PUBLISH.
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        return result

    def _store(self, key, value, expires: int) -> int:
        return self._store_script(
            keys=[key], args=[value, expires, states.SUCCESS, int(self._plain_json)]
        )
