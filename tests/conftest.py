"""Shared helpers for the template's tests: generate a project, run commands in it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]

DEFAULT_PACKAGE = "task_queue"


def generate(output_dir: Path, **answers: str) -> Path:
    """Render the template with ``answers`` over the defaults; returns the project folder."""
    return Path(
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(output_dir), extra_context=answers)
    )


def run(cmd: list[str], cwd: Path, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def docker_ready() -> str | None:
    """None when a Docker engine with Compose v2 answers, else the reason it does not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return "no Docker engine answers (run .ci/docker-engine.sh)"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if compose.returncode != 0:
        return "no Compose v2 plugin (run .ci/docker-engine.sh)"
    return None


@pytest.fixture(scope="session")
def require_docker():
    """Skip where no engine can be had; in CI (CI=true) a missing engine is a failure."""
    reason = docker_ready()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the Docker tests: {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def default_project(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("default"))
