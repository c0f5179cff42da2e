"""The kombu and Celery internals ``transport.py``, ``results.py``, ``events.py`` and ``logline.py``
override, call or rely on.

kombu 5.7 and Celery 5.7 define them so; neither promises to keep them: importing the library
checks them (every process that loads the app), so an upgrade that changes one stops the process
with one line instead of silently reopening the delivery gaps ``transport.py`` closes or bypassing
a new result check. CELERY_REDIS_RELIABLE_GUARD=warn logs the line instead (an emergency only).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os

import celery
import kombu
from celery.backends import base as celery_base
from celery.backends import redis as celery_redis
from celery_redis_reliable import __version__
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

# The minor ranges pyproject.toml pins: outside them the library was never tested.
TESTED = {"kombu": ((5, 7), kombu.__version__), "celery": ((5, 7), celery.__version__)}

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


# events.py subclasses Celery's consumer Events step and reads the dispatcher's buffers.
from celery.events import dispatcher as celery_dispatcher  # noqa: E402
from celery.worker.consumer import events as celery_consumer_events  # noqa: E402

EVENTS_SOURCES: dict[tuple[type, str], None] = {
    (celery_consumer_events.Events, "start"): None,
    (celery_consumer_events.Events, "stop"): None,
    (celery_consumer_events.Events, "shutdown"): None,
    (celery_dispatcher.EventDispatcher, "publish"): None,
    (celery_dispatcher.EventDispatcher, "send"): None,
    (celery_dispatcher.EventDispatcher, "flush"): None,
    (celery_dispatcher.EventDispatcher, "extend_buffer"): None,
}

# logline.py swaps the ``saferepr`` the tracer renders each result with for its success line.
# results.py holds a SUCCESS for the ack Celery's request sends after the task, in the same
# process (the forwarded ``held`` goes through store_result): should that ack move, a held
# result would wait for nothing.
from celery.app import trace as celery_trace  # noqa: E402
from celery.worker import request as celery_request  # noqa: E402

MODULE_SOURCES: dict[tuple[object, str], None] = {
    (celery_trace, "build_tracer"): None,
    (celery_request, "create_request_cls"): None,
    (celery_request.Request, "on_success"): None,
    (celery_base.Backend, "store_result"): None,
}

# Versions the hashes below were taken from (current_sources() when porting).
TESTED_KOMBU = "5.7.0"
TESTED_CELERY = "5.7.0"
SOURCES: dict[str, str] = {
    "kombu.transport.redis.Channel._brpop_start": "2d099d0ee937ea52",
    "kombu.transport.redis.Channel._brpop_read": "b4ed14bd7bfe19a9",
    "kombu.transport.redis.Channel._on_connection_disconnect": "a6eff06f597513de",
    "kombu.transport.redis.Channel._flush_brpop_reauth": "22fdd5f2841fd437",
    "kombu.transport.redis.Channel.basic_consume": "63f288f184cd3274",
    "kombu.transport.redis.Channel.basic_cancel": "86f31c714d9c1174",
    "kombu.transport.redis.Channel.conn_or_acquire": "7f809f5a79190193",
    "kombu.transport.redis.Channel._create_client": "70307ac7d8546805",
    "kombu.transport.redis.Channel.pool": "b17aa4db74655572",
    "kombu.transport.redis.Channel._size": "6eed9817c42eab04",
    "kombu.transport.redis.Channel._purge": "ec492969a420f329",
    "kombu.transport.redis.Channel._delete": "207789f303fadebd",
    "kombu.transport.redis.Channel.active_queues": "223e7619100acd6f",
    "kombu.transport.redis.QoS.append": "b4cd1834c09e8249",
    "kombu.transport.redis.QoS.restore_unacked": "5f651a0d0dc8dccc",
    "kombu.transport.redis.QoS.ack": "a33d955576c4adc4",
    "kombu.transport.redis.QoS.reject": "cb5b5763298f8cdf",
    "kombu.transport.redis.QoS.restore_visible": "e9e4562b079ea70d",
    "kombu.transport.redis.QoS.restore_by_tag": "c2b9b242111cc759",
    "kombu.transport.redis.QoS._remove_from_indices": "963210a98ebb32f1",
    "kombu.transport.redis.QoS.pipe_or_acquire": "9377986344df556d",
    "kombu.transport.virtual.base.QoS.append": "cb0f72e801797b1b",
    "kombu.transport.virtual.base.QoS.ack": "2e0fc4afe1185c5f",
    "kombu.transport.virtual.base.Message.__init__": "aeab5e68124d7ffe",
    "kombu.transport.virtual.base.Transport._deliver": "00c324d0f1110ac2",
    "celery.backends.redis.RedisBackend._get_result_meta": "9c8f972651faa2b0",
    "celery.backends.redis.RedisBackend.encode": "275fe666911e06c4",
    "celery.backends.redis.RedisBackend.get_key_for_task": "0891e7a73a6676ed",
    "celery.backends.redis.RedisBackend.ensure": "bb1aa36be8dbd008",
    "celery.backends.redis.RedisBackend.client": "5b07e7ee09768268",
    "celery.backends.base.BaseKeyValueStoreBackend._store_result": "bf00a114d21de1eb",
    "celery.backends.redis.RedisBackend._set_with_state": "0405373868cf28fe",
    "celery.backends.redis.RedisBackend.set": "5e24a5593d07c7e9",
    "celery.backends.redis.RedisBackend._set": "a9e31e40891b9c54",
    "celery.worker.consumer.events.Events.start": "205c3bfda951a547",
    "celery.worker.consumer.events.Events.stop": "704f44efbddf1707",
    "celery.worker.consumer.events.Events.shutdown": "27bff06f4b22a756",
    "celery.events.dispatcher.EventDispatcher.publish": "f10a11cf4440f426",
    "celery.events.dispatcher.EventDispatcher.send": "570d37d0628191dc",
    "celery.events.dispatcher.EventDispatcher.flush": "cfe9e993dd78d2bc",
    "celery.events.dispatcher.EventDispatcher.extend_buffer": "e21817bb12ff11b0",
    "celery.app.trace.build_tracer": "08ed56a73aae7ff5",
    "celery.worker.request.create_request_cls": "c85e09e54e7c6109",
    "celery.worker.request.Request.on_success": "c5bae96d102faa2b",
    "celery.backends.base.Backend.store_result": "e930ccab0401431e",
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


def _functions():
    """Every guarded attribute that is code, by dotted name."""
    for table in (EXPECTED, CELERY_EXPECTED, CELERY_SOURCES, EVENTS_SOURCES, MODULE_SOURCES):
        for owner, name in table:
            module = owner if inspect.ismodule(owner) else None
            where = module.__name__ if module else f"{owner.__module__}.{owner.__name__}"
            value = inspect.getattr_static(owner, name, None)
            if isinstance(value, property):
                value = value.fget
            elif hasattr(value, "__func__"):
                value = value.__func__
            elif hasattr(value, "func"):  # cached_property
                value = value.func
            if inspect.isfunction(value):
                yield f"{where}.{name}", value


def current_sources() -> dict[str, str]:
    """The source hash of every guarded function as installed (to refresh SOURCES when porting)."""
    return {where: source_hash(function) for where, function in _functions()}


def body_changes() -> list[str]:
    """Guarded functions whose source is no longer the one the library was written against."""
    installed = current_sources()
    return [where for where, expected in SOURCES.items() if installed.get(where) != expected]


def out_of_range() -> list[str]:
    found = []
    for name, ((major, minor), version) in TESTED.items():
        if tuple(int(part) for part in version.split(".")[:2]) != (major, minor):
            found.append(f"{name} {version} (tested: {major}.{minor}.x)")
    return found


def problem() -> str | None:
    """One line for the operator if celery or kombu is not what the library was tested on."""
    if found := out_of_range():
        return (
            f"celery_redis_reliable {__version__} supports kombu 5.7.x and celery 5.7.x, installed "
            f"{', '.join(found)}: install the range the library pins "
            "(packages/celery-redis-reliable/pyproject.toml)"
        )
    found = changes() + changes(CELERY_EXPECTED) + body_changes()
    if found:
        return (
            f"celery_redis_reliable {__version__} was not ported to kombu {kombu.__version__} / "
            f"celery {celery.__version__}: changed {', '.join(found)}; pin kombu=={TESTED_KOMBU} "
            f"and celery=={TESTED_CELERY} in uv.lock or get a ported library "
            "(runbook: packages/celery-redis-reliable/README.md)"
        )
    return None


def check() -> None:
    """Stop the process with one line when :func:`problem` finds one (or only log it, on request)."""
    line = problem()
    if line is None:
        return
    mode = os.environ.get("CELERY_REDIS_RELIABLE_GUARD", "fail")
    if mode not in ("fail", "warn"):
        raise SystemExit(f"CELERY_REDIS_RELIABLE_GUARD={mode!r}: accepted are fail or warn")
    if mode == "warn":
        logging.getLogger("celery_redis_reliable").error(
            "%s (CELERY_REDIS_RELIABLE_GUARD=warn)", line
        )
        return
    raise SystemExit(line)
