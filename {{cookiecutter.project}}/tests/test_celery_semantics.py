"""Celery's semantics through this project's layer, side by side with stock Celery.

Each scenario runs twice, against a real redis-server and real workers: once through the
layer (celery_redis_reliable's transport and result backend) and once on stock Celery (kombu's
``redis://`` transport, Celery's RedisBackend); both must observe the same outcome (states,
results, exception types, counts, orderings), and that outcome must be Celery's.

Pools (one worker per pool and variant, started once for the module; see semantics_app.py):
  - prefork and gevent: every scenario that applies to them;
  - solo and threads: chain/group/chord, revoke before start, countdown, retry,
    result_extended, AsyncResult.get (no terminate, no hard time limit in these pools);
  - prefork only: task_reject_on_worker_lost (a child killed -9 mid-task).

Not covered here: task events (events.py's batching); these workers send none.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from celery import chain, chord, group
from celery.backends.redis import RedisBackend
from kombu.transport import redis as redis_transport

from semantics_app import VARIANTS, make_app, project_app

from bench.procs import stop, wait_until
from conftest import STACK_VARS

POOLS = ("prefork", "gevent", "solo", "threads")
MAIN = ("prefork", "gevent")
TESTS = Path(__file__).parent
# Safety nets against a hang, never a speed bound.
HANG = 60
# Celery's timers can fire a few ms early (gevent counts from the loop's cached time); an
# ignored ETA or countdown would run at once, a second or more before its time.
TIMER_SLACK = 0.1


class Stack:
    """One worker of ``pool`` for ``variant`` on a queue of its own, and a client app."""

    def __init__(self, variant: str, pool: str, url: str, logdir: Path):
        self.variant, self.pool = variant, pool
        self.queue = f"sem-{variant}-{pool}"
        self.app = make_app(variant, url, self.queue)
        self.store = redis.Redis.from_url(url)
        self.log = logdir / f"{self.queue}.log"
        env = {k: v for k, v in os.environ.items() if k not in STACK_VARS}
        env.update(
            REDIS_URL=url,
            SECRETS_DIR=str(logdir),  # no secret files: the password is in the URL
            SEMANTICS_VARIANT=variant,
            SEMANTICS_QUEUE=self.queue,
            PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]),
        )
        concurrency = "1" if pool == "solo" else "2" if pool == "prefork" else "4"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "semantics_app",
                    "worker",
                    f"--queues={self.queue}",
                    f"--hostname={self.queue}@%h",
                    f"--pool={pool}",
                    f"--concurrency={concurrency}",
                    "--loglevel=INFO",
                    "--without-mingle",
                    "--without-gossip",
                ],
                env=env,
                cwd=TESTS.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.queue} exited:\n{self.log.read_text()}")
        return "ready." in self.log.read_text()

    def task(self, name: str):
        return self.app.tasks[f"sem.{name}"]

    def key(self) -> str:
        return f"sem:{uuid.uuid4().hex}"

    def runs(self, key: str) -> int:
        return int(self.store.get(key) or 0)

    def times(self, key: str) -> list[float]:
        return [float(at) for at in self.store.lrange(f"{key}:at", 0, -1)]


@pytest.fixture(scope="module")
def stacks(redis_url, tmp_path_factory) -> Iterator[dict[tuple[str, str], Stack]]:
    logdir = tmp_path_factory.mktemp("semantics")
    started: dict[tuple[str, str], Stack] = {}
    try:
        for pool in POOLS:
            for variant in VARIANTS:
                started[variant, pool] = Stack(variant, pool, redis_url, logdir)
        for stack in started.values():
            wait_until(stack.ready, 180, f"worker {stack.queue} (hang?)")
        yield started
    finally:
        stop(*(stack.proc for stack in started.values()))


def side_by_side(stacks, pool: str, scenario: Callable[[Stack], object]) -> object:
    """Run ``scenario`` on both variants at once; assert they saw the same; return it."""
    with ThreadPoolExecutor(len(VARIANTS)) as runner:
        futures = {v: runner.submit(scenario, stacks[v, pool]) for v in VARIANTS}
        seen = {variant: future.result() for variant, future in futures.items()}
    assert seen["layer"] == seen["stock"], f"layer and stock Celery differ on {pool}: {seen}"
    return seen["stock"]


def outcome(result) -> tuple[str, object]:
    """A result's final state and value, or its exception's type name and message."""
    try:
        value = result.get(timeout=HANG, propagate=True)
    except Exception as exc:
        value = type(exc).__name__
    return result.state, value


def wait_state(result, state: str) -> None:
    wait_until(lambda: result.state == state, HANG, f"{result.id} in {state} (hang?)")


def test_variants_run_what_they_name(stacks):
    """The side-by-side comparisons mean something only if "layer" is the layer."""
    layer, stock = stacks["layer", "prefork"].app, stacks["stock", "prefork"].app
    project = project_app.conf
    assert type(layer.backend).__module__ == project.result_backend.partition(":")[0]
    assert type(stock.backend) is RedisBackend
    with layer.connection_for_write() as conn:
        assert type(conn.transport).__module__ == project.broker_transport.partition(":")[0]
    with stock.connection_for_write() as conn:
        assert type(conn.transport) is redis_transport.Transport


@pytest.mark.parametrize("pool", POOLS)
def test_chain_group_chord(stacks, pool):
    def scenario(s: Stack):
        add, tsum = s.task("add"), s.task("tsum")
        chained = chain(add.s(1, 2), add.s(3), add.s(4), app=s.app).apply_async()
        grouped = group((add.s(i, i) for i in range(5)), app=s.app).apply_async()
        chorded = chord((add.s(i, 1) for i in range(4)), tsum.s(), app=s.app).apply_async()
        return (
            outcome(chained),
            [outcome(chained.parent), outcome(chained.parent.parent)],
            grouped.get(timeout=HANG),
            [r.state for r in grouped.results],
            outcome(chorded),
        )

    assert side_by_side(stacks, pool, scenario) == (
        ("SUCCESS", 10),
        [("SUCCESS", 6), ("SUCCESS", 3)],
        [0, 2, 4, 6, 8],
        ["SUCCESS"] * 5,
        ("SUCCESS", 10),
    )


@pytest.mark.parametrize("pool", MAIN)
def test_chord_with_a_failing_header(stacks, pool):
    def scenario(s: Stack):
        header = [s.task("add").s(1, 1), s.task("fail").s("header broke"), s.task("add").s(2, 2)]
        body = s.task("tsum").s()
        result = chord(header, body, app=s.app).apply_async()
        # get() raises the header's own error first (Celery re-raises a parent's failure).
        _, raised = outcome(result)
        # The callback itself is then stored as failed with a ChordError naming the part.
        result.get(timeout=HANG, propagate=False)
        parts = [outcome(part) for part in result.parent.results]
        failed = result.parent.results[1].id
        message = str(result.result).replace(failed, "<part>")
        return raised, result.state, type(result.result).__name__, parts, message

    assert side_by_side(stacks, pool, scenario) == (
        "ValueError",
        "FAILURE",
        "ChordError",
        [("SUCCESS", 2), ("FAILURE", "ValueError"), ("SUCCESS", 4)],
        "Dependency <part> raised ValueError('header broke')",
    )


@pytest.mark.parametrize("pool", POOLS)
def test_revoke_before_start(stacks, pool):
    def scenario(s: Stack):
        key = s.key()
        result = s.task("mark").apply_async((key,), countdown=3)
        result.revoke()
        # A task sent after it, due now, runs first: the revoked one would have run by then.
        later = s.task("mark").apply_async((f"{key}:after",), countdown=4)
        later.get(timeout=HANG)
        return outcome(result), s.runs(key)

    assert side_by_side(stacks, pool, scenario) == (("REVOKED", "TaskRevokedError"), 0)


@pytest.mark.parametrize("pool", MAIN)
def test_revoke_running_with_terminate(stacks, pool):
    def scenario(s: Stack):
        key = s.key()
        result = s.task("sleep").apply_async((key, 30))
        wait_until(lambda: s.runs(key) == 1, HANG, "sleep task started (hang?)")
        result.revoke(terminate=True, signal="SIGKILL")
        after = s.task("add").delay(1, 1).get(timeout=HANG)
        return outcome(result), s.runs(key), after

    assert side_by_side(stacks, pool, scenario) == (("REVOKED", "TaskRevokedError"), 1, 2)


@pytest.mark.parametrize("pool", POOLS)
def test_countdown_runs_once_not_before_its_time(stacks, pool):
    def scenario(s: Stack):
        key = s.key()
        due = time.time() + 2
        eta = datetime.fromtimestamp(due, tz=UTC)
        delayed = s.task("mark").apply_async((key,), eta=eta)
        now = s.task("mark").delay(key)
        order = [now.get(timeout=HANG), delayed.get(timeout=HANG)]
        (first, second) = s.times(key)
        return order, s.runs(key), first < due - TIMER_SLACK <= second

    assert side_by_side(stacks, pool, scenario) == ([1, 2], 2, True)


@pytest.mark.parametrize("pool", POOLS)
def test_retry_with_countdown(stacks, pool):
    def scenario(s: Stack):
        key = s.key()
        result = s.task("retry_once").delay(key)
        state, value = outcome(result)
        first, second = s.times(key)
        # The retry was sent with countdown=1: its run waits for it (stock and layer alike).
        return state, value, second >= first + 1 - TIMER_SLACK, result.retries

    assert side_by_side(stacks, pool, scenario) == (
        "SUCCESS",
        {"runs": 2, "retries": 1},
        True,
        1,
    )


@pytest.mark.parametrize("pool", POOLS)
def test_result_extended(stacks, pool):
    def scenario(s: Stack):
        result = s.task("add").apply_async((2,), {"y": 5})
        result.get(timeout=HANG)
        stored = s.app.AsyncResult(result.id)
        return (
            stored.name,
            stored.args,
            stored.kwargs,
            stored.worker == f"{s.queue}@{os.uname().nodename}",
            stored.queue == s.queue,
        )

    assert side_by_side(stacks, pool, scenario) == ("sem.add", [2], {"y": 5}, True, True)


@pytest.mark.parametrize("pool", ["prefork"])
def test_reject_on_worker_lost_redelivers(stacks, pool):
    def scenario(s: Stack):
        key = s.key()
        result = s.task("die_once").delay(key)
        wait_until(lambda: s.store.get(f"{key}:pid"), HANG, "die_once started (hang?)")
        os.kill(int(s.store.get(f"{key}:pid")), signal.SIGKILL)
        return outcome(result), s.runs(key)

    assert side_by_side(stacks, pool, scenario) == (("SUCCESS", 2), 2)


@pytest.mark.parametrize("pool", MAIN)
def test_hard_time_limit(stacks, pool):
    def scenario(s: Stack):
        key = s.key()
        result = s.task("sleep").apply_async((key, 30), time_limit=1)
        state, error = outcome(result)
        return state, error, s.runs(key), s.task("add").delay(2, 2).get(timeout=HANG)

    assert side_by_side(stacks, pool, scenario) == ("FAILURE", "TimeLimitExceeded", 1, 4)


@pytest.mark.parametrize("pool", POOLS)
def test_get_stored_and_not_yet_stored(stacks, pool):
    def scenario(s: Stack):
        done = s.task("add").delay(3, 4)
        wait_state(done, "SUCCESS")
        stored = s.app.AsyncResult(done.id).get(timeout=HANG)
        key = s.key()
        pending = s.task("sleep").delay(key, 1)
        before = pending.state
        return stored, before, pending.get(timeout=HANG), pending.state

    assert side_by_side(stacks, pool, scenario) == (7, "PENDING", "slept", "SUCCESS")


@pytest.mark.parametrize("pool", MAIN)
def test_rate_limit_holds_tasks_back(stacks, pool):
    # Last in the module: a held task keeps its prefetch slot (Celery's behaviour, both
    # variants) until it is due, a minute later.
    def scenario(s: Stack):
        key = s.key()
        first, held = s.task("limited").delay(key), s.task("limited").delay(key)
        first.get(timeout=HANG)
        # 1/min: the second is held in the worker, while an unlimited task sent later runs.
        after = s.task("add").delay(1, 1).get(timeout=HANG)
        state = held.state
        held.revoke()
        return first.result, after, s.runs(key), state

    assert side_by_side(stacks, pool, scenario) == (1, 2, 1, "PENDING")
