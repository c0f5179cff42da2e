"""The heartbeat probe (fresh file passes, stale or missing fails) and the rules behind it."""

import os

from {{ cookiecutter.package }}.health import (
    BROKER_AWAY,
    heartbeat_ok,
    listing,
    main,
    process_beats,
    ready_ok,
    write_beat,
)
from {{ cookiecutter.package }}.heartbeat import (
    RECONNECT_GRACE,
    STALL_SECONDS,
    Liveness,
)


def test_fresh_heartbeat_is_healthy(tmp_path):
    beat = tmp_path / "beat"
    beat.touch()
    assert heartbeat_ok(str(beat))


def test_stale_or_missing_heartbeat_is_unhealthy(tmp_path):
    beat = tmp_path / "beat"
    beat.touch()
    old = beat.stat().st_mtime - 60
    os.utime(beat, (old, old))
    assert not heartbeat_ok(str(beat))
    assert not heartbeat_ok(str(tmp_path / "missing"))


def test_cli_exit_codes(tmp_path, monkeypatch):
    monkeypatch.setenv("HEARTBEAT_FILE", str(tmp_path / "missing"))
    assert main(["heartbeat"]) == 1
    assert main(["nonsense"]) == 2


def test_with_listed_processes_every_one_must_pass(tmp_path, monkeypatch):
    base = str(tmp_path / "beat")
    monkeypatch.setenv("HEARTBEAT_FILE", base)
    first, second = process_beats(base, 2)
    write_beat(listing(base), f"{first}\n{second}")
    write_beat(first, "ready")
    assert main(["heartbeat"]) == 1  # the second has not beaten yet
    write_beat(second, "ready")
    assert main(["heartbeat"]) == main(["ready"]) == 0
    write_beat(second, BROKER_AWAY)
    assert (main(["heartbeat"]), main(["ready"])) == (0, 1)
    old = os.stat(first).st_mtime - 60
    os.utime(first, (old, old))  # the first froze
    assert main(["heartbeat"]) == 1
    assert not os.path.exists(base)  # the listing is read, not the plain file


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def liveness(solo=False, broker=None):
    clock, broker = Clock(), broker if broker is not None else {"up": True}
    return Liveness(lambda: broker["up"], solo, 300, clock), clock, broker


def test_a_running_loop_beats_ready_and_a_stalled_one_does_not():
    live, clock, _ = liveness()
    assert live.check(None) == "ready"
    clock.now += STALL_SECONDS + 1
    assert live.check(None) is None
    live.loop_ran()
    assert live.check(None) == "ready"


def test_a_loop_waiting_for_redis_beats_until_the_grace_after_redis_returns():
    live, clock, broker = liveness()
    broker["up"] = False
    clock.now += 600  # the loop sits in Celery's reconnect for ten minutes
    assert live.check(None) == BROKER_AWAY
    broker["up"] = True
    clock.now += RECONNECT_GRACE - 1
    assert live.check(None) == BROKER_AWAY  # back, still reconnecting
    clock.now += 2
    assert live.check(None) is None  # back for longer than the grace: stuck
    live.loop_ran()
    assert live.check(None) == "ready"


def test_a_solo_task_keeps_the_beat_within_the_time_limit_only():
    solo, clock, _ = liveness(solo=True)
    clock.now += 100
    assert solo.check(299.0) == "ready"
    assert solo.check(301.0) is None
    assert solo.check(None) is None
    prefork, clock, _ = liveness(solo=False)
    clock.now += 100
    assert prefork.check(10.0) is None  # a prefork loop is never blocked by its tasks


def test_readiness_fails_while_the_broker_is_away(tmp_path):
    beat = str(tmp_path / "beat")
    write_beat(beat, "ready")
    assert ready_ok(beat) and heartbeat_ok(beat)
    write_beat(beat, BROKER_AWAY)
    assert heartbeat_ok(beat) and not ready_ok(beat)
    assert not ready_ok(str(tmp_path / "missing"))
