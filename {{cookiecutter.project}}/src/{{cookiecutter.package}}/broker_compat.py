"""The kombu and Celery internals ``broker.py`` and ``results.py`` override or call.

kombu 5.7 and Celery 5.7 define them so; neither promises to keep them: ``worker.py`` checks them
before the worker starts, so an upgrade that changes one stops the worker with one line instead
of silently reopening the delivery gaps ``broker.py`` closes or bypassing a new result check.
"""

from __future__ import annotations

import hashlib
import inspect

import celery
import kombu
from celery.backends import base as celery_base
from celery.backends import redis as celery_redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

# (owner, attribute) -> its signature, or None for an attribute that only has to exist.
EXPECTED: dict[tuple[type, str], str | None] = {
    (kombu_redis.Channel, "_brpop_start"): "(self, timeout=None)",
    (kombu_redis.Channel, "_brpop_read"): "(self, **options)",
    (kombu_redis.Channel, "_on_connection_disconnect"): "(self, connection)",
    (kombu_redis.Channel, "_flush_brpop_reauth"): "(self)",
    (kombu_redis.Channel, "basic_consume"): "(self, queue, *args, **kwargs)",
    (kombu_redis.Channel, "basic_cancel"): "(self, consumer_tag)",
    (kombu_redis.Channel, "conn_or_acquire"): "(self, client=None)",
    (kombu_redis.Channel, "_create_client"): "(self, asynchronous=False)",
    (kombu_redis.Channel, "pool"): None,
    (kombu_redis.Channel, "_size"): "(self, queue)",
    (kombu_redis.Channel, "_purge"): "(self, queue)",
    (kombu_redis.Channel, "_delete"): (
        "(self, queue, exchange, routing_key, pattern, *args, **kwargs)"
    ),
    (kombu_redis.Channel, "_in_poll"): None,
    (kombu_redis.Channel, "_brpop_sent_at"): None,
    (kombu_redis.Channel, "priority_steps"): None,
    (kombu_redis.Channel, "global_keyprefix"): None,
    (kombu_redis.Channel, "active_queues"): None,
    (kombu_redis.QoS, "append"): "(self, message, delivery_tag)",
    (kombu_redis.QoS, "restore_unacked"): "(self, client=None)",
    (kombu_redis.QoS, "ack"): "(self, delivery_tag)",
    (kombu_redis.QoS, "reject"): "(self, delivery_tag, requeue=False)",
    (kombu_redis.QoS, "restore_visible"): "(self, start=0, num=10, interval=10)",
    (kombu_redis.QoS, "restore_by_tag"): "(self, tag, client=None, leftmost=False)",
    (kombu_redis.QoS, "_remove_from_indices"): "(self, delivery_tag, pipe=None)",
    (kombu_redis.QoS, "pipe_or_acquire"): "(self, pipe=None, client=None)",
    (virtual.QoS, "append"): "(self, message, delivery_tag)",
    (virtual.QoS, "ack"): "(self, delivery_tag)",
    (virtual.Message, "__init__"): "(self, payload, channel=None, **kwargs)",
    (virtual.Transport, "_deliver"): "(self, message, queue)",
    (virtual.Transport, "_callbacks"): None,
}


# results.py calls these, and replaces the store the two sources below hash to: a change there
# may be a new check the override would skip.
CELERY_EXPECTED: dict[tuple[type, str], str | None] = {
    (celery_redis.RedisBackend, "_get_result_meta"): (
        "(self, result, state, traceback, request, format_date=True, encode=False)"
    ),
    (celery_redis.RedisBackend, "encode"): "(self, data)",
    (celery_redis.RedisBackend, "get_key_for_task"): "(self, task_id, key='')",
    (celery_redis.RedisBackend, "ensure"): "(self, fun, args, **policy)",
    (celery_redis.RedisBackend, "client"): None,
    (celery_redis.RedisBackend, "_MAX_STR_VALUE_SIZE"): None,
    (celery_redis.RedisBackend, "supports_failure_expires"): None,
}
CELERY_SOURCES: dict[tuple[type, str], str] = {
    (celery_base.BaseKeyValueStoreBackend, "_store_result"): "bf00a114d21de1eb",
    (celery_redis.RedisBackend, "_set_with_state"): "0405373868cf28fe",
    (celery_redis.RedisBackend, "set"): "5e24a5593d07c7e9",
    (celery_redis.RedisBackend, "_set"): "a9e31e40891b9c54",
}


def source_hash(function) -> str:
    """A short hash of a function's source, blind to indentation and blank lines."""
    try:
        lines = [line.strip() for line in inspect.getsource(function).splitlines()]
    except (OSError, TypeError):
        return "source not readable"
    return hashlib.sha256("\n".join(line for line in lines if line).encode()).hexdigest()[:16]


def changes(table: dict[tuple[type, str], str | None] = EXPECTED) -> list[str]:
    """What differs from ``table`` in the installed library, one phrase each."""
    found = []
    for (owner, name), expected in table.items():
        where = f"{owner.__module__}.{owner.__qualname__}.{name}"
        if not hasattr(owner, name):
            found.append(f"{where} is missing")
            continue
        if expected is None:
            continue
        try:
            actual = str(inspect.signature(getattr(owner, name)))
        except (TypeError, ValueError):
            actual = "not a function"
        if actual != expected:
            found.append(f"{where}{expected} is now {actual}")
    return found


def source_changes() -> list[str]:
    """Celery code ``results.py`` replaces whose source is no longer the one it was written for."""
    found = []
    for (owner, name), expected in CELERY_SOURCES.items():
        actual = source_hash(getattr(owner, name))
        if actual != expected:
            found.append(f"{owner.__module__}.{owner.__qualname__}.{name} changed ({actual})")
    return found


def mismatch() -> str | None:
    """One line for the operator if kombu or Celery changed under our overrides, else None."""
    problems = []
    if found := changes():
        problems.append(
            f"broker.py does not fit kombu {kombu.__version__}: {'; '.join(found)}. "
            "Install the kombu range pyproject.toml pins, or port broker.py and its tests."
        )
    if found := changes(CELERY_EXPECTED) + source_changes():
        problems.append(
            f"results.py does not fit celery {celery.__version__}: {'; '.join(found)}. "
            "Install the celery range pyproject.toml pins, or port results.py and its tests."
        )
    return " ".join(problems) or None
