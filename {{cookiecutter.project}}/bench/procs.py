"""Local processes for the benchmark (redis-server, the HTTP upstream, workers) and what /proc says about them."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout:g} s")


def stop(*running: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM (a worker's warm shutdown) to all at once, SIGKILL whoever outlives ``timeout``.

    All at once because an idle gevent worker takes ~4 s to notice SIGTERM here.
    """
    alive = [proc for proc in running if proc.poll() is None]
    for proc in alive:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in alive:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_redis(workdir: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """A throw-away redis-server on a free loopback port; returns it and its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server not found: install it (apt-get install redis-server)")
    port, password = free_port(), secrets.token_urlsafe(24)
    # Config on stdin: the password is on no command line (`ps` shows those to every user);
    # ``options`` after it win.
    config = f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir "{workdir}"\n'
    proc = subprocess.Popen(
        [server, "-", *options], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    proc.stdin.write(config + f"requirepass {password}\n")
    proc.stdin.close()

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({proc.returncode}): port {port} taken?")
        return port_open(port)

    wait_until(up, 10, "redis-server")
    return proc, f"redis://:{password}@127.0.0.1:{port}/0"


# The compose stack's Redis (REDIS_IMAGE: a mirror or local copy where no registry answers),
# and its persistence settings.
REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "redis:8")
AOF = ("--appendonly", "yes", "--appendfsync", "everysec")


def start_waitaof_redis(workdir: Path) -> tuple[Callable[[], None], str]:
    """Redis 7.2+ (WAITAOF) persisting as in compose: redis-server on PATH if new enough, else
    the compose image under Docker. Returns how to stop it, and its URL."""
    version = _redis_server_version()
    if version >= (7, 2):
        proc, url = start_redis(workdir, *AOF)
        return (lambda: stop(proc)), url
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True).returncode:
        raise RuntimeError(
            f"needs Redis 7.2+ (WAITAOF): redis-server on PATH is {_dotted(version)}, "
            f"and no Docker engine answers to run {REDIS_IMAGE}"
        )
    name, password = f"bench-redis-{secrets.token_hex(6)}", secrets.token_urlsafe(24)
    argv = [docker, "run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::6379", REDIS_IMAGE]
    argv += ["redis-server", "--requirepass", password, "--save", "", "--dir", "/tmp", *AOF]
    remove = lambda: subprocess.run([docker, "rm", "-f", name], capture_output=True)  # noqa: E731
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=120)
        port = subprocess.run([docker, "port", name, "6379"], capture_output=True, text=True)
        url = f"redis://:{password}@127.0.0.1:{port.stdout.split(':')[-1].strip()}/0"
        wait_until(lambda: _pings(url), 30, REDIS_IMAGE)
    except (subprocess.SubprocessError, TimeoutError) as exc:
        remove()
        raise RuntimeError(f"could not start {REDIS_IMAGE} under Docker: {exc}") from None
    return remove, url


def _redis_server_version() -> tuple[int, ...]:
    server = shutil.which("redis-server")
    if server is None:
        return ()
    text = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)", text)
    return tuple(map(int, found.groups())) if found else ()


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version)) or "missing"


def _pings(url: str) -> bool:
    import redis

    try:
        return redis.Redis.from_url(url).ping()
    except redis.ConnectionError:
        return False


def start_upstream() -> tuple[subprocess.Popen, str]:
    """bench/upstream.py on a free port: the slow, flaky HTTP endpoint the I/O tasks call."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1])
    wait_until(lambda: port_open(port), 15, "upstream")
    return proc, f"http://127.0.0.1:{port}"


class Worker:
    """One Celery worker process, its log, and readiness from the log's "ready." line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.name = name
        self.log = logdir / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")
        return " ready." in self.log.read_text()

    def tree(self) -> list[int]:
        return process_tree(self.proc.pid)


def _parent(stat: str) -> int:
    # After the command name's ")": state, then the parent pid.
    return int(stat.rsplit(")", 1)[1].split()[1])


def children(pid: int) -> list[int]:
    """Direct children, found by parent pid (/proc/<pid>/task/*/children is not always built in)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if _parent(stat.read_text()) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """pid and every descendant (prefork children)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children(current)
    return tree


def cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, including children it already reaped."""
    total = 0.0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the ")": state is field 3, utime 14, stime 15, cutime 16, cstime 17.
        ticks = int(fields[11]) + int(fields[12])
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])
        total += ticks / CLOCK_TICKS
    return total


def pss_mib(pid: int) -> float:
    """Proportional set size: shared pages split among the processes sharing them."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no Pss line for pid {pid}")
