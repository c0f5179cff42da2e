"""Docker Swarm for real: the generated stack on a multi-node swarm, deployed, scaled, updated
and broken. Only this suite: `uv run pytest -m swarm`.

The nodes are docker-in-docker containers (.ci/swarm-nodes.sh): one manager, two workers, an
overlay network across them. This machine's kernel has no IPVS, so the stack is deployed with
the project's deploy/swarm/stack.dnsrr.yaml override. Tests run in file order on one swarm;
the last one tears it down, and the fixture does so too when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from base64 import b64encode
from collections import Counter
from pathlib import Path

import pytest
from conftest import TEMPLATE, base_image, generate, point_at_private_bases, run
from test_faults import TOOL

pytestmark = pytest.mark.swarm

NODES = 3
SCRIPT = TEMPLATE / ".ci" / "swarm-nodes.sh"
# The last file (test only) runs Redis from the private base image, as the compose tests do.
FILES = (
    "-c deploy/swarm/stack.yaml -c deploy/swarm/stack.demo.yaml -c deploy/swarm/stack.dnsrr.yaml"
    " -c deploy/swarm/stack.flower-host.yaml"
    " -c deploy/swarm/stack.test.yaml"
)
REDIS = base_image("redis:8")
# Test-time knobs, as the fault suite's: tasks of a killed node come back in 90 s (above
# RETRY_BACKOFF_MAX, which the settings require).
KNOBS = {
    "TASK_TIME_LIMIT": "30",
    "VISIBILITY_TIMEOUT": "90",
    "CPU_STOP_GRACE_PERIOD": "30s",
    "CPU_SOFT_SHUTDOWN_TIMEOUT": "10",
    "CPU_WORKER_CPUS": "1",
    "IO_REPLICAS": "2",
    "IO_CONCURRENCY": "200",
}
IO_PREFETCH = 4  # the settings' default io_prefetch_multiplier
SERVICES = ("redis", "demo-api", "worker-cpu", "worker-io", "beat", "flower", "api")
REPLICAS = {
    "redis": 1,
    "demo-api": 1,
    "worker-cpu": 1,
    "worker-io": 2,
    "beat": 2,
    "flower": 1,
    "api": 1,
}
HEADER = f"{'swarm fault':<36} {'submitted':>9} {'completed':>9} {'lost':>5} {'twice':>5}"
ROWS: list[str] = []


class Swarm:
    """The nodes, the generated project and its stack; every docker call goes to a node."""

    def __init__(self, project: Path, name: str, sockdir: Path):
        self.project, self.name, self.sockdir = project, name, sockdir
        self.stack = "tq"
        self.image = f"{name}-app"
        self.tool = TOOL.format(pkg="task_queue")

    def docker(self, *args: str, node: int = 1, check: bool = True, timeout: float = 600, **kw):
        host = f"unix://{self.sockdir}/{self.name}-{node}.sock"
        return run(
            ["docker", "-H", host, *args], cwd=self.project, check=check, timeout=timeout, **kw
        )

    def popen(self, *args: str) -> subprocess.Popen:
        host = f"unix://{self.sockdir}/{self.name}-1.sock"
        return subprocess.Popen(["docker", "-H", host, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        return {**env, "DOCKER_HOST": f"unix://{self.sockdir}/{self.name}-1.sock", **extra}

    def make(self, *targets: str, **extra: str) -> float:
        started = time.monotonic()
        args = [
            f"STACK={self.stack}",
            f"SWARM_FILES={FILES}",
            "SWARM_DEPLOY_FLAGS=--resolve-image never",
        ]
        run(["make", *targets, *args], cwd=self.project, env=self.env(**extra), timeout=900)
        return time.monotonic() - started

    def node_ip(self, node: int) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{self.name}").IPAddress}}}}'
        return run(["docker", "inspect", "-f", fmt, f"{self.name}-{node}"], cwd=None).stdout.strip()

    def tasks(self, service: str) -> list[dict]:
        """Running replicas of ``service``: node, container id and the Celery hostname part."""
        ids = self.docker("service", "ps", "-q", "--filter", "desired-state=running",
                          f"{self.stack}_{service}").stdout.split()  # fmt: skip
        found = []
        for task in json.loads(self.docker("inspect", *ids).stdout) if ids else []:
            fmt = "{{.Description.Hostname}} {{.Status.State}}"
            node, state = self.docker("node", "inspect", "-f", fmt, task["NodeID"]).stdout.split()
            if task["Status"]["State"] != "running" or state != "ready":
                continue  # a task of a dead node still reads "running"
            cid = task["Status"]["ContainerStatus"]["ContainerID"]
            found.append({"node": node, "cid": cid, "host": cid[:12]})
        return found

    def wait_rescheduled(self, service: str, dead: str, replicas: int, timeout: float = 300):
        """Until Swarm marks ``dead`` down and runs every replica of ``service`` elsewhere."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.docker("node", "inspect", "-f", "{{.Status.State}}", dead).stdout.strip()
            nodes = [t["node"] for t in self.tasks(service)] if state == "down" else []
            if len(nodes) == replicas and dead not in nodes:
                return sorted(nodes)
            time.sleep(2)
        raise AssertionError(f"{service} not rescheduled off {dead} in {timeout:.0f} s")

    def node_of(self, node_name: str) -> int:
        return int(node_name.rsplit("-", 1)[1])

    def tool_run(self, *args: str, timeout: float = 900) -> dict:
        """The fault suite's tool in a one-off container on the stack's overlay network; the
        Redis password is a file copied into the manager node, mounted like a Swarm secret."""
        proc = self.docker(
            "run", "--rm", "--network", f"{self.stack}_default", "-e", "REDIS_URL=redis://redis:6379/0",
            "-v", "/run/tool-secrets:/run/secrets:ro", "--entrypoint", "python", f"{self.image}:1",
            "-c", self.tool, *args, timeout=timeout,
        )  # fmt: skip
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def producer(self, *args: str) -> dict:
        proc = self.docker(
            "run", "--rm", "--network", f"{self.stack}_default", "-e", "REDIS_URL=redis://redis:6379/0",
            "-v", "/run/tool-secrets:/run/secrets:ro", f"{self.image}:1",
            "python", "-m", "task_queue.producer", *args, "--json",
        )  # fmt: skip
        return json.loads(proc.stdout)

    def logs(self, service: str) -> str:
        """Every container log of ``service`` on every node, read from the nodes' volumes on
        this host: also the logs of a node that was killed."""
        text = []
        for node in range(1, NODES + 1):
            info = json.loads(run(["docker", "inspect", f"{self.name}-{node}"], cwd=None).stdout)[0]
            root = next(
                m["Source"] for m in info["Mounts"] if m["Destination"] == "/var/lib/docker"
            )
            for folder in Path(root, "containers").iterdir():
                config = json.loads((folder / "config.v2.json").read_text())
                if not config["Name"].startswith(f"/{self.stack}_{service}."):
                    continue
                for log in folder.glob("*-json.log*"):
                    text += [json.loads(line)["log"] for line in log.read_text().splitlines()]
        return "".join(text)

    def meta(self, ids: list[str]) -> str:
        """The stored results of ``ids`` (their errors), read in the Redis container."""
        redis = self.tasks("redis")[0]
        script = 'printf "AUTH %s\\n" "$(cat /run/secrets/redis_password)"; for i; do echo "GET celery-task-meta-$i"; done'
        cmd = f"({script}) | redis-cli"
        return self.docker("exec", redis["cid"], "sh", "-c", cmd, "sh", *ids, check=False).stdout[
            :2000
        ]

    def counts(self, service: str, tag: str) -> Counter:
        ident = re.escape(tag) + r"-\d+"
        return Counter(re.findall(rf"\[({ident})\] succeeded in", self.logs(service)))

    def task_seconds(self, tag: str, n: int) -> float:
        """The longest run of the stored results of ``tag`` (each task's own clock)."""
        code = (
            "import json; from task_queue.celery_app import app; c = app.backend.client; "
            f"r = [json.loads(c.get(app.backend.get_key_for_task('{tag}-%d' % i)))['result'] "
            f"for i in range({n})]; print(max(x['finished'] - x['started'] for x in r))"
        )
        proc = self.docker(
            "run", "--rm", "--network", f"{self.stack}_default", "-e", "REDIS_URL=redis://redis:6379/0",
            "-v", "/run/tool-secrets:/run/secrets:ro", "--entrypoint", "python", f"{self.image}:1",
            "-c", code,
        )  # fmt: skip
        return float(proc.stdout.strip().splitlines()[-1])

    def report(
        self, fault: str, tags: dict[str, tuple[str, int]], timeout: float, full_logs: bool = True
    ) -> dict:
        """Wait for every batch ({tag: (service, n)}), print its row, assert none lost. The
        result backend counts completions; logs count runs (``full_logs``: every success was
        logged, which a SIGKILLed node cannot promise for its last lines)."""
        started, rows = time.monotonic(), {}
        for tag, (service, n) in tags.items():
            result = self.tool_run("wait", tag, str(n), str(timeout), timeout=timeout + 120)
            done = result["states"].get("SUCCESS", 0)
            succeeded = self.counts(service, tag)
            row = {"submitted": n, "completed": done, "lost": n - done,
                   "twice": sum(1 for c in succeeded.values() if c > 1)}  # fmt: skip
            line = f"{fault + ' / ' + tag:<36} {n:>9} {done:>9} {row['lost']:>5} {row['twice']:>5}"
            ROWS.append(line)
            print(f"\n{HEADER}\n{line}\n  ({result})")
            assert row["lost"] == 0, (result, self.meta(result["not_done"][:2]))
            if full_logs:
                assert len(succeeded) == n, f"{n - len(succeeded)} ids never logged success"
            rows[tag] = row
        print(
            f"  every task of {fault} completed {time.monotonic() - started:.1f} s after the wait began"
        )
        return rows


@pytest.fixture(scope="module")
def swarm(require_docker, tmp_path_factory):
    name = f"swarm-{os.getpid()}"
    sockdir = Path(f"/tmp/{name}")
    s = Swarm(generate(tmp_path_factory.mktemp("swarm")), name, sockdir)
    # Swarm reads no .env; `make swarm-*` exports it, so the test's knobs go there.
    with (s.project / ".env").open("a") as env:
        env.writelines(f"{key}={value}\n" for key, value in KNOBS.items())
    point_at_private_bases(s.project)
    (s.project / "deploy" / "swarm" / "stack.test.yaml").write_text(
        f"# Test only: Redis from the private base image.\nservices:\n  redis:\n    image: {REDIS}\n"
    )
    try:
        started = time.monotonic()
        run(["docker", "compose", "-p", name, "build"], cwd=s.project, timeout=1800,
            env={**os.environ, "IMAGE_TAG": "swarm-build"})  # fmt: skip
        run(["docker", "tag", "task-queue:swarm-build", f"{s.image}:1"], cwd=None)
        run(["docker", "tag", "task-queue:swarm-build", f"{s.image}:2"], cwd=None)
        built = time.monotonic() - started
        run(["bash", str(SCRIPT), "up", name, str(NODES), str(sockdir)], cwd=None, timeout=900)
        formed = time.monotonic() - started - built
        run(
            [
                "bash",
                str(SCRIPT),
                "load",
                name,
                str(sockdir),
                f"{s.image}:1",
                f"{s.image}:2",
                REDIS,
            ],
            cwd=None,
        )
        loaded = time.monotonic() - started - built - formed
        s.docker("node", "update", "--label-add", "task_queue.redis=true", f"{name}-1")
        # Flower is published only by stack.flower-host.yaml, on the node labelled for it.
        s.docker("node", "update", "--label-add", "task_queue.flower=true", f"{name}-1")
        # /run is a tmpfs in the node (docker cp cannot reach it): the file goes in on stdin.
        copy = "mkdir -p /run/tool-secrets && cat > /run/tool-secrets/redis_password"
        run(["docker", "exec", "-i", f"{name}-1", "sh", "-c", copy], cwd=None,
            input=(s.project / "secrets" / "redis_password").read_text())  # fmt: skip
        print(f"\n[swarm] image built {built:.1f} s, {NODES} nodes up and joined {formed:.1f} s, "
              f"images loaded into every node {loaded:.1f} s")  # fmt: skip
        yield s
    finally:
        teardown(s)
        print("\n" + "\n".join([HEADER, *ROWS]))


def teardown(s: Swarm) -> None:
    run(["bash", str(SCRIPT), "down", s.name], cwd=None, check=False)
    run(["rm", "-rf", str(s.sockdir)], cwd=None, check=False)
    for tag in ("1", "2"):
        run(["docker", "rmi", f"{s.image}:{tag}"], cwd=None, check=False)
    run(["docker", "rmi", "task-queue:swarm-build"], cwd=None, check=False)


def test_deploy_converges_and_routes_each_task_to_its_pool_across_nodes(swarm):
    took = swarm.make("swarm-deploy", IMAGE=f"{swarm.image}:1")
    states = swarm.docker("service", "ls", "--format", "{{.Name}} {{.Replicas}}").stdout
    print(f"\n[swarm] make swarm-deploy (--detach=false, converged): {took:.1f} s\n{states}")
    assert sorted(states.splitlines()) == sorted(
        f"{swarm.stack}_{svc} {n}/{n}" for svc, n in REPLICAS.items()
    )
    # The demo API and Flower go to the manager, with Redis: the node lost later runs workers
    # only (losing the demo API would fail I/O calls by design, as a real API outage would).
    for svc in ("demo-api", "flower"):
        swarm.docker("service", "update", "--detach=false", "--constraint-add",
                     f"node.hostname=={swarm.name}-1", f"{swarm.stack}_{svc}")  # fmt: skip
    placed = {svc: swarm.tasks(svc) for svc in SERVICES}
    for svc, tasks in placed.items():
        print(f"  {svc}: {[t['node'] for t in tasks]}")
    assert placed["redis"][0]["node"] == f"{swarm.name}-1"  # the labelled node
    summary = swarm.producer("--cpu", "20", "--io", "200")
    cpu, io = summary["queues"]["cpu"], summary["queues"]["io"]
    print(f"  producer: cpu by {cpu['workers']}, io by {io['workers']}")
    assert summary["ok"] and summary["succeeded"] == 220
    assert cpu["pools"] == {"prefork": 20} and io["pools"] == {"gevent": 200}
    assert set(cpu["workers"]) == {f"cpu@{t['host']}" for t in placed["worker-cpu"]}
    assert set(io["workers"]) == {f"io@{t['host']}" for t in placed["worker-io"]}


def test_scaled_replicas_each_take_work(swarm):
    # solo scales by replicas: the same variable names switch the pool on the running service.
    swarm.docker("service", "update", "--detach=false", "--env-add", "CPU_POOL=solo",
                 "--replicas", "3", f"{swarm.stack}_worker-cpu", timeout=900)  # fmt: skip
    swarm.make("swarm-scale", S="worker-io", N="4")
    cpu_tasks, io_tasks = swarm.tasks("worker-cpu"), swarm.tasks("worker-io")
    print(f"\n[swarm] worker-cpu (solo) on {[t['node'] for t in cpu_tasks]}")
    print(f"[swarm] worker-io on {[t['node'] for t in io_tasks]}")
    assert len(cpu_tasks) == 3 and len(io_tasks) == 4
    summary = swarm.producer(
        "--cpu", "30", "--cpu-limit", "200000", "--io", "2000", "--io-delay", "0.3"
    )
    cpu, io = summary["queues"]["cpu"], summary["queues"]["io"]
    print(f"  cpu tasks per replica {cpu['workers']}, io tasks per replica {io['workers']}")
    assert cpu["pools"] == {"solo": 30} and io["succeeded"] == 2000
    assert set(cpu["workers"]) == {f"cpu@{t['host']}" for t in cpu_tasks}
    assert set(io["workers"]) == {f"io@{t['host']}" for t in io_tasks}
    # Back to the stack's own spec (prefork, IO_REPLICAS) for the next tests.
    swarm.make("swarm-update", IMAGE=f"{swarm.image}:1")
    assert len(swarm.tasks("worker-cpu")) == 1 and len(swarm.tasks("worker-io")) == 2


def test_rolling_update_of_both_workers_loses_nothing(swarm):
    # A short CPU task, timed on the worker, sizes the cpu batch's wait; the I/O batch keeps
    # >= 2,000 tasks queued or running through the update: its slots drain 20 tasks/s while a
    # busy machine submits (10 s calls drained 3,000 to 1,619 before the update; 20 s stays
    # under TASK_TIME_LIMIT and IO_STOP_GRACE_PERIOD).
    cpu_n, cpu_args, io_n, io_delay = 150, "[100000]", 4000, 20.0
    swarm.tool_run("submit", "calib", "cpu.count_primes", "5", cpu_args)
    swarm.tool_run("wait", "calib", "5", "300")
    per_task = swarm.task_seconds("calib", 5)
    submitted = {
        "roll-cpu": ("worker-cpu", swarm.tool_run("submit", "roll-cpu", "cpu.count_primes", str(cpu_n), cpu_args)),
        "roll-io": ("worker-io", swarm.tool_run("submit", "roll-io", "io.wait_on_api", str(io_n), f"[{io_delay}]")),
    }  # fmt: skip
    state = swarm.tool_run("wait", "none", "0", "0")
    print(f"\n[swarm] when the update starts: queued {state['queued']}, taken {state['unacked']}")
    assert sum(state["queued"].values()) + state["unacked"] >= 2000
    # Both workers at once, each by its update_config (the demo API stands in for an upstream
    # outside the stack: restarting it would fail I/O calls by design).
    started = time.monotonic()
    updates = [swarm.popen("service", "update", "--detach=false", "--image", f"{swarm.image}:2",
                           f"{swarm.stack}_{svc}") for svc in ("worker-cpu", "worker-io")]  # fmt: skip
    for update in updates:
        out, err = update.communicate(timeout=900)
        assert update.returncode == 0, out + err
    took = time.monotonic() - started
    images = {svc: swarm.docker("service", "inspect", "-f", "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
                                f"{swarm.stack}_{svc}").stdout.strip() for svc in ("worker-cpu", "worker-io")}  # fmt: skip
    print(f"[swarm] rolling update of both workers: {took:.1f} s; now {images}")
    assert all(image.startswith(f"{swarm.image}:2") for image in images.values())
    # The work left at its slowest (one cpu process, io slots of the replicas), thrice, plus
    # one visibility timeout for a task a stopped replica handed back.
    slots = int(KNOBS["IO_REPLICAS"]) * int(KNOBS["IO_CONCURRENCY"])
    work = cpu_n * per_task + io_n * io_delay / slots
    timeout = 3 * work + float(KNOBS["VISIBILITY_TIMEOUT"]) + 60
    print(f"[swarm] cpu task {per_task:.2f} s on the worker; waiting up to {timeout:.0f} s")
    rows = swarm.report(
        "rolling update", {t: (svc, n["sent"]) for t, (svc, n) in submitted.items()}, timeout
    )
    assert all(row["twice"] == 0 for row in rows.values())


def test_losing_a_worker_node_loses_no_task(swarm):
    io_tasks = swarm.tasks("worker-io")
    victim = next(t["node"] for t in sorted(io_tasks, key=lambda t: t["node"])
                  if t["node"] != f"{swarm.name}-1")  # fmt: skip
    on_victim = sum(1 for t in io_tasks if t["node"] == victim)
    # 10 s calls: the io slots stay busy and most of the batch queued well past the kill.
    n, delay = 3000, 10.0
    sent = swarm.tool_run("submit", "nodeloss", "io.wait_on_api", str(n), f"[{delay}]")
    state = swarm.tool_run("wait", "none", "0", "0")
    killed = time.monotonic()
    run(["docker", "kill", victim], cwd=None)
    print(f"\n[swarm] killed node {victim} (it ran {on_victim} worker-io) with queued "
          f"{state['queued']}, taken {state['unacked']}; before: {sorted(t['node'] for t in io_tasks)}")  # fmt: skip
    assert state["queued"]["io"] > 0, "the batch was over before the kill"
    moved = swarm.wait_rescheduled("worker-io", victim, int(KNOBS["IO_REPLICAS"]))
    print(f"[swarm] {victim} down, worker-io rescheduled to {moved} "
          f"{time.monotonic() - killed:.1f} s after the kill")  # fmt: skip
    # Its tasks come back after one visibility timeout; then the work at half the slots, thrice.
    slots = int(KNOBS["IO_CONCURRENCY"])
    timeout = float(KNOBS["VISIBILITY_TIMEOUT"]) + 3 * n * delay / slots + 120
    rows = swarm.report("node loss", {"nodeloss": ("worker-io", sent["sent"])}, timeout, False)
    print(f"[swarm] every task completed {time.monotonic() - killed:.1f} s after the kill")
    # Only tasks the dead node had taken (its slots times the prefetch) can run twice.
    held = on_victim * int(KNOBS["IO_CONCURRENCY"]) * IO_PREFETCH
    assert rows["nodeloss"]["twice"] <= held


def test_security_on_the_swarm(swarm):
    names = ("redis_password", "flower_password",
             *(f"redis_{r}_password" for r in ("worker", "producer", "flower", "exporter", "keda")))  # fmt: skip
    secrets = [(swarm.project / "secrets" / n).read_text() for n in names]
    denied = swarm.docker("run", "--rm", "--network", f"{swarm.stack}_default", REDIS,
                          "redis-cli", "-h", "redis", "ping", check=False)  # fmt: skip
    assert "NOAUTH" in denied.stdout + denied.stderr
    flower = swarm.tasks("flower")[0]
    url = f"http://{swarm.node_ip(swarm.node_of(flower['node']))}:5555/api/workers"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, timeout=30)
    assert anonymous.value.code == 401
    request = urllib.request.Request(url)
    login = b64encode(f"admin:{secrets[1]}".encode()).decode()
    request.add_header("Authorization", f"Basic {login}")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    services = swarm.docker("service", "ls", "-q").stdout.split()
    seen = swarm.docker("service", "inspect", *services).stdout
    seen += "".join((swarm.project / "deploy" / "swarm" / f).read_text()
                    for f in ("stack.yaml", "stack.dnsrr.yaml", "stack.flower-host.yaml"))  # fmt: skip
    seen += run(["docker", "history", "--no-trunc", f"{swarm.image}:1"], cwd=None).stdout
    seen += run(["docker", "image", "inspect", f"{swarm.image}:1"], cwd=None).stdout
    for svc in SERVICES:
        for task in swarm.tasks(svc):
            node = swarm.node_of(task["node"])
            uid = swarm.docker("exec", task["cid"], "id", "-u", node=node).stdout.strip()
            assert uid != "0", f"{svc} runs as root on {task['node']}"
            seen += swarm.docker("exec", task["cid"], "sh", "-c",
                                 "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'",
                                 node=node).stdout  # fmt: skip
    assert "REDIS_URL=redis://redis:6379/0" in seen  # the processes' environments were read
    for secret in secrets:
        assert secret not in seen


def test_teardown_leaves_nothing(swarm):
    volumes = [m["Name"] for node in range(1, NODES + 1)
               for m in json.loads(run(["docker", "inspect", f"{swarm.name}-{node}"], cwd=None).stdout)[0]["Mounts"]
               if m["Type"] == "volume"]  # fmt: skip
    swarm.make("swarm-remove")
    assert swarm.docker("stack", "ls", "--format", "{{.Name}}").stdout.strip() == ""
    teardown(swarm)
    left = run(
        ["docker", "ps", "-aq", "--filter", f"label=swarm-nodes={swarm.name}"], cwd=None
    ).stdout
    assert left.strip() == ""
    assert (
        run(
            ["docker", "network", "ls", "-q", "--filter", f"name={swarm.name}"], cwd=None
        ).stdout.strip()
        == ""
    )
    existing = run(["docker", "volume", "ls", "-q"], cwd=None).stdout.split()
    assert volumes and not set(volumes) & set(existing)
    assert (
        run(["docker", "info", "-f", "{{.Swarm.LocalNodeState}}"], cwd=None).stdout.strip()
        == "inactive"
    )
    assert not swarm.sockdir.exists()
    images = run(["docker", "images", "-q", swarm.image], cwd=None).stdout
    assert images.strip() == ""
