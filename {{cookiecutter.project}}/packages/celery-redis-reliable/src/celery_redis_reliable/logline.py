"""The per-task success line (``Task name[id] succeeded in 0.01s: <result>``) made cheap.

Celery's tracer renders every result with ``saferepr`` for that line and the task-succeeded
event, also when the result is a handful of numbers: a streaming pure-Python repr, about a
twelfth of a dict's ``repr()`` speed. ``install()`` swaps it, for the tracer only, for
``bounded_repr``: a small value of builtin types (at most ``SMALL_ITEMS`` items, of known short
repr, in all) gets ``repr()``, the same text; anything else gets Celery's ``saferepr``, bounded
as before by the task's ``resultrepr_maxsize``. The line keeps its format: the fault and Swarm
suites and users grep ``[id] succeeded in``. ``guard.py`` checks the tracer it patches.
"""

from __future__ import annotations

from celery.app import trace
from celery.utils.saferepr import saferepr

SMALL_ITEMS = 64  # values and keys looked at before handing the result to saferepr
_CONTAINERS = (dict, list, tuple)
_OPEN = {dict: "{", list: "[", tuple: "("}
_CLOSE = {dict: "}", list: "]", tuple: ")"}
DEPTH = 3  # levels of nesting shown, as saferepr shows them
_SHORT = (type(None), bool, float)


def _small(value, budget: list[int], depth: int = DEPTH) -> bool:
    """Whether ``value`` is builtin data whose repr stays within ``budget`` = [items, chars]."""
    budget[0] -= 1
    if budget[0] < 0 or depth < 0:
        return False
    kind = type(value)  # exact types: a subclass may repr however it likes
    if kind in _SHORT:
        budget[1] -= 24
    elif kind is int:
        if value.bit_length() > 64:  # repr of a huge int is quadratic
            return False
        budget[1] -= 21
    elif kind is str or kind is bytes:
        budget[1] -= len(value) + 3
    elif kind is dict:
        return all(
            _small(k, budget, depth - 1) and _small(v, budget, depth - 1) for k, v in value.items()
        )
    elif kind in _CONTAINERS:
        return all(_small(item, budget, depth - 1) for item in value)
    else:
        return False
    return budget[1] >= 0


def bounded_repr(value, maxsize: int = 1024) -> str:
    """``repr(value)`` when that is short builtin data; else at most about ``maxsize``
    characters of it, from a walk that stops there (never a repr of the whole value)."""
    if _small(value, [SMALL_ITEMS, maxsize]):
        return repr(value)
    parts: list[str] = []
    _render(value, parts, [maxsize], DEPTH)
    return "".join(parts)


def _render(value, parts: list[str], room: list[int], depth: int) -> None:
    """Append the repr of ``value`` to ``parts`` until ``room`` = [characters left] runs out."""
    kind = type(value)
    if room[0] <= 0:
        text = "..."
    elif kind in _OPEN and depth <= 0:
        text = _OPEN[kind] + "..." + _CLOSE[kind]  # as saferepr abbreviates deep nesting
    elif kind in _OPEN:
        parts.append(_OPEN[kind])
        room[0] -= 2  # the brackets
        items = value.items() if kind is dict else value
        for i, item in enumerate(items):
            if i:
                parts.append(", ")
                room[0] -= 2
            if room[0] <= 0:
                parts.append("...")
                break
            if kind is dict:
                _render(item[0], parts, room, depth - 1)
                parts.append(": ")
                room[0] -= 2
                item = item[1]
            _render(item, parts, room, depth - 1)
        parts.append(",)" if kind is tuple and len(value) == 1 else _CLOSE[kind])
        return
    elif kind is str or kind is bytes:
        text = repr(value[: room[0]]) + ("..." if len(value) > room[0] else "")
    elif kind is int and value.bit_length() > 64:
        text = f"<int of {value.bit_length()} bits>"  # its repr is quadratic, or refused
    elif kind is int or kind in _SHORT:
        text = repr(value)
    else:  # anything else: Celery's own bounded repr
        text = saferepr(value, room[0])
    room[0] -= len(text)
    parts.append(text)


def install() -> None:
    """Make this process's tracer (and prefork children forked after) use ``bounded_repr``."""
    trace.saferepr = bounded_repr
