"""The heartbeat probe: fresh file passes, stale or missing file fails."""

import os

from {{ cookiecutter.package }}.health import heartbeat_ok, main


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
