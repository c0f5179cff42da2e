"""Each Kubernetes container spec of a generated project, run in real Docker containers against
a real Redis (its StatefulSet's own spec): the spec's command and args ($(VAR) expanded), env
from the ConfigMap, the Secret as files in /run/secrets, user and fsGroup, read-only root with
the emptyDir /tmp, dropped capabilities, CPU and memory limits. No `--init`: the image's own
init runs. Probes are run as kubelet would run them; SIGTERM then SIGKILL after the pod's
terminationGracePeriodSeconds is `docker stop -t <grace>`. No cluster: none can run here.

Tests run in file order on one set of containers; only it: uv run pytest -m k8s
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import base_image, generate, run
from k8s import container, docker_run_args, named, pod_spec, render, workloads

pytestmark = [pytest.mark.k8s, pytest.mark.docker]
PYTHON_VERSION = "3.13"  # the default project's (cookiecutter.json)

APP = ("demo-api", "worker-cpu", "worker-io", "beat", "flower", "api")
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
# /proc of a container as {pid: (ppid, state, command)}: the image ships no ps.
PROCS = (
    "import glob, json\n"
    "def row(folder):\n"
    "    fields = open(folder + '/stat').read().rsplit(')', 1)[1].split()\n"
    "    return int(fields[1]), fields[0], open(folder + '/cmdline').read().replace('\\0', ' ')\n"
    "out = {}\n"
    "for folder in glob.glob('/proc/[0-9]*'):\n"
    "    try:\n"
    "        out[folder[6:]] = row(folder)\n"
    "    except OSError:\n"
    "        pass\n"
    "print(json.dumps(out))\n"
)
SUBMIT = (
    "import json, sys\n"
    "from {package}.tasks import cpu, io\n"
    "task = {{'cpu': cpu.count_primes, 'io': io.wait_on_api}}[sys.argv[1]]\n"
    "print(json.dumps([task.delay(float(sys.argv[2]) if sys.argv[1] == 'io' else int(sys.argv[2])).id"
    " for _ in range(int(sys.argv[3]))]))\n"
)
COLLECT = (
    "import json, sys\n"
    "from celery.result import AsyncResult\n"
    "from {package}.celery_app import app\n"
    "results = [AsyncResult(i, app=app) for i in json.loads(sys.argv[1])]\n"
    "for result in results:\n"
    "    result.get(timeout=float(sys.argv[2]), propagate=False)\n"
    "print(json.dumps([r.state if r.successful() else f'{{r.state}}: {{r.result!r}}' for r in results]))\n"
)


class Pods:
    """Containers started from rendered workloads, on one network; Services become aliases."""

    def __init__(self, project: Path, objects: list[dict], scratch: Path, image: str):
        self.project, self.objects, self.scratch, self.image = project, objects, scratch, image
        self.prefix = f"k8s-{os.getpid()}"
        self.network = self.prefix
        self.names: list[str] = []
        self.package = next(p.name for p in (project / "src").iterdir() if p.is_dir())

    def workload(self, name: str) -> dict:
        return workloads(self.objects)[name]

    def aliases(self, name: str) -> list[str]:
        labels = pod_spec_labels(self.workload(name))
        return [
            svc for svc, obj in named(self.objects, "Service").items()
            if obj["spec"]["selector"].items() <= labels.items()
        ]  # fmt: skip

    def start(self, name: str, suffix: str = "", cpus: str | None = None, env=None) -> str:
        cname = f"{self.prefix}-{name}{suffix}"
        workload = self.workload(name)
        spec_image = container(workload)["image"]
        # Redis runs its private alias (a stand-in where no registry answers), the rest ours.
        image = base_image(spec_image) if spec_image.startswith("redis:") else self.image
        args = docker_run_args(workload, self.objects, self.scratch / cname, image, cpus, env)
        extra = [f"--network-alias={a}" for a in self.aliases(name)] if not suffix else []
        docker("run", "-d", "--name", cname, "--hostname", cname, "--network", self.network,
               *extra, *args)  # fmt: skip
        self.names.append(cname)
        return cname

    def exec(self, cname: str, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "exec", cname, *cmd], capture_output=True, text=True, timeout=timeout
        )

    def probe(self, cname: str, name: str, kind: str) -> bool:
        """One run of the workload's probe, as kubelet runs it (exec in the container, or an
        HTTP GET from outside to the pod's address)."""
        probe = container(self.workload(name))[kind]
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            try:
                return self.exec(cname, *probe["exec"]["command"], timeout=timeout).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        ports = {p["name"]: p["containerPort"] for p in container(self.workload(name))["ports"]}
        port = ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"])
        url = f"http://{self.ip(cname)}:{port}{probe['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return 200 <= response.status < 400
        except (OSError, urllib.error.HTTPError):
            return False

    def wait_probe(self, cname: str, name: str, kind: str, want: bool, limit: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if self.probe(cname, name, kind) == want:
                return time.monotonic() - started
            time.sleep(1)
        logs = docker("logs", "--tail", "30", cname, check=False)
        raise AssertionError(f"{cname} {kind} not {want} in {limit} s\n{logs.stdout}{logs.stderr}")

    def ip(self, cname: str) -> str:
        fmt = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        return docker("inspect", "-f", fmt, cname).stdout.strip()

    def procs(self, cname: str) -> dict[int, tuple[int, str, str]]:
        out = self.exec(cname, "python", "-c", PROCS).stdout
        return {int(k): tuple(v) for k, v in json.loads(out).items()}

    def celery_main(self, cname: str) -> int:
        procs = self.procs(cname)
        (pid,) = [p for p, (pp, _, cmd) in procs.items() if pp == 1 and " celery " in cmd]
        return pid

    def python(self, cname: str, script: str, *args: str, timeout: float = 300) -> object:
        proc = self.exec(cname, "python", "-c", script.format(package=self.package), *args,
                         timeout=timeout)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def redis(self, *cmd: str) -> str:
        redis = f"{self.prefix}-redis"
        auth = 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" redis-cli "$@"'
        return self.exec(redis, "sh", "-c", auth, "redis-cli", *cmd).stdout.strip()

    def grace(self, name: str) -> int:
        return pod_spec(self.workload(name))["terminationGracePeriodSeconds"]

    def stop(self, cname: str, grace: int) -> tuple[int, float]:
        """SIGTERM, SIGKILL after ``grace`` s (kubelet's pod termination); exit code, seconds."""
        started = time.monotonic()
        docker("stop", "-t", str(grace), cname, timeout=grace + 60)
        code = docker("inspect", "-f", "{{.State.ExitCode}}", cname).stdout.strip()
        return int(code), time.monotonic() - started

    def remove(self) -> None:
        for cname in self.names:
            docker("rm", "-f", "-v", cname, check=False)
        docker("network", "rm", self.network, check=False)


def pod_spec_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def docker(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return run(["docker", *args], cwd=Path.cwd(), check=check, timeout=timeout)


@pytest.fixture(scope="module")
def pods(require_docker, tmp_path_factory):
    root = tmp_path_factory.mktemp("k8s-run")
    project = generate(root)
    image = f"k8s-suite-{os.getpid()}:test"
    started = time.monotonic()
    python = base_image(f"python:{PYTHON_VERSION}-slim")
    docker("build", "-q", "--build-arg", f"PYTHON_IMAGE={python}", "-t", image, str(project),
           timeout=1800)  # fmt: skip
    print(f"\n[k8s] image built in {time.monotonic() - started:.1f} s")
    scratch = root / "volumes"
    pods = Pods(project, render(project, "overlays/demo"), scratch, image)
    docker("network", "create", pods.network)
    try:
        yield pods
    finally:
        pods.remove()
        docker("rmi", image, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def running(pods) -> dict[str, str]:
    """Redis, then every Deployment, each up once its startup probe passes."""
    names = {"redis": pods.start("redis")}
    pods.wait_probe(names["redis"], "redis", "startupProbe", True, 120)
    for name in APP:
        names[name] = pods.start(name)
    for name in APP:
        took = pods.wait_probe(names[name], name, "startupProbe", True, 180)
        print(f"[k8s] {name}: startup probe passed after {took:.1f} s")
    return names


def test_every_probe_passes_on_healthy_containers(pods, running):
    for name, cname in running.items():
        for kind in PROBES:
            assert pods.probe(cname, name, kind), f"{name} {kind}"


def test_containers_run_as_the_spec_says(pods, running):
    for name in APP:
        procs = pods.procs(running[name])
        # PID 1 is the image's init, not Docker's (no --init) and not Python.
        assert procs[1][2].startswith("/opt/venv/bin/dumb-init --single-child"), procs[1]
        write = pods.exec(running[name], "sh", "-c", "touch /home/app/x")
        assert write.returncode != 0 and "Read-only file system" in write.stderr
        ids = pods.exec(running[name], "id", "-u").stdout.strip()
        assert ids == str(pod_spec(pods.workload(name))["securityContext"]["runAsUser"])
    caps = pods.exec(running["worker-cpu"], "sh", "-c", "grep CapEff /proc/1/status").stdout
    assert caps.split()[-1] == "0000000000000000"


def test_trigger_lists_are_the_apps_task_queues(pods, running):
    script = (
        "import json\nfrom {package}.celery_app import app\n"
        "print(json.dumps(sorted(q.name for q in app.conf.task_queues)))\n"
    )
    queues = pods.python(running["worker-cpu"], script)
    production = render(pods.project, "overlays/production")
    lists = sorted(
        so["spec"]["triggers"][0]["metadata"]["listName"]
        for so in named(production, "ScaledObject").values()
    )
    assert lists == queues == ["cpu", "io"]


def test_producer_job_routes_every_task_to_its_pool(pods, running):
    job = pods.workload("producer")
    cname = f"{pods.prefix}-producer"
    args = docker_run_args(job, pods.objects, pods.scratch / cname, pods.image)
    # The Job's own args, plus --json to read its summary.
    proc = docker("run", "--name", cname, "--network", pods.network, *args, "--json", timeout=600)
    pods.names.append(cname)
    summary = json.loads(proc.stdout)
    cpu, io = summary["queues"]["cpu"], summary["queues"]["io"]
    print(f"[k8s] producer Job: cpu makespan {cpu['makespan_s']} s, io {io['makespan_s']} s")
    assert summary["ok"] and summary["succeeded"] == 220
    assert cpu["pools"] == {"prefork": 20} and io["pools"] == {"gevent": 200}


def pool_size(pods: Pods, cname: str) -> int:
    main = pods.celery_main(cname)
    return sum(1 for ppid, _, _ in pods.procs(cname).values() if ppid == main)


def test_cpu_limit_sizes_the_prefork_pool(pods, running):
    limit = container(pods.workload("worker-cpu"))["resources"]["limits"]["cpu"]
    assert pool_size(pods, running["worker-cpu"]) == int(limit)
    # One CPU on this 2-core machine: the pool follows the quota, not the machine.
    one = pods.start("worker-cpu", suffix="-1cpu", cpus="1")
    pods.wait_probe(one, "worker-cpu", "startupProbe", True, 180)
    sizes = {"limit": int(limit), "1": pool_size(pods, one), "machine": os.cpu_count()}
    print(f"[k8s] prefork processes by CPU limit: {sizes}")
    assert sizes["1"] == 1
    # The process gone: the image's init exits with it, so kubelet restarts the container.
    pods.exec(one, "sh", "-c", f"kill -9 {pods.celery_main(one)}")
    state = docker("wait", one, timeout=60).stdout.strip()
    assert state == "137"


def test_liveness_fails_while_the_loop_is_frozen(pods, running):
    workers = {n: running[n] for n in ("worker-cpu", "worker-io")}
    mains = {n: pods.celery_main(c) for n, c in workers.items()}
    for name, cname in workers.items():
        pods.exec(cname, "sh", "-c", f"kill -STOP {mains[name]}")
    try:
        for name, cname in workers.items():
            took = pods.wait_probe(cname, name, "livenessProbe", False, 60)
            print(f"[k8s] {name} frozen: liveness failed after {took:.1f} s more")
            assert not pods.probe(cname, name, "readinessProbe")
    finally:
        for name, cname in workers.items():
            pods.exec(cname, "sh", "-c", f"kill -CONT {mains[name]}")
    for name, cname in workers.items():
        pods.wait_probe(cname, name, "livenessProbe", True, 30)


def test_timed_out_probes_leave_no_zombies(pods, running):
    for name in APP:
        for _ in range(3):  # an orphan, as a probe killed at its timeout leaves behind
            pods.exec(running[name], "sh", "-c", "sleep 1 & exit 0")
    time.sleep(3)
    for name in APP:
        zombies = [p for p, (_, state, _) in pods.procs(running[name]).items() if state == "Z"]
        assert zombies == [], name


def test_redis_away_90_s_fails_no_worker_liveness_probe(pods, running):
    """Kubelet restarts a container after failureThreshold failed liveness probes in a row:
    with Redis stopped 90 s, none may fail (the workers' nor the API's). Readiness may (it
    reports the broker)."""
    workers = ("worker-cpu", "worker-io", "api")
    client = running["worker-cpu"]  # beat exits while Redis is away: kubelet restarts it
    ids = {q: pods.python(client, SUBMIT, q, arg, "20") for q, arg in
           (("cpu", "300000"), ("io", "3"))}  # fmt: skip
    docker("stop", "-t", "10", running["redis"])
    failed, unready = dict.fromkeys(workers, 0), dict.fromkeys(workers, 0)
    period = min(container(pods.workload(n))["livenessProbe"]["periodSeconds"] for n in workers)
    try:
        gone = time.monotonic()
        while time.monotonic() - gone < 90:
            for name in workers:
                failed[name] += not pods.probe(running[name], name, "livenessProbe")
                unready[name] += not pods.probe(running[name], name, "readinessProbe")
            time.sleep(period / 3)  # three times kubelet's rate: a short failure shows too
    finally:
        docker("start", running["redis"])
    pods.wait_probe(running["redis"], "redis", "readinessProbe", True, 120)
    print(f"[k8s] Redis away 90 s: failed liveness probes {failed}, not ready {unready}")
    assert failed == dict.fromkeys(workers, 0)
    assert all(unready.values()), unready
    for name in workers:
        pods.wait_probe(running[name], name, "readinessProbe", True, 180)
    every = ids["cpu"] + ids["io"]
    states = pods.python(client, COLLECT, json.dumps(every), "600", timeout=660)
    assert states == ["SUCCESS"] * len(every)
    # As kubelet would (restartPolicy Always), for the tests after this one.
    if docker("inspect", "-f", "{{.State.Running}}", running["beat"]).stdout.strip() != "true":
        print("[k8s] beat exited while Redis was away (not a worker: no task of its own lost)")
        docker("start", running["beat"])
        pods.wait_probe(running["beat"], "beat", "startupProbe", True, 180)


def queued_ids(pods: Pods, queue: str) -> list[str]:
    """Task ids of the entries in ``queue``, one kombu JSON envelope per line."""
    return [
        json.loads(raw)["headers"]["id"]
        for raw in pods.redis("LRANGE", queue, "0", "-1").splitlines()
    ]


def test_sigterm_soft_shutdown_requeues_cpu_tasks(pods, running):
    # The spec's 45 s soft shutdown, shortened so the suite stays short; the grace is the spec's.
    cname = pods.start("worker-cpu", suffix="-soft", env={"CPU_SOFT_SHUTDOWN_TIMEOUT": "1"})
    pods.wait_probe(cname, "worker-cpu", "startupProbe", True, 180)
    pods.stop(running["worker-cpu"], pods.grace("worker-cpu"))  # only the -soft one consumes
    ids = pods.python(cname, SUBMIT, "cpu", "1000000", "4")  # ~3.5 s of CPU each
    deadline = time.monotonic() + 120
    while pods.redis("HLEN", "unacked") != "2" and time.monotonic() < deadline:
        time.sleep(0.5)
    code, took = pods.stop(cname, pods.grace("worker-cpu"))
    logs = docker("logs", cname)
    logs = logs.stdout + logs.stderr
    print(
        f"[k8s] worker-cpu SIGTERM: exit {code} after {took:.1f} s (grace {pods.grace('worker-cpu')} s)"
    )
    assert code == 0 and "Soft Shutdown" in logs and "Restoring 2 unacknowledged" in logs
    # Each of the four queued once (the running beat may have added its own entry meanwhile).
    assert sorted(i for i in queued_ids(pods, "cpu") if i in ids) == sorted(ids)
    again = pods.start("worker-cpu", suffix="-again")
    states = pods.python(again, COLLECT, json.dumps(ids), "600", timeout=660)
    assert states == ["SUCCESS"] * 4


def test_sigterm_warm_shutdown_finishes_io_calls(pods, running):
    cname = running["worker-io"]
    ids = pods.python(cname, SUBMIT, "io", "4", "40")
    deadline = time.monotonic() + 60
    while pods.redis("HLEN", "unacked") != "40" and time.monotonic() < deadline:
        time.sleep(0.2)
    code, took = pods.stop(cname, pods.grace("worker-io"))
    print(f"[k8s] worker-io SIGTERM with 40 calls in flight: exit {code} after {took:.1f} s")
    logs = docker("logs", cname)
    assert code == 0 and "Warm shutdown" in logs.stdout + logs.stderr
    # Every call finished before the worker exited: the results are there already.
    states = pods.python(running["beat"], COLLECT, json.dumps(ids), "10")
    assert states == ["SUCCESS"] * 40
    # None of them left queued or unacknowledged (beat's own entries may be).
    assert not set(ids) & set(queued_ids(pods, "io"))
    unacked = pods.redis("HVALS", "unacked")
    assert not [i for i in ids if i in unacked]
