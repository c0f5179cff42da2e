"""Retries and the dead-letter queue, against the real io worker and the flaky endpoint of bench/upstream.py.

The stack runs with IO_MAX_RETRIES=3 and RETRY_BACKOFF_BASE=0.5 (conftest). Waits are checked
as lower bounds only: a loaded machine may add delay, never remove it.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
import redis
import urllib3

from {{ cookiecutter.package }}.deadletter import KEY
from {{ cookiecutter.package }}.retries import (
    HTTPStatusError,
    TransientHTTPError,
    backoff,
    check_status,
)

from conftest import Worker, make_client, stop, wait_until, with_redis

FETCH = "{{ cookiecutter.package }}.tasks.io.fetch"
MAX_RETRIES, BASE = 3, 0.5  # as set in conftest's stack_env
RESULT_WAIT = 120  # seconds: generous for a loaded machine


def test_backoff_grows_within_its_bounds_and_stops_at_the_cap():
    for retries in range(8):
        step = min(10.0, 0.5 * 2**retries)
        waits = [backoff(retries, 0.5, 10.0) for _ in range(200)]
        assert all(step / 2 <= wait <= step for wait in waits)
        assert len(set(waits)) > 1  # jittered
    assert max(backoff(30, 0.5, 10.0) for _ in range(50)) <= 10.0


@pytest.mark.parametrize(
    ("status", "headers", "raised", "retry_after"),
    [
        (503, {}, TransientHTTPError, None),
        (500, {}, TransientHTTPError, None),
        (429, {"Retry-After": "7"}, TransientHTTPError, 7),
        (429, {"Retry-After": "soon"}, TransientHTTPError, None),
        (404, {}, HTTPStatusError, None),
        (400, {"Retry-After": "7"}, HTTPStatusError, None),
    ],
)
def test_which_answers_are_retried(status, headers, raised, retry_after):
    response = urllib3.HTTPResponse(b"", status=status, headers=headers)
    with pytest.raises(raised) as caught:
        check_status("http://x/", response)
    assert type(caught.value) is raised
    assert getattr(caught.value, "retry_after", None) == retry_after


def test_a_2xx_answer_passes():
    check_status("http://x/", urllib3.HTTPResponse(b"", status=204))


# --- against the running stack ---


def flaky(api: str, **query) -> tuple[str, str]:
    key = uuid.uuid4().hex
    return key, f"{api}/flaky/{key}?" + "&".join(f"{k}={v}" for k, v in query.items())


def hits(api: str, key: str) -> list[float]:
    with urllib.request.urlopen(f"{api}/hits/{key}", timeout=10) as response:
        return json.load(response)["hits"]


def dead_entry(dlq, task_id: str) -> dict:
    """A task's dead-letter entry. Celery stores the failure before its task_failure signal
    records the entry, so a client that saw FAILURE may be a moment ahead of it."""
    wait_until(lambda: dlq.hexists(KEY, task_id), RESULT_WAIT, f"dead-letter entry {task_id}")
    return json.loads(dlq.hget(KEY, task_id))


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def countdowns(worker_log, task_id: str) -> list[float]:
    """The waits the worker chose, from its "Retry in <s>s" log lines."""
    pattern = rf"\[{task_id}\] retry: Retry in ([\d.]+)s"
    return [float(s) for s in re.findall(pattern, worker_log.read_text())]


@pytest.fixture(scope="module")
def dlq(redis_url):
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_flaky_endpoint_succeeds_after_exactly_k_retries_with_growing_waits(
    celery_client, upstream_url, workers
):
    key, url = flaky(upstream_url, fail=3)
    result = celery_client.send_task(FETCH, args=[url])
    value = result.get(timeout=RESULT_WAIT)
    calls = hits(upstream_url, key)
    chosen = countdowns(workers["io"].log, result.id)
    print(f"3 failures then success: waits chosen {chosen}, measured {gaps(calls)}")
    assert value["attempts"] == 4 and len(calls) == 4
    assert len(chosen) == 3
    for retries, (wait, gap) in enumerate(zip(chosen, gaps(calls), strict=True)):
        assert BASE * 2**retries / 2 <= wait <= BASE * 2**retries  # doubling bounds
        assert gap >= 0.9 * wait  # not sooner (the worker's timer may fire a few ms early)
    assert chosen[0] <= chosen[1] <= chosen[2]


def test_429_waits_at_least_its_retry_after(celery_client, upstream_url):
    key, url = flaky(upstream_url, fail=1, status=429, retry_after=2)
    celery_client.send_task(FETCH, args=[url]).get(timeout=RESULT_WAIT)
    calls = hits(upstream_url, key)
    print(f"429 with Retry-After: 2: retried after {gaps(calls)[0]:.2f} s")
    assert len(calls) == 2
    assert gaps(calls)[0] >= 2 - 0.05


def test_4xx_fails_at_once_and_is_dead_lettered(celery_client, upstream_url, dlq):
    key, url = flaky(upstream_url, fail=1, status=404)
    result = celery_client.send_task(FETCH, args=[url])
    with pytest.raises(HTTPStatusError, match="answered 404"):
        result.get(timeout=RESULT_WAIT)
    assert len(hits(upstream_url, key)) == 1
    entry = dead_entry(dlq, result.id)
    assert (entry["attempts"], entry["queue"], entry["task"]) == (1, "io", FETCH)
    assert entry["args"] == [url] and "answered 404" in entry["exception"]


def deadletter(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "{{ cookiecutter.package }}.deadletter",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_poison_task_is_dead_lettered_once_and_requeue_runs_it_to_success(
    celery_client, upstream_url, dlq, stack_env
):
    # Fails on every attempt the task has; the endpoint has recovered by the requeue.
    key, url = flaky(upstream_url, fail=MAX_RETRIES + 1)
    before = dlq.hlen(KEY)
    result = celery_client.send_task(FETCH, args=[url])
    with pytest.raises(TransientHTTPError, match="answered 503"):
        result.get(timeout=RESULT_WAIT)
    entry = dead_entry(dlq, result.id)
    assert dlq.hlen(KEY) == before + 1
    assert entry["attempts"] == MAX_RETRIES + 1 == len(hits(upstream_url, key))
    print(f"poison task: {entry['attempts']} attempts, 1 dead-letter entry")

    listed = deadletter(stack_env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert result.id in {e["id"] for e in json.loads(listed.stdout)}

    requeued = deadletter(stack_env, "requeue", result.id)
    assert (requeued.returncode, requeued.stdout.strip()) == (0, "requeued 1 entry"), requeued
    value = celery_client.AsyncResult(result.id).get(timeout=RESULT_WAIT)  # same task id
    assert value["status"] == 200 and len(hits(upstream_url, key)) == MAX_RETRIES + 2
    assert dlq.hget(KEY, result.id) is None
    assert dlq.hlen(KEY) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "error: the following arguments are required: command"),
        (["drop"], "error: argument command: invalid choice: 'drop'"),
        (["purge"], "error: purge needs task ids or --all, not both"),
        (["requeue", "abc", "--all"], "error: requeue needs task ids or --all, not both"),
        (["purge", "no-such-id"], "error: no dead-letter entry with id no-such-id"),
    ],
)
def test_bad_cli_input_gets_one_clear_line(stack_env, workers, args, expected):
    proc = deadletter(stack_env, *args)
    assert proc.returncode in (1, 2)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert proc.stdout == ""


def test_purge_drops_only_the_named_entry(celery_client, upstream_url, dlq, stack_env):
    results = [
        celery_client.send_task(FETCH, args=[flaky(upstream_url, fail=1, status=400)[1]])
        for _ in range(2)
    ]
    for result in results:
        with pytest.raises(HTTPStatusError):
            result.get(timeout=RESULT_WAIT)
        dead_entry(dlq, result.id)
    proc = deadletter(stack_env, "purge", results[0].id)
    assert (proc.returncode, proc.stdout.strip()) == (0, "purged 1 entry"), proc
    assert dlq.hget(KEY, results[0].id) is None
    assert dlq.hget(KEY, results[1].id) is not None


@pytest.mark.slow
def test_worker_killed_mid_run_loses_and_duplicates_nothing_in_the_dlq(
    private_redis, stack_env, upstream_url, tmp_path
):
    """kill -9 of the io worker while poison tasks retry; a new worker finishes them.

    Retries waiting in the killed worker come back after VISIBILITY_TIMEOUT (60 s here).
    """
    env = with_redis(stack_env, private_redis.url, tmp_path)
    env.update(VISIBILITY_TIMEOUT="60", TASK_TIME_LIMIT="30", RETRY_BACKOFF_MAX="10")
    client, dlq_client = make_client(private_redis.url), redis.Redis.from_url(private_redis.url)
    first = Worker("io", env, tmp_path)
    wait_until(first.ready, 120, "io worker")
    poison = [flaky(upstream_url, fail=1000) for _ in range(20)]
    sent = {client.send_task(FETCH, args=[url]).id for _, url in poison}
    # Kill once every task has been tried and none has used up its retries yet.
    wait_until(lambda: all(hits(upstream_url, key) for key, _ in poison), 120, "first attempts")
    at_kill = dlq_client.hlen(KEY)
    first.proc.kill()
    first.proc.wait()

    (tmp_path / "second").mkdir()
    second = Worker("io", env, tmp_path / "second")
    try:
        wait_until(second.ready, 120, "second io worker")
        wait_until(lambda: dlq_client.hlen(KEY) >= len(sent), 400, "every task dead-lettered")
        time.sleep(3)  # a duplicate would land now, beside its first entry
        recorded = {k.decode(): json.loads(v) for k, v in dlq_client.hgetall(KEY).items()}
    finally:
        stop(second.proc)
        client.close()
    calls = [len(hits(upstream_url, key)) for key, _ in poison]
    print(
        f"dead-letter after kill -9: {len(sent)} poison tasks, {at_kill} recorded before the "
        f"kill, {len(recorded)} after; calls per task {min(calls)}..{max(calls)}"
    )
    assert set(recorded) == sent  # none lost, none extra
    assert all(entry["attempts"] == MAX_RETRIES + 1 for entry in recorded.values())
    assert min(calls) >= MAX_RETRIES + 1


def test_dead_letters_keep_the_newest_and_count_the_dropped(private_redis):
    """At DEADLETTER_MAX the oldest entries go, counted; requeue and purge keep the index."""
    from {{ cookiecutter.package }} import deadletter

    client = redis.Redis.from_url(private_redis.url)
    for n in range(5):
        entry = {"id": f"t{n}", "task": "x", "args": [], "kwargs": {}, "failed_at": 100.0 + n}
        deadletter.store(client, entry, keep=3)
    assert sorted(k.decode() for k in client.hkeys(deadletter.KEY)) == ["t2", "t3", "t4"]
    assert client.zrange(deadletter.INDEX_KEY, 0, -1) == [b"t2", b"t3", b"t4"]
    assert client.get(deadletter.DROPPED_KEY) == b"2"
    # A task recorded again (run twice after a crash) keeps one entry, and drops nothing.
    again = {"id": "t4", "task": "x", "args": [], "kwargs": {}, "failed_at": 200.0}
    assert deadletter.store(client, again, keep=3) == 0
    assert client.hlen(deadletter.KEY) == 3 and client.get(deadletter.DROPPED_KEY) == b"2"
