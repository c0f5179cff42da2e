"""The monitoring profile for real: Prometheus scraping Flower and the exporter of a running stack,
the alert rules (promtool), every dashboard query and the worker-missing alert under a SIGKILL.

Grafana itself cannot run here (no registry has it): its dashboard's queries run against the
real Prometheus instead. Tests run in file order on one stack; the last one kills a worker.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import Stack, free_port, generate, point_at_private_bases, run

pytestmark = pytest.mark.monitoring

# Everything the profile starts but Grafana.
SERVICES = ("redis", "demo-api", "worker-cpu", "worker-io", "flower", "metrics", "prometheus")
CPU_TASKS, IO_TASKS = 60, 100
# Scrapes every 2 s instead of 10 s: a short CPU backlog on an idle machine is still seen.
SCRAPE = "2s"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: .ci/docker-engine.sh installs it from Debian's prometheus")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("monitoring"))


def test_alert_rules_check_and_unit_tests_pass(project):
    monitoring = project / "monitoring"
    run([promtool(), "check", "rules", "alerts.yml"], cwd=monitoring)
    out = run([promtool(), "test", "rules", "alerts.test.yml"], cwd=monitoring).stdout
    assert "SUCCESS" in out
    # Every alert has a runbook and a unit test.
    rules = yaml.safe_load((monitoring / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((monitoring / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert all(rule["annotations"].get("runbook") for rule in rules)
    assert {rule["alert"] for rule in rules} == tested


class Prometheus:
    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> object:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=30) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> dict[str, float]:
        """Instant query: value by the series' `queue` label (or its whole label set)."""
        result = self.get("/api/v1/query", query=expr)["result"]
        return {
            r["metric"].get("queue", json.dumps(r["metric"])): float(r["value"][1]) for r in result
        }

    def wait_for(self, expr: str, check, timeout: float = 600) -> dict[str, float]:
        """The values once ``check`` holds, or at the deadline (a safety net, not a bound)."""
        deadline = time.monotonic() + timeout
        while True:
            values = self.query(expr)
            if check(values) or time.monotonic() > deadline:
                return values
            time.sleep(2)


@pytest.fixture(scope="module")
def stack(require_docker, project):
    stack = Stack(project, f"monitoring-{os.getpid()}")
    env_file = project / ".env"
    ports = {"FLOWER_PORT": free_port(), "PROMETHEUS_PORT": free_port(), "API_PORT": free_port()}
    text = env_file.read_text()
    for key, value in {**ports, "IMAGE_TAG": stack.name}.items():
        text = re.sub(rf"(?m)^{key}=.*$", f"{key}={value}", text)
    env_file.write_text(text)
    config = project / "monitoring/prometheus.yml"
    config.write_text(
        config.read_text().replace("scrape_interval: 10s", f"scrape_interval: {SCRAPE}")
    )
    point_at_private_bases(project)
    stack.compose("build", timeout=1800)
    stack.compose("--profile", "monitoring", "up", "-d", *SERVICES, timeout=900)
    # Polled rather than `up --wait`, which gives up at the first failed probe: on a saturated
    # shared machine a probe can time out during start-up and pass a few seconds later.
    deadline = time.monotonic() + 600
    while (health := healthy(stack)) != dict.fromkeys(SERVICES, True):
        assert time.monotonic() < deadline, health
        time.sleep(3)
    yield stack, Prometheus(ports["PROMETHEUS_PORT"])
    stack.compose("--profile", "monitoring", "down", "-v", "--timeout", "30", check=False)


def healthy(stack: Stack) -> dict[str, bool]:
    """Running, and healthy where the service has a probe."""
    return {
        svc["Service"]: svc["State"] == "running" and svc["Health"] in ("", "healthy")
        for svc in stack.services()
    }


def test_prometheus_scrapes_every_target(stack):
    _, prom = stack

    def health() -> dict[str, str]:
        targets = prom.get("/api/v1/targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    deadline = time.monotonic() + 90
    while set(health().values()) != {"up"} and time.monotonic() < deadline:
        time.sleep(2)
    assert health() == {"flower": "up", "metrics": "up", "prometheus": "up"}
    # ... while hardened like the rest: read-only root, no capability, no privilege gain.
    s, _ = stack
    cid = s.compose("ps", "-q", "prometheus").stdout.split()[0]
    host = json.loads(run(["docker", "inspect", cid], cwd=s.path).stdout)[0]["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]


def test_workload_metrics_by_queue(stack):
    s, prom = stack
    # ~6 s of CPU work on 2 idle cores (0.1 s a task): the cpu backlog is seen by a few scrapes.
    proc = s.compose("run", "--rm", "producer", "--cpu", str(CPU_TASKS), "--cpu-limit", "100000",
                     "--io", str(IO_TASKS), "--io-delay", "1", "--timeout", "840", "--json", timeout=900)  # fmt: skip
    assert json.loads(proc.stdout)["ok"]
    peak = prom.query('max_over_time(celery_queue_waiting{queue="cpu"}[10m])')
    assert peak["cpu"] > 0, peak
    drained = prom.wait_for("celery_queue_length", lambda v: v and not any(v.values()))
    assert drained == {"cpu": 0, "io": 0}
    expected = {"cpu": CPU_TASKS, "io": IO_TASKS}
    succeeded = 'sum by (queue) (celery_tasks_total{state="succeeded"})'
    assert prom.wait_for(succeeded, lambda v: v == expected) == expected
    # Runtime and time waiting, each task observed once under its own queue.
    for histogram in ("celery_task_runtime_seconds", "celery_task_queuetime_seconds"):
        # Scraped on their own schedule: waited for, like the counts above.
        counts = prom.wait_for(f"sum by (queue) ({histogram}_count)", lambda v: v == expected)
        assert counts == expected, histogram
    runtime = prom.query(
        "sum by (queue) (celery_task_runtime_seconds_sum) / sum by (queue) (celery_task_runtime_seconds_count)"
    )
    print(f"\n[monitoring] cpu backlog peak {peak['cpu']:.0f}, mean runtime s {runtime}")


def test_flower_shows_every_task_with_its_final_state(stack):
    s, _ = stack
    status, tasks = s.flower("/api/tasks?limit=100000")
    assert status == 200, tasks
    states: dict[str, int] = {}
    for task in tasks.values():
        states[task["state"]] = states.get(task["state"], 0) + 1
    assert states == {"SUCCESS": CPU_TASKS + IO_TASKS}


def dashboard_queries(project: Path) -> list[tuple[str, str]]:
    text = (project / "monitoring/grafana/dashboards/celery.json").read_text()
    panels = json.loads(text)["panels"]
    return [(p["title"], t["expr"]) for p in panels for t in p["targets"]]


def test_every_dashboard_query_returns_data(stack, project):
    _, prom = stack
    queries = dashboard_queries(project)
    assert len(queries) >= 10
    empty = []
    for title, expr in queries:
        values = prom.wait_for(expr, lambda v: any(not math.isnan(x) for x in v.values()), 60)
        if not any(not math.isnan(x) for x in values.values()):
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def test_rules_loaded_and_sigkilled_io_worker_fires_the_alert(stack, project):
    s, prom = stack
    groups = prom.get("/api/v1/rules")["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    rules = yaml.safe_load((project / "monitoring/alerts.yml").read_text())["groups"][0]["rules"]
    assert loaded == {rule["alert"] for rule in rules}

    def firing() -> set[tuple[str, str]]:
        alerts = prom.get("/api/v1/alerts")["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("queue", "")) for a in alerts if a["state"] == "firing"}  # fmt: skip

    assert ("CeleryWorkersMissing", "io") not in firing()
    killed = time.monotonic()
    s.compose("kill", "-s", "SIGKILL", "worker-io")
    deadline = killed + 300
    while ("CeleryWorkersMissing", "io") not in firing() and time.monotonic() < deadline:
        time.sleep(5)
    print(
        f"\n[monitoring] CeleryWorkersMissing{{queue=io}} firing {time.monotonic() - killed:.0f} s after SIGKILL"
    )
    assert ("CeleryWorkersMissing", "io") in firing()
    assert ("CeleryWorkersMissing", "cpu") not in firing()
