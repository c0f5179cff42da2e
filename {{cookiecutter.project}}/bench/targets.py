"""The issue's targets, checked against the measured rows (reported, never asserted)."""

from __future__ import annotations


def _find(rows: list[dict], **match) -> dict:
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return {}


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _target(name: str, events: bool, measured: float | None, goal: str, met: bool | None) -> dict:
    return {"target": name, "events": events, "measured": measured, "goal": goal, "met": met}


def _at_least(value: float | None, low: float) -> bool | None:
    return None if value is None else value >= low


def _at_most(value: float | None, high: float) -> bool | None:
    return None if value is None else value <= high


def evaluate(results: dict, sizes) -> list[dict]:
    out = []
    for events in sizes.events:
        out += _io_targets(results.get("io", []), sizes, events)
        out += _memory_targets(results.get("memory", []), events)
        out += _mixed_targets(results.get("mixed", []), events)
        out += _overhead_targets(results.get("overhead", []), events)
    if True in sizes.events:
        out += _events_targets(results, sizes)
    return out


def _events_targets(results: dict, sizes) -> list[dict]:
    """Task events left on (as Flower needs them) must cost little: buffered under gevent."""
    io, noop = results.get("io", []), results.get("overhead", [])
    near = {
        events: _find(io, variant="template io", latency_s=sizes.io_latency, events=events)
        for events in (False, True)
    }
    pct = near[True].get("pct_of_bound")
    ratio = _ratio(near[True].get("tasks_per_s"), near[False].get("tasks_per_s"))
    cpu = _find(noop, variant="template io", events=True).get("cpu_ms_per_task")
    rows = []
    if io:
        rows += [
            _target(
                f"events on, io L={sizes.io_latency:g}s: % of bound",
                True,
                pct,
                ">= 90",
                _at_least(pct, 90),
            ),
            _target(
                f"events on / off, io L={sizes.io_latency:g}s: tasks/s",
                True,
                ratio,
                ">= 0.95",
                _at_least(ratio, 0.95),
            ),
        ]
    if noop:
        rows.append(
            _target("events on, no-op: io CPU ms/task", True, cpu, "<= 2.0", _at_most(cpu, 2.0))
        )
    return rows


def _io_targets(rows: list[dict], sizes, events: bool) -> list[dict]:
    if not rows:
        return []
    near = _find(rows, variant="template io", latency_s=sizes.io_latency, events=events)
    near_plain = _find(rows, variant="untuned gevent", latency_s=sizes.io_latency, events=events)
    tuned = _find(rows, variant="template io", latency_s=sizes.overhead_latency, events=events)
    plain = _find(rows, variant="untuned gevent", latency_s=sizes.overhead_latency, events=events)
    ratio = _ratio(tuned.get("tasks_per_s"), plain.get("tasks_per_s"))
    pct = near.get("pct_of_bound")
    # Worker CPU per task under the io load (issue 23), not only for no-ops.
    cpu = near.get("cpu_ms_per_task")
    cpu_ratio = _ratio(near_plain.get("cpu_ms_per_task"), cpu)
    return [
        _target(
            f"io L={sizes.io_latency:g}s: template io CPU ms/task",
            events,
            cpu,
            "<= 1.3",
            _at_most(cpu, 1.3),
        ),
        _target(
            f"io L={sizes.io_latency:g}s: untuned / template CPU per task",
            events,
            cpu_ratio,
            ">= 4",
            _at_least(cpu_ratio, 4),
        ),
        _target(
            f"io L={sizes.io_latency:g}s: template io % of bound",
            events,
            pct,
            ">= 85",
            _at_least(pct, 85),
        ),
        _target(
            f"io L={sizes.overhead_latency:g}s: template / untuned tasks/s",
            events,
            ratio,
            ">= 2.5",
            _at_least(ratio, 2.5),
        ),
    ]


def _memory_targets(rows: list[dict], events: bool) -> list[dict]:
    if not rows:
        return []
    green = _find(rows, variant="template io (gevent)", events=events)
    fork = _find(rows, variant="template cpu (prefork)", events=events)
    total = green.get("pss_total_mib")
    ratio = _ratio(fork.get("pss_per_slot_mib"), green.get("pss_per_slot_mib"))
    return [
        _target(
            "gevent C=500 total PSS (MiB)",
            events,
            total,
            "< 100",
            None if total is None else total < 100,
        ),
        _target("prefork / gevent PSS per slot", events, ratio, ">= 100", _at_least(ratio, 100)),
    ]


def _mixed_targets(rows: list[dict], events: bool) -> list[dict]:
    if not rows:
        return []
    stack = _find(rows, variant="template: cpu prefork + io gevent", events=events)
    single = _find(rows, variant="default: one prefork worker", events=events)
    speedup = _ratio(single.get("makespan_s"), stack.get("makespan_s"))
    p99, task = stack.get("io_latency_p99_s"), stack.get("io_task_s")
    p99_x = _ratio(p99, task)
    return [
        _target(
            "mixed: default / template makespan", events, speedup, ">= 5", _at_least(speedup, 5)
        ),
        _target(
            "mixed: template makespan / bound",
            events,
            stack.get("x_bound"),
            "<= 1.25",
            _at_most(stack.get("x_bound"), 1.25),
        ),
        _target(
            "mixed: template I/O p99 / task duration",
            events,
            p99_x,
            "< 2",
            None if p99_x is None else p99_x < 2,
        ),
    ]


def _overhead_targets(rows: list[dict], events: bool) -> list[dict]:
    if not rows:
        return []
    tuned = _find(rows, variant="template io", events=events).get("cpu_ms_per_task")
    plain = _find(rows, variant="untuned gevent", events=events).get("cpu_ms_per_task")
    fork = _find(rows, variant="template cpu", events=events).get("cpu_ms_per_task")
    ratio = _ratio(plain, tuned)
    return [
        _target("no-op: template io CPU ms/task", events, tuned, "<= 0.9", _at_most(tuned, 0.9)),
        _target(
            "no-op: template cpu (prefork) CPU ms/task", events, fork, "<= 1.0", _at_most(fork, 1.0)
        ),
        _target(
            "no-op: untuned / template CPU per task", events, ratio, ">= 5", _at_least(ratio, 5)
        ),
    ]
