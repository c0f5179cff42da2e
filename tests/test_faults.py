"""No task lost: the generated stack under faults, on a real Docker engine.

Every fault test submits tasks with known ids, breaks something for real, and counts from the
outside: final states in the result backend (lost = no SUCCESS), and the workers' own log lines
(`Task ...[id] received` / `succeeded`) for re-deliveries and double runs. Each prints one row:

    fault | submitted | completed | lost | run twice | re-delivered

Tests run in file order on one stack of their own (`e2e-faults`, Flower on 25555), which is
removed at the end. Speeds are printed, never asserted.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter

import pytest
from conftest import Stack, run, start_stack

# Test-time knobs (see the generated README, "Tuning"): a short visibility timeout so tasks of a
# SIGKILLed worker come back within a minute, and a short grace period for `compose stop`.
FAULT_ENV = {
    "TASK_TIME_LIMIT": "30",
    "VISIBILITY_TIMEOUT": "60",
    "CPU_STOP_GRACE_PERIOD": "30s",
}

ROWS: list[str] = []
HEADER = f"{'fault':<44} {'submitted':>9} {'completed':>9} {'lost':>5} {'twice':>5} {'redeliv':>7}"

# Runs inside a one-shot container of the project image (the `producer` service), so it talks
# to Redis exactly as the stack does. Task ids are "<tag>-<n>": known without being printed.
TOOL = """
import json, sys, time
from collections import Counter

from {pkg}.celery_app import app
from {pkg}.producer import PUBLISH_RETRY
from {pkg}.tasks import cpu, io

TASKS = {{
    "cpu.count_primes": cpu.count_primes,
    "cpu.noop": cpu.noop,
    "io.noop": io.noop,
    "io.wait_on_api": io.wait_on_api,
}}


def ids(tag, n):
    return [f"{{tag}}-{{i}}" for i in range(n)]


def states(tag, n):
    client, found = app.backend.client, Counter()
    keys = [app.backend.get_key_for_task(i) for i in ids(tag, n)]
    for start in range(0, len(keys), 2000):
        for raw in client.mget(keys[start:start + 2000]):
            found[json.loads(raw)["status"] if raw else "MISSING"] += 1
    return found


cmd, tag = sys.argv[1], sys.argv[2]
if cmd == "submit":
    name, n, args = sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        for task_id in ids(tag, n):
            TASKS[name].apply_async(
                args, task_id=task_id, producer=producer, retry=True, retry_policy=PUBLISH_RETRY
            )
    print(json.dumps({{"sent": n, "seconds": time.monotonic() - started}}))
elif cmd == "wait":
    n, timeout = int(sys.argv[3]), float(sys.argv[4])
    deadline = time.monotonic() + timeout
    while True:
        found = states(tag, n)
        if found["SUCCESS"] == n or time.monotonic() > deadline:
            break
        time.sleep(1)
    client = app.backend.client
    print(json.dumps({{
        "states": found,
        "queued": {{q: client.llen(q) for q in ("cpu", "io")}},
        "unacked": client.hlen("unacked"),
    }}))
"""


class Faults:
    """The fault stack plus helpers that submit, wait and count."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.tool = TOOL.format(pkg=stack.package)

    def tool_run(self, *args: str, timeout: float = 900) -> dict:
        proc = self.stack.compose(
            "run", "--rm", "-T", "--no-deps", "--entrypoint", "python", "producer",
            "-c", self.tool, *args, timeout=timeout,
        )  # fmt: skip
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def submit(self, tag: str, task: str, n: int, args: list) -> dict:
        return self.tool_run("submit", tag, task, str(n), json.dumps(args))

    def wait(self, tag: str, n: int, timeout: float) -> dict:
        return self.tool_run("wait", tag, str(n), str(timeout), timeout=timeout + 120)

    def logs(self, service: str) -> str:
        return self.stack.compose("logs", "--no-color", "--no-log-prefix", service).stdout

    def log_counts(self, service: str, tag: str) -> tuple[Counter, Counter]:
        """Per task id of ``tag``: how often it was received, how often it succeeded."""
        text = self.logs(service)
        ident = re.escape(tag) + r"-\d+"
        received = Counter(re.findall(rf"\[({ident})\] received", text))
        succeeded = Counter(re.findall(rf"\[({ident})\] succeeded in", text))
        return received, succeeded

    def wait_for_received(self, service: str, tag: str, at_least: int, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received, _ = self.log_counts(service, tag)
            if len(received) >= at_least:
                return
            time.sleep(0.5)
        raise AssertionError(f"{service} never started {at_least} tasks of {tag}")

    def report(self, fault: str, service: str, tag: str, n: int, timeout: float) -> dict:
        """Wait for the batch, print its row, and assert none is lost."""
        started = time.monotonic()
        result = self.wait(tag, n, timeout)
        waited = time.monotonic() - started
        received, succeeded = self.log_counts(service, tag)
        completed = result["states"].get("SUCCESS", 0)
        row = {
            "submitted": n,
            "completed": completed,
            "lost": n - completed,
            "twice": sum(1 for c in succeeded.values() if c > 1),
            "redelivered": sum(1 for c in received.values() if c > 1),
        }
        line = (
            f"{fault:<44} {n:>9} {completed:>9} {row['lost']:>5} {row['twice']:>5} "
            f"{row['redelivered']:>7}"
        )
        ROWS.append(line)
        print(f"\n{HEADER}\n{line}\n  (waited {waited:.1f} s for the batch; {result})")
        assert row["lost"] == 0, result
        # The log is the second witness: every task id ran to success at least once.
        assert len(succeeded) == n, f"{n - len(succeeded)} ids never logged success"
        return row

    # --- processes inside containers -------------------------------------------------------
    def container(self, service: str) -> dict:
        cid = self.stack.compose("ps", "-q", service).stdout.split()[0]
        out = run(["docker", "inspect", cid], cwd=None).stdout
        return json.loads(out)[0]

    def pids(self, service: str) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line) of every process in the service's container."""
        script = (
            "import json, os\n"
            "out = {}\n"
            "for p in filter(str.isdigit, os.listdir('/proc')):\n"
            "    try:\n"
            "        stat = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()\n"
            "        cmd = open(f'/proc/{p}/cmdline').read().replace('\\0', ' ')\n"
            "    except OSError:\n"
            "        continue\n"
            "    out[p] = (int(stat[1]), cmd)\n"
            "print(json.dumps(out))\n"
        )
        proc = self.stack.compose("exec", "-T", service, "python", "-c", script)
        return {int(k): tuple(v) for k, v in json.loads(proc.stdout).items()}

    def main_pid(self, service: str, needle: str) -> int:
        """The process directly under the container's init whose command contains ``needle``."""
        found = [p for p, (pp, cmd) in self.pids(service).items() if pp == 1 and needle in cmd]
        assert len(found) == 1, self.pids(service)
        return found[0]

    def kill(self, service: str, *pids: int) -> None:
        # The shell's builtin: images need not ship /bin/kill.
        self.stack.compose("exec", "-T", service, "sh", "-c", f"kill -9 {' '.join(map(str, pids))}")

    def wait_healthy(self, service: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.container(service)
            if info["State"].get("Health", {}).get("Status") == "healthy":
                return info
            time.sleep(1)
        raise AssertionError(f"{service} not healthy again within {timeout} s")


def set_env(stack: Stack, **values: str) -> None:
    text = (stack.path / ".env").read_text()
    for key, value in values.items():
        text, count = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
        if count == 0:
            text += f"{key}={value}\n"
    (stack.path / ".env").write_text(text)


@pytest.fixture(scope="module")
def faults(require_docker, tmp_path_factory):
    stack = start_stack(
        tmp_path_factory.mktemp("faults"), "e2e-faults", project_name="Fault Lab",
        flower_port="25555",
    )  # fmt: skip
    set_env(stack, **FAULT_ENV)
    stack.up()
    yield Faults(stack)
    print("\n" + "\n".join([HEADER, *ROWS]))
    stack.compose("down", "-v", "--timeout", "60", check=False)


# --- 1. kill -9 of workers ------------------------------------------------------------------


def test_kill_prefork_children_mid_batch(faults):
    tag, n = "kill-children", 24
    faults.submit(tag, "cpu.count_primes", n, [1_500_000])
    faults.wait_for_received("worker-cpu", tag, 2)
    time.sleep(1)
    main = faults.main_pid("worker-cpu", "celery")
    children = [p for p, (pp, _) in faults.pids("worker-cpu").items() if pp == main]
    assert children, "no prefork children to kill"
    faults.kill("worker-cpu", *children)
    faults.report("kill -9 prefork children (cpu)", "worker-cpu", tag, n, timeout=300)
    after = [p for p, (pp, _) in faults.pids("worker-cpu").items() if pp == main]
    assert after and not set(after) & set(children), "the children were not replaced"
