"""The IO_PROCESSES supervisor with real child processes (small scripts; tests/test_io_processes.py
runs it with Celery): signals reach every child once, one child's exit stops the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import wait_until

# Notes each signal it gets in its file; SIGTERM ends it. With a delay, it exits 3 after it.
CHILD = """
import signal, sys, time
out = sys.argv[1]
def note(signum, frame):
    with open(out, "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    if signum == signal.SIGTERM:
        sys.exit(0)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
    signal.signal(signum, note)
open(out, "a").close()
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))
    sys.exit(3)
time.sleep(60)
"""

SUPERVISOR = """
import json, sys
from {{ cookiecutter.package }}.supervise import supervise
sys.exit(supervise([(argv, None) for argv in json.loads(sys.argv[1])]))
"""


def start(tmp_path: Path, *delays: str) -> tuple[subprocess.Popen, list[Path]]:
    files = [tmp_path / f"child-{n}" for n in range(len(delays))]
    argvs = [
        [sys.executable, "-c", CHILD, str(f), *filter(None, [d])]
        for f, d in zip(files, delays, strict=True)
    ]
    # A session of its own, as a container's: killpg below is a terminal's Ctrl-C.
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, json.dumps(argvs)],
        start_new_session=True,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: all(f.exists() for f in files), 30, "children")
    return proc, files


def signals(file: Path) -> list[str]:
    return file.read_text().split()


def test_a_child_exiting_stops_the_others_and_the_supervisor_fails(tmp_path):
    proc, (stays, _) = start(tmp_path, "", "0.5")
    assert proc.wait(30) == 3
    assert signals(stays) == ["SIGTERM"]
    assert "process 2 (pid" in proc.stderr.read()


def test_sigterm_reaches_every_child_once_and_all_stop_cleanly(tmp_path):
    proc, files = start(tmp_path, "", "")
    time.sleep(0.3)  # the handlers are set before the children start; this is for the children
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert [signals(f) for f in files] == [["SIGTERM"], ["SIGTERM"]]
    assert proc.stderr.read() == ""  # asked to stop: nothing reported as a failure


def test_ctrl_c_on_the_group_reaches_each_child_once(tmp_path):
    # Twice would be Celery's cold shutdown: the children are outside the terminal's group.
    proc, files = start(tmp_path, "", "")
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    wait_until(lambda: all(signals(f) == ["SIGINT"] for f in files), 10, "SIGINT forwarded")
    time.sleep(0.5)  # a second copy would have arrived by now
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert [signals(f) for f in files] == [["SIGINT", "SIGTERM"]] * 2
