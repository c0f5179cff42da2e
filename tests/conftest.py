"""Shared helpers for the template's tests: generate a project, run commands in it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TEMPLATE / ".ci"))
import stand_ins  # noqa: E402  (.ci/stand_ins.py, which quickstart.sh runs too)

DEFAULT_PACKAGE = "task_queue"

# pytest-xdist (`-n 3 --dist loadfile`, pyproject.toml): a file runs on one worker (its
# module-scoped stack is built once), and files go out in this order to whichever worker is
# free, the longest first so the run's tail stays short and the two heaviest suites (faults,
# swarm) start on workers of their own. `-n 0` for one process (-s, --pdb).
LONGEST_FIRST = (
    "test_ci_workflow.py",  # 950 s in one test (the generated suite, serially): start it first
    "test_faults.py",
    "test_swarm.py",
    "test_generated_suite.py",
    "test_generated_library.py",
    "test_monitoring.py",
    "test_k8s_containers.py",
    "test_compose_e2e.py",
    "test_bench_smoke.py",
    "test_flower_browser.py",
    "test_quickstart.py",
    "test_tooling.py",
)
# The everyday tier (`uv run pytest -m fast`): units, generation and lint, the generated
# project's own fast tests; no Docker engine needed.
FAST = {
    "test_docs.py",
    "test_hooks.py",
    "test_names.py",
    "test_generation.py",
    "test_repo.py",
    "test_k8s_manifests.py",
    "test_swarm_files.py",
    "test_template_updates.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: test order within a file is kept
    for item in items:
        if item.path.name in FAST:
            item.add_marker(pytest.mark.fast)


def generate(output_dir: Path, **answers: str) -> Path:
    """Render the template with ``answers`` over the defaults; returns the project folder."""
    return Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output_dir), extra_context=answers
        )
    )


def clean_env() -> dict[str, str]:
    """The caller's environment for commands in a generated project, minus what would steer
    them elsewhere: the template's own virtualenv and any Redis of the caller's."""
    drop = ("VIRTUAL_ENV", "TEST_REDIS_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # The Redis 7.2+ image the durable-publish tests and the benchmark fall back to.
    env["REDIS_IMAGE"] = f"{stand_ins.PREFIX}/redis:8"
    return env


def run(
    cmd: list[str], cwd: Path, timeout: float = 600, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure the assertion shows its output."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
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


class Stack:
    """A generated project running under docker compose, as a user runs it."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self.name = name  # compose project name: unique, so suites can run side by side

    @property
    def env(self) -> dict[str, str]:
        lines = (self.path / ".env").read_text().splitlines()
        return dict(
            line.split("=", 1) for line in lines if "=" in line and not line.startswith("#")
        )

    def set_env(self, **values: str) -> None:
        """Set variables in the stack's .env: a line replaced, or added where there is none."""
        text = (self.path / ".env").read_text()
        for key, value in values.items():
            text, count = re.subn(rf"(?m)^{key}=.*$", f"{key}={value}", text)
            if count == 0:
                text += f"{key}={value}\n"
        (self.path / ".env").write_text(text)

    def secret(self, name: str) -> str:
        """A generated secret, e.g. ``flower_password`` (compose mounts it from secrets/)."""
        return (self.path / "secrets" / name).read_text()

    @property
    def package(self) -> str:
        return next(p.name for p in (self.path / "src").iterdir() if p.is_dir())

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.env['FLOWER_PORT']}"

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        return run(
            ["docker", "compose", "-p", self.name, *args],
            cwd=self.path,
            check=check,
            timeout=timeout,
        )

    def redis_cli(self, *args: str, auth: bool = True, check: bool = True):
        """redis-cli in the redis container; the password goes from the secret file to
        REDISCLI_AUTH of that one process, never onto a command line."""
        login = 'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" ' if auth else ""
        script = f'{login}exec redis-cli "$@"'
        return self.compose("exec", "-T", "redis", "sh", "-c", script, "sh", *args, check=check)

    def up(self, *args: str) -> float:
        """``up -d --wait`` (plus ``args``); returns the seconds it took."""
        started = time.monotonic()
        self.compose("up", "-d", "--wait", *args, timeout=900)
        return time.monotonic() - started

    def services(self) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flower(self, path: str, auth: bool = True) -> tuple[int, object]:
        """GET a Flower URL; returns (status, parsed JSON or text)."""
        request = urllib.request.Request(self.flower_url + path)
        if auth:
            token = base64.b64encode(
                f"{self.env['FLOWER_USER']}:{self.secret('flower_password')}".encode()
            )
            request.add_header("Authorization", "Basic " + token.decode())
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def workers(self) -> dict[str, dict]:
        """Flower's view of the live workers (refreshed), by worker name."""
        status, workers = self.flower("/api/workers?refresh=1")
        assert status == 200, workers
        return workers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str:
    """Full path of a command the tests need; a clear failure when it is not installed."""
    path = shutil.which(name)
    assert path, f"{name} not on PATH: run .ci/setup (or uv sync for the Python linters)"
    return path


# Private aliases of the stack's base images (.ci/docker-engine.sh makes them): the real image
# where a registry answers, else a local stand-in. Never the public tags, which a stand-in would
# shadow for everything else on a shared engine.
BASE_PREFIX = stand_ins.PREFIX


def base_image(public: str) -> str:
    return f"{BASE_PREFIX}/{public}"


def point_at_private_bases(project: Path) -> None:
    """compose.override.yaml: every base image of the stack is its private alias."""
    stand_ins.override(project, always=True)


def start_stack(output_dir: Path, name: str, **answers: str) -> Stack:
    """Generate, build and start a stack; its compose project name and Flower port are unique
    to this test session, so several sessions can run on one engine (the API's port too)."""
    stack = Stack(generate(output_dir, **answers), f"{name}-{os.getpid()}")
    stack.set_env(FLOWER_PORT=str(free_port()), API_PORT=str(free_port()), IMAGE_TAG=stack.name)
    point_at_private_bases(stack.path)
    stack.compose("down", "-v", "--remove-orphans", check=False)  # leftovers of an aborted run
    started = time.monotonic()
    stack.compose("build", timeout=1800)
    built = time.monotonic() - started
    print(f"\n[{name}] build {built:.1f} s, up --wait {stack.up():.1f} s")
    return stack


@contextlib.contextmanager
def running_stack(output_dir: Path, name: str, **answers: str) -> Iterator[Stack]:
    """start_stack, then always (also after a failed start) down -v and remove its image."""
    project = f"{name}-{os.getpid()}"
    try:
        yield start_stack(output_dir, name, **answers)
    finally:
        folder = next((p for p in output_dir.iterdir() if (p / "compose.yaml").exists()), None)
        if folder is not None:
            down = ["docker", "compose", "-p", project, "down", "-v", "--remove-orphans"]
            run([*down, "--timeout", "60"], cwd=folder, check=False, timeout=300)
            # Not `--rmi local`: the image has a custom tag; `--rmi all` would take the bases.
            image = f"{folder.name}:{project}"
            subprocess.run(["docker", "image", "rm", "-f", image], capture_output=True)


@pytest.fixture(scope="session")
def compose_stack(require_docker, tmp_path_factory) -> Iterator[Stack]:
    """The default project, built and running; shared by every suite that needs the stack."""
    with running_stack(tmp_path_factory.mktemp("stack"), "e2e-default") as stack:
        yield stack
