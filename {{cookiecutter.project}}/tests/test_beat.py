"""Periodic tasks: real beat processes (python -m {{ cookiecutter.package }}.beat) against a real Redis.

Fire times come from each beat's own log ("Sending due task", stamped by the sender), and
every fire is also counted as a message in the queue. Timing bounds carry wide margins: the
test machine may be slow and shared, so they check orderings and counts, never speed.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.schedules import schedule
from redbeat import RedBeatSchedulerEntry

from {{ cookiecutter.package }} import celery_app
from {{ cookiecutter.package }}.celery_app import BEAT_SCHEDULE, app
from {{ cookiecutter.package }}.health import heartbeat_ok
from {{ cookiecutter.package }}.settings import Settings, describe_errors

from conftest import stop, wait_until, with_redis

LOOP = 1  # BEAT_MAX_LOOP_INTERVAL in these tests
LOCK_TIMEOUT = 5  # BEAT_LOCK_TIMEOUT
MARGIN = 5.0  # seconds of scheduling delay a loaded machine may add
START = 120  # seconds a beat may take to start on a loaded machine
TICK_TASK = "{{ cookiecutter.package }}.tasks.cpu.noop"
FIRE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
    r"Scheduler: Sending due task (\S+) ",
    re.M,
)


def test_every_schedule_entry_names_a_registered_task_routed_to_cpu_or_io():
    app.loader.import_default_modules()
    assert app.conf.beat_schedule == celery_app.beat_schedule(Settings().demo)
    for name, entry in app.conf.beat_schedule.items():
        assert entry["task"] in app.tasks, name
        queue = app.amqp.router.route(entry.get("options", {}), entry["task"])["queue"].name
        assert queue in ("cpu", "io"), name


def test_demo_true_without_the_demo_package_is_one_line_naming_the_way_out(monkeypatch):
    # As if src/{{ cookiecutter.package }}/demo had been deleted: importing it fails.
    monkeypatch.setitem(sys.modules, "{{ cookiecutter.package }}.demo.schedule", None)
    with pytest.raises(celery_app.DemoMissing) as caught:
        celery_app.beat_schedule(True)
    message = str(caught.value)
    assert "\n" not in message and "DEMO=true" in message and "accepted: DEMO=false" in message
    assert celery_app.beat_schedule(False) == BEAT_SCHEDULE


def test_lock_must_outlive_three_loops(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:pw@redis:6379/0")
    monkeypatch.setenv("BEAT_MAX_LOOP_INTERVAL", "5")
    monkeypatch.setenv("BEAT_LOCK_TIMEOUT", "10")
    with pytest.raises(Exception) as caught:
        Settings()
    assert describe_errors(caught.value) == [
        "settings error: BEAT_LOCK_TIMEOUT=10 must be at least 3 x BEAT_MAX_LOOP_INTERVAL=5"
    ]


class Beat:
    """One ``python -m {{ cookiecutter.package }}.beat`` process, logging to a file."""

    def __init__(self, env: dict[str, str], logdir: Path, name: str):
        self.log = logdir / f"beat-{name}.log"
        self.heartbeat = logdir / f"beat-{name}.heartbeat"
        env = {**env, "HEARTBEAT_FILE": str(self.heartbeat)}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "{{ cookiecutter.package }}.beat"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def text(self) -> str:
        return self.log.read_text()

    def fires(self, entry: str = "tick") -> list[float]:
        """When this beat sent ``entry``, by its own clock (epoch seconds)."""
        return [
            datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            for stamp, name in FIRE.findall(self.text())
            if name == entry
        ]

    def wait_for(self, text: str, timeout: float = START) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beat exited:\n{self.text()}")
            return text in self.text()

        wait_until(seen, timeout, f"beat log line {text!r}")


@pytest.fixture
def beat_env(stack_env, private_redis, tmp_path) -> dict[str, str]:
    """A Redis of the test's own, no worker on it: every task sent stays queued, countable."""
    return {
        **with_redis(stack_env, private_redis.url, tmp_path),
        "BEAT_MAX_LOOP_INTERVAL": str(LOOP),
        "BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
    }


@pytest.fixture
def beats(beat_env, tmp_path):
    started: list[Beat] = []

    def start(name: str) -> Beat:
        started.append(Beat(beat_env, tmp_path, name))
        return started[-1]

    yield start
    for beat in started:
        stop(beat.proc)


def add_entry(url: str, name: str, every: float) -> None:
    """A RedBeat entry stored straight in Redis, as an operator could add one at run time."""
    client_app = Celery(set_as_current=False)
    client_app.conf.redbeat_redis_url = url
    client_app.conf.redbeat_redis_options = {}
    RedBeatSchedulerEntry(name, TICK_TASK, schedule(every), app=client_app).save()


def in_window(fires: list[float], start: float, length: float) -> int:
    return sum(start <= t < start + length for t in fires)


def queued(url: str, sender: int | None = None) -> int:
    """Messages of the test entry's task waiting in its queue (the examples may fire too),
    all of them or only those a beat of pid ``sender`` published (Celery's origin header)."""
    headers = [json.loads(raw)["headers"] for raw in redis.Redis.from_url(url).lrange("cpu", 0, -1)]
    return sum(
        h["task"] == TICK_TASK and (sender is None or h["origin"].startswith(f"gen{sender}@"))
        for h in headers
    )


def test_two_beats_send_each_run_once(beat_env, beats):
    add_entry(beat_env["REDIS_URL"], "tick", 1)
    first = beats("a")
    first.wait_for("Sending due task")
    t0 = first.fires()[0]
    time.sleep(max(0.0, t0 + 10 - time.time()) + 1)
    single = in_window(first.fires(), t0, 10)

    second = beats("b")
    second.wait_for("standby")
    t1 = time.time()
    time.sleep(21)
    double = in_window(first.fires() + second.fires(), t1, 20)
    stop(second.proc)  # the standby first: it would take over from a stopped holder
    stop(first.proc)
    print(f"1 s entry: one beat sent {single} in 10 s; two beats sent {double} in 20 s")

    assert 5 <= single <= 11
    assert 10 <= double <= 21  # both sending would be ~40
    assert second.fires() == []
    assert queued(beat_env["REDIS_URL"]) == len(first.fires())  # each fire is one message
    # The standby is healthy too: it touches its heartbeat while it waits for the lock.
    assert heartbeat_ok(str(first.heartbeat)) and heartbeat_ok(str(second.heartbeat))


def test_standby_takes_over_after_kill_without_gap_or_burst(beat_env, beats):
    add_entry(beat_env["REDIS_URL"], "tick", 1)
    holder = beats("holder")
    holder.wait_for("Sending due task")
    standby = beats("standby")
    standby.wait_for("standby")
    time.sleep(3)
    holder.proc.kill()  # SIGKILL: the lock is not released, it has to expire
    killed = time.time()
    holder.proc.wait()
    wait_until(lambda: len(standby.fires()) >= 5, LOCK_TIMEOUT + LOOP + START, "takeover")
    stop(standby.proc)
    before, after = holder.fires(), standby.fires()
    gap = after[0] - before[-1]
    merged = sorted(before + after)
    closest = min(b - a for a, b in itertools.pairwise(merged))
    print(
        f"kill -9 of the holder: standby's first run {gap:.1f} s after the holder's last "
        f"(lock timeout {LOCK_TIMEOUT} s, loop {LOOP} s); closest two runs {closest:.2f} s apart"
    )
    assert after[0] >= killed - 0.5  # the standby never sent while the holder lived
    assert gap <= LOCK_TIMEOUT + LOOP + MARGIN
    assert closest >= 0.5  # no burst: one overdue run, then the normal pace
    url = beat_env["REDIS_URL"]
    # Stopped right after a log line (the wait above ends on one), its publish may not follow.
    assert len(after) - 1 <= queued(url, standby.proc.pid) <= len(after)
    # The kill may land between the holder's log line and its publish: that run is lost,
    # never repeated (RedBeat stores the last run before sending).
    assert len(before) - 1 <= queued(url, holder.proc.pid) <= len(before)
    assert queued(url) == queued(url, holder.proc.pid) + queued(url, standby.proc.pid)


def test_restart_keeps_each_entrys_last_run(beat_env, beats):
    url = beat_env["REDIS_URL"]
    add_entry(url, "every-8s", 8)
    first = beats("first")
    wait_until(lambda: first.fires("every-8s"), START, "first run")
    ran = first.fires("every-8s")[0]
    stop(first.proc)
    client = redis.Redis.from_url(url, decode_responses=True)
    assert client.hget("redbeat:every-8s", "meta")  # the last run, kept in Redis

    again = beats("again")
    again.wait_for("acquired the lock")
    acquired = time.time()
    wait_until(lambda: again.fires("every-8s"), START, "run after the restart")
    next_run = again.fires("every-8s")[0]
    print(
        f"8 s entry: ran at 0, restarted at +{acquired - ran:.1f} s, "
        f"next run +{next_run - ran:.1f} s"
    )
    # Due 8 s after the last run, whenever the restart happened: not earlier (a repeat), and
    # not 8 s after the restart (a scheduler that forgot its last run).
    assert next_run >= ran + 8 - 0.1
    assert next_run <= max(ran + 8, acquired) + LOOP + MARGIN
    # The entries declared in code are stored in Redis beside it, each with its last run.
    stored = set(client.zrange("redbeat::schedule", 0, -1))
    assert {f"redbeat:{name}" for name in BEAT_SCHEDULE} < stored
