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

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from kombu.utils.objects import cached_property
from redis.exceptions import OutOfMemoryError

from . import transport

# KEYS[1] result key; ARGV[1] encoded meta, ARGV[2] expiry in seconds (0: none), ARGV[3] state
# that must not be overwritten, ARGV[4] '1' when this backend writes plain JSON. Returns 1 if
# stored, 0 if that state was already there, -1 (nothing written) if a value is stored that the
# script cannot read: the caller then decides in Python, as Celery does.
STORE = """
local current = redis.call('GET', KEYS[1])
if current then
  if ARGV[4] ~= '1' then return -1 end
  local ok, meta = pcall(cjson.decode, current)
  if not ok or type(meta) ~= 'table' then return -1 end
  if meta['status'] == ARGV[3] then return 0 end
end
if ARGV[2] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


UNREADABLE = -1
FULL_PAUSE_FIRST, FULL_PAUSE_MAX = 0.5, 5.0  # seconds between stores while Redis is full
STORING = "storing results"


class Backend(RedisBackend):
    """``RedisBackend`` whose store is one ``EVALSHA``; reads are Celery's own."""

    @cached_property
    def _plain_json(self) -> bool:
        # Only then can the script's cjson read what this backend stores.
        return self.serializer == "json" and not self.compression

    @cached_property
    def _store_script(self):
        return self.client.register_script(STORE)

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
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

    def _store_once(self, task_id, result, state, traceback, request, **kwargs):
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
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
