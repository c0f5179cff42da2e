"""Several Celery worker processes in one container (IO_PROCESSES > 1), living and dying together.

SIGTERM, SIGINT and SIGQUIT go to every process. When one exits without being asked, the others
get SIGTERM (a warm shutdown: their running tasks finish) and the supervisor exits non-zero, so
compose, Swarm or Kubernetes restart the container whole: never a container serving at part size.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
POLL_SECONDS = 0.2


def log(message: str) -> None:
    print(f"supervisor: {message}", file=sys.stderr, flush=True)


def exit_status(code: int) -> int:
    """A child's return code as a shell reports it: killed by signal N is 128 + N."""
    return 128 - code if code < 0 else code


class Supervisor:
    def __init__(self, commands: list[tuple[list[str], dict[str, str]]]):
        self.commands = commands
        self.children: list[subprocess.Popen] = []
        self.pending: list[int] = []  # signals received, not yet forwarded
        self.asked = False  # a signal came: children exiting now is the shutdown, not a failure

    def _received(self, signum, frame) -> None:
        # Only noted: the loop forwards it, so a child being started cannot miss it.
        self.asked = True
        self.pending.append(signum)

    def _send(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        for signum in SIGNALS:
            signal.signal(signum, self._received)
        for argv, env in self.commands:
            # A process group of its own: a terminal's Ctrl-C reaches a child once, from here
            # (a second SIGINT would be Celery's cold shutdown).
            self.children.append(subprocess.Popen(argv, env=env, process_group=0))
        failed: int | None = None
        while True:
            while self.pending:
                self._send(self.pending.pop(0))
            codes = [child.poll() for child in self.children]
            if failed is None and not self.asked:
                for number, (child, code) in enumerate(zip(self.children, codes, strict=True), 1):
                    if code is not None:
                        failed = exit_status(code) or 1  # exited 0 unasked is a failure too
                        log(f"process {number} (pid {child.pid}) exited with {code}: stopping all")
                        self._send(signal.SIGTERM)
                        break
            if all(code is not None for code in codes):
                break
            time.sleep(POLL_SECONDS)
        if failed is not None:
            return failed
        return next((exit_status(code) for code in codes if code), 0)


def supervise(commands: list[tuple[list[str], dict[str, str]]]) -> int:
    """Run each (argv, env) as a child until all have exited; the exit status to report."""
    return Supervisor(commands).run()
