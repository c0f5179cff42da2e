"""Enqueue the example workload, wait for it, and report where and how every task ran.

    python -m {{ cookiecutter.package }}.producer --cpu 20 --io 200 [--json]
    python -m {{ cookiecutter.package }}.producer pipeline --fetches 20   # see pipeline.py

While waiting it shows a live progress bar per queue on stderr (none with --json), then prints
the summary on stdout. Exit status: 0 when every task succeeded, 1 when any failed or timed out,
2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NoReturn

from celery.backends.asynchronous import E_RETRY_LIMIT_EXCEEDED
from celery.exceptions import TimeoutError as CeleryTimeout
from celery_redis_reliable import durable
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from {{ cookiecutter.package }}.celery_app import CPU_QUEUE, IO_QUEUE, app
from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import cpu, io

# How long to keep retrying a publish while Redis is unreachable (about 10 s in total).
PUBLISH_RETRY = {"max_retries": 10, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


@dataclass
class Job:
    queue: str
    signature: object
    submitted: float = 0.0
    result: object = None
    value: dict | None = field(default=None)
    error: str | None = None


def build_workload(n_cpu: int, n_io: int, cpu_limit: int, io_delay: float) -> list[Job]:
    """The example mix: prime counting for the cpu queue, slow HTTP calls for the io queue."""
    jobs = [Job(CPU_QUEUE, cpu.count_primes.s(cpu_limit)) for _ in range(n_cpu)]
    jobs += [Job(IO_QUEUE, io.wait_on_api.s(io_delay)) for _ in range(n_io)]
    return jobs


def submit(jobs: list[Job], durably: bool = False) -> None:
    """Publish every job over one connection; routing comes from the app's task_routes.

    ``durably``: return only once Redis has them in its append-only file (see durable.py).
    """
    with durable.durable_batch() if durably else app.producer_or_acquire() as producer:
        for job in jobs:
            job.submitted = time.time()
            job.result = job.signature.apply_async(
                producer=producer, retry=True, retry_policy=PUBLISH_RETRY
            )


def wait(jobs: list[Job], timeout: float, on_done=None) -> None:
    """Collect every result (successes and failures) until done or ``timeout`` seconds."""
    pending = {job.result.id: job for job in jobs}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        metas = app.backend.get_many(list(pending), timeout=max(0.1, deadline - time.monotonic()))
        try:
            for task_id, meta in metas:
                job = pending.pop(task_id)
                if meta["status"] == "SUCCESS":
                    job.value = meta["result"]
                else:
                    job.error = _describe_failure(meta)
                if on_done:
                    on_done(job)
        except (CeleryTimeout, TimeoutError):
            break
    for job in pending.values():
        job.error = f"no result within {timeout:g} s"


@contextmanager
def live_progress(jobs: list[Job]) -> Iterator[Callable[[Job], None]]:
    """A progress bar per queue on stderr; yields the ``on_done`` callback for ``wait()``.

    stderr keeps stdout for the summary alone, so ``producer > out.txt`` still shows progress.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn("{task.description:<4}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    totals = {name: sum(job.queue == name for job in jobs) for name in (CPU_QUEUE, IO_QUEUE)}
    bars = {name: progress.add_task(name, total=totals[name], failed=0) for name in totals}
    failed = Counter()

    def on_done(job: Job) -> None:
        if job.error:
            failed[job.queue] += 1
        progress.update(bars[job.queue], advance=1, failed=failed[job.queue])

    with progress:
        yield on_done


def _describe_failure(meta: dict) -> str:
    result = meta.get("result")
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    if isinstance(result, dict) and "exc_type" in result:
        return f"{result['exc_type']}: {' '.join(map(str, result.get('exc_message') or ()))}"
    return f"{meta['status']}: {result!r}"


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarize(jobs: list[Job], started: float) -> dict:
    """Per queue: how many ran, on which workers, under which pools, and timings."""
    queues = {}
    for name in (CPU_QUEUE, IO_QUEUE):
        mine = [job for job in jobs if job.queue == name]
        done = [job.value for job in mine if job.value is not None]
        durations = [v["finished"] - v["started"] for v in done]
        latencies = [job.value["finished"] - job.submitted for job in mine if job.value]
        queues[name] = {
            "submitted": len(mine),
            "succeeded": len(done),
            "failed": len(mine) - len(done),
            "workers": dict(Counter(v["worker"] for v in done)),
            "pools": dict(Counter(v["pool"] for v in done)),
            "delivered_via": dict(Counter(str(v["queue"]) for v in done)),
            "peak_in_flight": peak_in_flight([(v["started"], v["finished"]) for v in done]),
            "makespan_s": _round(max((v["finished"] for v in done), default=started) - started),
            "duration_p50_s": _round(_percentile(durations, 50)),
            "duration_max_s": _round(max(durations, default=None)),
            "latency_p50_s": _round(_percentile(latencies, 50)),
            "latency_p99_s": _round(_percentile(latencies, 99)),
            "cpu_seconds": _cpu_total(done),
            "errors": sorted(Counter(job.error for job in mine if job.error).items()),
        }
    succeeded = sum(q["succeeded"] for q in queues.values())
    return {
        "ok": succeeded == len(jobs),
        "submitted": len(jobs),
        "succeeded": succeeded,
        "failed": len(jobs) - succeeded,
        "elapsed_s": _round(time.time() - started),
        "queues": queues,
    }


def _cpu_total(done: list[dict]) -> float | None:
    """Sum of the tasks' own CPU time; None if any task could not measure its own (gevent)."""
    if any(v["cpu_seconds"] is None for v in done):
        return None
    return _round(sum(v["cpu_seconds"] for v in done))


def peak_in_flight(spans: list[tuple[float, float]]) -> int:
    """Most tasks running at one instant, from the tasks' own start/finish stamps."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = running = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


# The table's rows: label and how to show it from one queue's JSON summary. Queues are the
# columns, so the table stays 3 columns wide and fits 80; --json carries every figure shown.
TABLE_ROWS = (
    ("succeeded/sent", lambda q: f"{q['succeeded']}/{q['submitted']}"),
    ("pool", lambda q: _pools(q["pools"])),
    ("workers", lambda q: str(len(q["workers"]))),
    ("peak in flight", lambda q: str(q["peak_in_flight"])),
    ("makespan", lambda q: _seconds(q["makespan_s"])),
    ("task time p50", lambda q: _seconds(q["duration_p50_s"])),
    ("task time max", lambda q: _seconds(q["duration_max_s"])),
    ("sent->done p50", lambda q: _seconds(q["latency_p50_s"])),
    ("sent->done p99", lambda q: _seconds(q["latency_p99_s"])),
    ("task CPU total", lambda q: _seconds(q["cpu_seconds"])),
)


def summary_table(summary: dict):
    """Figures as rows, queues as columns; worker names go below (they can be long)."""
    from rich.table import Table

    title = f"{summary['succeeded']}/{summary['submitted']} tasks succeeded"
    table = Table(title=f"{title} in {_seconds(summary['elapsed_s'])}", title_justify="left")
    table.add_column("")
    for name in summary["queues"]:
        table.add_column(name, no_wrap=True)
    for label, show in TABLE_ROWS:
        table.add_row(label, *(show(q) for q in summary["queues"].values()))
    return table


def _pools(pools: dict) -> str:
    if len(pools) == 1:
        return next(iter(pools))
    return ", ".join(f"{pool} x{n}" for pool, n in pools.items()) or "-"


def print_table(summary: dict, console=None) -> None:
    from rich.console import Console

    console = console or Console()
    console.print(summary_table(summary))
    for name, q in summary["queues"].items():
        for worker, count in q["workers"].items():
            console.print(f"{name}: {count} tasks ran on {worker}", highlight=False)
    if any(q["cpu_seconds"] is None and q["succeeded"] for q in summary["queues"].values()):
        console.print("task CPU total: not measured under gevent (tasks share one CPU clock)")
    for name, q in summary["queues"].items():
        for error, count in q["errors"]:
            console.print(f"[red]{name}: {count} x {error}[/red]")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Enqueue the example workload and report on it.")
    parser.add_argument("--cpu", type=_count, default=20, help="CPU tasks (queue cpu)")
    parser.add_argument("--io", type=_count, default=200, help="I/O tasks (queue io)")
    parser.add_argument("--cpu-limit", type=_count, default=300_000, help="count primes below this")
    parser.add_argument("--io-delay", type=float, default=0.5, help="seconds each I/O call waits")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for results")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args(argv)
    if not 0 <= args.io_delay <= io.MAX_DELAY:
        parser.error(f"--io-delay must be from 0 to {io.MAX_DELAY:g}, got {args.io_delay:g}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be above 0, got {args.timeout:g}")
    return args


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 1000000, got {text!r}")
    return value


def _exit_unpublished(jobs: list[Job], exc: BaseException, as_json: bool) -> NoReturn:
    sent = sum(1 for job in jobs if job.result is not None)
    reason = " ".join(str(exc).split())
    print(
        f"error: cannot publish to Redis ({reason}); {sent} of {len(jobs)} tasks were sent",
        file=sys.stderr,
        flush=True,
    )
    if as_json:  # which ones: a caller can check them or resubmit the rest
        sent_ids = [job.result.id for job in jobs if job.result is not None]
        print(json.dumps({"ok": False, "sent_ids": sent_ids, "unsent": len(jobs) - sent}))
    # Exit now: Celery's exit-time cleanup would try to reach the dead Redis again and
    # hung the process (measured); nothing is left to flush, the sent tasks are in Redis.
    sys.stdout.flush()
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pipeline"]:  # the second command: fetches on io reduced on cpu
        from {{ cookiecutter.package }} import pipeline

        return pipeline.main(argv[1:])
    args = parse_args(argv)
    jobs = build_workload(args.cpu, args.io, args.cpu_limit, args.io_delay)
    started = time.time()
    try:
        submit(jobs, durably=get_settings().durable_publish)
    except durable.DurablePublishError as exc:
        print(
            f"error: durable publish: {exc}. All {len(jobs)} tasks were sent and will run, "
            "but are not confirmed on disk",
            file=sys.stderr,
        )
        return 1
    except (OperationalError, RedisConnectionError) as exc:  # publish retries used up
        _exit_unpublished(jobs, exc, args.json)
    except RuntimeError as exc:
        if str(exc) != E_RETRY_LIMIT_EXCEEDED:
            raise
        # The result backend's reconnects ran out.
        _exit_unpublished(jobs, exc.__cause__ or exc, args.json)
    if args.json:
        wait(jobs, args.timeout)  # stdout and stderr stay free of progress output
    else:
        with live_progress(jobs) as on_done:
            wait(jobs, args.timeout, on_done=on_done)
    summary = summarize(jobs, started)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
