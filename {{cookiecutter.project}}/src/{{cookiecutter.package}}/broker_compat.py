"""The kombu internals ``broker.py`` overrides or calls, as kombu 5.7 defines them.

kombu does not promise to keep these: ``worker.py`` checks them before the worker starts, so
a kombu upgrade that changes one stops the worker with one line instead of silently reopening
the delivery gaps ``broker.py`` closes.
"""

from __future__ import annotations

import inspect

import kombu
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


def changes() -> list[str]:
    """What differs from ``EXPECTED`` in the installed kombu, one phrase each."""
    found = []
    for (owner, name), expected in EXPECTED.items():
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


def mismatch() -> str | None:
    """One line for the operator if kombu changed under broker.py, else None."""
    found = changes()
    if not found:
        return None
    return (
        f"broker.py does not fit kombu {kombu.__version__}: {'; '.join(found)}. "
        "Install the kombu range pyproject.toml pins, or port broker.py and its tests."
    )
