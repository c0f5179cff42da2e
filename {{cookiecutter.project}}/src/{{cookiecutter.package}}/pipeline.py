"""A pipeline across both pools: fetch N pages on ``io`` at once, then reduce them on ``cpu``.

    python -m {{ cookiecutter.package }}.producer pipeline --fetches 20 --delay 0.2 [--json]

A chord: the group of ``io.fetch`` tasks runs on the gevent worker, and when the last one
has finished, ``cpu.reduce_fetches`` receives their results on the prefork worker. Nothing
names a queue: each task goes where its module's route sends it. If a fetch fails for good
(after its retries), the reduce does not run and the pipeline fails with that fetch's error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

from celery import chord
from celery.exceptions import TimeoutError as CeleryTimeout

from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import cpu, io


def build(urls: list[str]):
    return chord(io.fetch.s(url) for url in urls)(cpu.reduce_fetches.s())


def where_steps_ran(summary: dict) -> list[dict]:
    """One row per (step, queue, pool, worker) with how many tasks ran there."""
    counts = Counter((s["step"], s["queue"], s["pool"], s["worker"]) for s in summary["steps"])
    return [
        {"step": step, "queue": queue, "pool": pool, "worker": worker, "tasks": n}
        for (step, queue, pool, worker), n in sorted(counts.items())
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="producer pipeline", description="Fan out fetches on io, reduce them on cpu."
    )
    parser.add_argument("--fetches", type=int, default=20, help="pages to fetch, 1..1000")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds each page takes")
    parser.add_argument("--url", help="fetch this URL instead of the demo API's (every time)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args(argv)
    if not 1 <= args.fetches <= 1000:
        parser.error(f"--fetches must be from 1 to 1000, got {args.fetches}")
    if not 0 <= args.delay <= io.MAX_DELAY:
        parser.error(f"--delay must be from 0 to {io.MAX_DELAY:g}, got {args.delay:g}")
    return args


def run(urls: list[str], timeout: float) -> dict:
    """Start the pipeline and wait for its summary; raises RuntimeError naming what failed."""
    result = build(urls)
    try:
        return result.get(timeout=timeout)
    except CeleryTimeout:
        error = f"pipeline {result.id} not done within {timeout:g} s"
    except Exception as exc:  # any task error ends the pipeline: say which
        error = f"pipeline {result.id} failed: {type(exc).__name__}: {exc}"
    finally:
        # Stop listening now: left to interpreter exit, the unsubscribe printed a traceback.
        result.backend.remove_pending_result(result)
    raise RuntimeError(error)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    base = str(get_settings().demo_api_url).rstrip("/")
    urls = [args.url or f"{base}/delay/{args.delay}" for _ in range(args.fetches)]
    try:
        summary = run(urls, args.timeout)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = where_steps_ran(summary)
    if args.json:
        print(json.dumps({**summary, "where": rows}, indent=2))
        return 0
    print(
        f"{summary['fetches']} fetches ({summary['bytes']} bytes, {summary['attempts']} attempts)"
    )
    for row in rows:
        where = f"queue={row['queue']}  pool={row['pool']}  worker={row['worker']}"
        print(f"  {row['step']:<6} x{row['tasks']:<4} {where}")
    return 0
