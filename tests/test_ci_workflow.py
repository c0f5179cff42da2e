"""The generated CI workflow's test job, replayed on a real Docker engine as GitHub runs it.

The job's service containers start with the workflow's options and published ports; the job
itself runs in a clean container of the Python it names (on the host network, as a runner's
steps do), which has only Python and what the runner image brings that the job relies on
(`make`, password-less `sudo`); it gets nothing else than what the job's own steps install.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from conftest import base_image, generate, run

pytestmark = pytest.mark.docker

# The runner image's tools the job uses without installing them (make; openssl for the TLS
# test's certificates). apt-get is there in both.
RUNNER_PREP = (
    "apt-get update -qq && apt-get install -y -qq --no-install-recommends make openssl >/dev/null"
    " && printf '#!/bin/sh\\nexec \"$@\"\\n' > /usr/local/bin/sudo && chmod +x /usr/local/bin/sudo"
)
# What astral-sh/setup-uv does for this job: uv on PATH, its Python chosen by UV_PYTHON.
SETUP_UV = "pip install --quiet --root-user-action=ignore uv"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def docker(*args: str, timeout: float = 300) -> str:
    return run(["docker", *args], cwd=None, timeout=timeout).stdout.strip()


class Replay:
    def __init__(self, project: Path, name: str):
        self.project, self.name = project, name
        self.containers: list[str] = []
        self.values: dict[str, str] = {}

    def start_service(self, key: str, service: dict) -> None:
        """As the runner does: docker create with the workflow's options and ports, wait healthy."""
        ports = [f"127.0.0.1::{p}" if str(p).isdigit() else p for p in service.get("ports", [])]
        options = shlex.split(service.get("options", ""))
        container = f"{self.name}-{key}"
        # The official redis image's entrypoint runs redis-server with protected mode off when it
        # is given no config; the stand-in has no entrypoint, so the replay says it.
        command = ["redis-server", "--protected-mode", "no"] if key == "redis" else []
        publish = [arg for p in ports for arg in ("-p", p)]
        image = base_image(service["image"])
        self.containers.append(container)
        docker("run", "-d", "--name", container, *publish, *options, image, *command)
        deadline = time.monotonic() + 120
        while docker("inspect", "-f", "{{.State.Health.Status}}", container) != "healthy":
            assert time.monotonic() < deadline, f"service {key} never healthy"
            time.sleep(1)
        self.values[f"job.services.{key}.id"] = docker("inspect", "-f", "{{.Id}}", container)
        for port in service.get("ports", []):
            inner = str(port).split(":")[-1]
            host = docker("port", container, f"{inner}/tcp").splitlines()[0].rsplit(":", 1)[1]
            self.values[f"job.services.{key}.ports['{inner}']"] = host

    def expand(self, text: str) -> str:
        def value(match: re.Match) -> str:
            assert match.group(1) in self.values, f"the replay cannot evaluate {match.group(0)}"
            return self.values[match.group(1)]

        return EXPRESSION.sub(value, text)

    def start_job(self, python: str, env: dict[str, str]) -> None:
        container = f"{self.name}-job"
        self.containers.append(container)
        flags = ["--network", "host", "-v", f"{self.project}:/workspace", "-w", "/workspace"]
        for key, val in {"CI": "true", "GITHUB_ACTIONS": "true", **env}.items():
            flags += ["-e", f"{key}={self.expand(str(val))}"]
        image = base_image(f"python:{python}-slim")
        docker("run", "-d", "--name", container, *flags, image, "sleep", "infinity")
        self.shell("runner image", RUNNER_PREP)

    def shell(
        self, step: str, script: str, env: dict | None = None, timeout: float = 900
    ) -> subprocess.CompletedProcess:
        # GitHub's default shell for run steps on Linux; the step's own env on top of the job's.
        flags = [arg for k, v in (env or {}).items() for arg in ("-e", f"{k}={self.expand(v)}")]
        cmd = ["docker", "exec", *flags, f"{self.name}-job", "bash", "--noprofile", "--norc", "-eo"]
        proc = run([*cmd, "pipefail", "-c", script], cwd=None, timeout=timeout, check=False)
        assert proc.returncode == 0, (
            f"step {step!r} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
        return proc

    def remove(self) -> None:
        for container in self.containers:
            subprocess.run(["docker", "rm", "-f", "-v", container], capture_output=True)


# The one skip allowed: the test of old-Redis behaviour, where the service's Redis is new.
OLD_REDIS_SKIP = re.compile(
    r"SKIPPED \[1\] tests/test_durable\.py:\d+: needs a Redis older than 7\.2"
)


def assert_whole_suite_passed(project: Path, output: str) -> None:
    """Every test pytest collected passed (this replay is the default project's whole-suite
    check; test_generated_suite runs the other option case on the host)."""
    collected = int(re.search(r"^collected (\d+) items", output, re.M).group(1))
    summary = output.strip().splitlines()[-1]
    skipped = 1 if OLD_REDIS_SKIP.search(output) else 0
    tail = f", {skipped} skipped" if skipped else ""
    want = rf"=+ {collected - skipped} passed{tail}(, \d+ warnings?)? in .*"
    assert re.fullmatch(want, summary), f"{collected} collected: {summary}"
    # Every test file took part: a renamed or broken file would shrink both counts alike.
    tests = [*project.glob("tests/test_*.py"), *project.glob("packages/*/tests/test_*.py")]
    files = {path.relative_to(project).as_posix() for path in tests}
    ran = set(re.findall(r"^((?:packages/[\w-]+/)?tests/test_\w+\.py) \S", output, re.M))
    assert files and ran == files, sorted(files ^ ran)


def test_generated_ci_test_job_passes_in_a_clean_container(require_docker, tmp_path):
    project = generate(tmp_path)
    job = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())["jobs"]["test"]
    setup_uv = next(s for s in job["steps"] if s.get("uses", "").startswith("astral-sh/setup-uv"))
    python = setup_uv["with"]["python-version"]
    replay = Replay(project, f"harness-ci-replay-{os.getpid()}")
    try:
        for key, service in job.get("services", {}).items():
            replay.start_service(key, service)
        replay.start_job(python, {**job.get("env", {}), "UV_PYTHON": python})
        replay.shell("clean", "! command -v redis-server && ! command -v uv")
        output = ""
        for step in job["steps"]:
            uses = step.get("uses", "")
            if uses.startswith("actions/checkout"):
                continue  # the project is mounted as the workspace
            if uses.startswith("astral-sh/setup-uv"):
                replay.shell(uses, SETUP_UV)
                continue
            assert "run" in step and not uses, f"the replay does not know step {step}"
            name = step.get("name", step["run"])
            # The job's own limit bounds each step, as on GitHub.
            limit = 60 * job.get("timeout-minutes", 360)
            output = replay.shell(name, replay.expand(step["run"]), step.get("env"), limit).stdout
        summary = output.strip().splitlines()[-1]
        print(f"\nCI test job replayed: {summary}")
        assert_whole_suite_passed(project, output)
    finally:
        replay.remove()
