"""A real redis-server for tests: the library's own and the project's (no pytest needed here)."""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    """Poll ``check`` until true; a safety net against a hang, not a speed bound."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g} s")
        time.sleep(0.05)


class RedisServer:
    """A redis-server on a free loopback port that can be stopped and started again on it.

    Its config, password included, goes in on stdin: nothing secret on a command line (`ps`).
    Ready means it answers PING with this password, so a foreign server that took the port
    in between is never mistaken for it. ``options`` are command-line options (they win over
    the config), e.g. ``["--appendfsync", "always"]``.
    """

    def __init__(self, workdir: Path, appendonly: bool = False):
        self.server = shutil.which("redis-server")
        if self.server is None:
            raise RuntimeError(
                "redis-server not found: install it (apt-get install redis-server); the tests "
                "that stop and restart Redis need a redis-server of their own"
            )
        self.port = free_port()
        self.password = password = secrets.token_urlsafe(24)
        self.config = (
            f'port {self.port}\nbind 127.0.0.1\nsave ""\n'
            f"appendonly {'yes' if appendonly else 'no'}\n"
            f'requirepass {password}\ndir "{workdir}"\n'
        )
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        self.options: list[str] = []
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.server, "-", *self.options],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.proc.stdin.write(self.config)
        self.proc.stdin.close()  # redis-server reads its config up to end of input
        try:
            wait_until(self.answers, timeout, "redis-server")
        except BaseException:
            self.stop()
            raise
        return self

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self.proc.returncode}): port taken?")
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (Redis's clean shutdown), SIGKILL if it outlives ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
