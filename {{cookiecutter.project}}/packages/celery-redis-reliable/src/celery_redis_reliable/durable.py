"""Durable publishing: return only once Redis has the published tasks on disk.

With ``appendfsync everysec`` Redis fsyncs its append-only file once a second, so a crash of the
whole machine can lose tasks the publisher was already told were sent. ``WAITAOF`` (Redis 7.2+)
blocks until Redis reports the writes fsynced. Use it from your own code::

    from celery_redis_reliable.durable import publish_durably
    results = publish_durably([cpu.count_primes.s(10_000), io.fetch.s(url)])

or publish several calls yourself and wait once, when the block ends::

    with durable_batch() as producer:
        for order in orders:
            handle.apply_async((order,), producer=producer)

Either raises ``DurablePublishError`` if Redis cannot confirm in time: the tasks are then in
Redis (they will run) but not known to be on disk. Under ``appendfsync everysec`` the wait is up
to about a second per batch: publish in batches, not one call per task.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from celery import current_app
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

# Written just before each wait, with a short expiry; see wait_for_aof.
FENCE_KEY = "durable-publish:fence"


class DurablePublishError(Exception):
    """Redis did not confirm, or cannot confirm, that published tasks are on disk."""


def wait_for_aof(client, timeout: float) -> tuple[int, int]:
    """Block until every write Redis received before this call is fsynced to its AOF.

    Returns WAITAOF's answer: (1, replicas that fsynced too).
    WAITAOF waits for the calling connection's own last write, and a connection pool may give the
    publish and the wait different connections. So the waiting connection writes a fence first:
    the AOF is one ordered log, and once the fence is fsynced so is everything before it.
    """
    pipe = client.pipeline(transaction=False)  # one connection for the fence and the wait
    pipe.set(FENCE_KEY, str(time.time()), px=60_000)
    pipe.execute_command("WAITAOF", 1, 0, max(1, round(timeout * 1000)))
    try:
        _, (local, replicas) = pipe.execute()
    except ResponseError as exc:
        raise DurablePublishError(_explain(client, exc)) from None
    except RedisTimeout as exc:  # the connection's socket_timeout (30 s) is shorter than ours
        raise DurablePublishError(f"no answer to WAITAOF from Redis ({exc})") from None
    if local < 1:
        raise DurablePublishError(
            f"Redis did not confirm the write to its append-only file within {timeout:g} s "
            "(WAITAOF answered 0; it always does under appendfsync no)"
        )
    return local, replicas


def _explain(client, exc: ResponseError) -> str:
    text = str(exc)
    if "appendonly is disabled" in text:
        return "Redis has its append-only file off (appendonly no); durable publishing needs it on"
    if "unknown command" in text.lower():
        version = client.info("server").get("redis_version", "?")
        return f"Redis {version} has no WAITAOF; durable publishing needs Redis 7.2 or later"
    return f"WAITAOF failed: {text}"


@contextmanager
def durable_batch(timeout: float | None = None) -> Iterator:
    """Yield a producer to publish with; on leaving the block, wait until Redis has it on disk.

    ``timeout`` defaults to DURABLE_PUBLISH_TIMEOUT. Nothing is waited for if the block raises.
    """
    app = current_app  # the app the caller loaded (Celery() makes itself current)
    if timeout is None:
        timeout = float(app.conf.get("reliable_durable_publish_timeout", 5.0))
    with app.producer_or_acquire() as producer:
        yield producer
        wait_for_aof(producer.channel.client, timeout)


def publish_durably(signatures: Iterable, timeout: float | None = None) -> list:
    """Publish each signature, then wait once for all of them to be on disk; returns the results."""
    with durable_batch(timeout) as producer:
        return [signature.apply_async(producer=producer) for signature in signatures]
