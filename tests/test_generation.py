"""Generation across the option matrix: renders fully, lints clean, compose and lock are valid.

Every value of every choice appears at least once; cpu_pool x io_pool (the pair that
interacts at run time) appears in all four combinations; one case stretches name lengths.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import generate, run, tool

CASES = {
    "default": {},
    "solo-threads-py312": {"cpu_pool": "solo", "io_pool": "threads", "python_version": "3.12"},
    "prefork-threads-py311": {
        "io_pool": "threads",
        "python_version": "3.11",
        "github_actions": "no",
        "web_api": "none",
    },
    "solo-gevent-numbers": {
        "cpu_pool": "solo",
        "cpu_concurrency": "4",
        "io_concurrency": "1000",
        "flower_port": "15555",
    },
    # Folder and package derived from a name with a leading digit, unicode and punctuation.
    "human-name": {"project_name": "3D Ärger-Büro: v2.0 🚀"},
    "long-names": {
        "project_name": "Very Long Project Name For Checking Line Lengths",
        "description": "Ünïcödé and 'single quotes' in a description",
        "author": "Zoë O'Brien",
    },
}

# An opening tag or a cookiecutter variable; a lone "}}" is ordinary code (a nested dict).
UNRENDERED = re.compile(r"{{|{%|cookiecutter\.")
# GitHub Actions expressions (${{ github.ref }}) are meant to stay; only in workflow files.
GHA_EXPRESSION = re.compile(r"\$\{\{ [\w.\[\]'-]+ \}\}")
# Prometheus alert templates and Grafana legends ({{ $labels.queue }}, {{queue}}): monitoring/ only.
PROMETHEUS_TEMPLATE = re.compile(r"\{\{ ?\$?[\w.]+( \| \w+)? ?\}\}")
BINARY_SUFFIXES = {".png", ".jpg", ".ico"}


@pytest.fixture(scope="module", params=sorted(CASES))
def project(request, tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp(request.param), **CASES[request.param])


def test_matrix_covers_every_choice():
    from conftest import TEMPLATE

    options = json.loads((TEMPLATE / "cookiecutter.json").read_text())
    for name, values in options.items():
        if isinstance(values, list):
            used = {case.get(name, values[0]) for case in CASES.values()}
            assert used == set(values), f"{name}: {set(values) - used} never generated"


def test_nothing_left_unrendered(project):
    for path in project.rglob("*"):
        if path.is_file() and path.suffix not in BINARY_SUFFIXES:
            text = path.read_text()
            if ".github/workflows" in path.as_posix():
                text = GHA_EXPRESSION.sub("", text)
            if path.relative_to(project).parts[0] == "monitoring":
                text = PROMETHEUS_TEMPLATE.sub("", text)
            hits = [line for line in text.splitlines() if UNRENDERED.search(line)]
            assert not hits, f"{path.relative_to(project)}: {hits[:3]}"
        assert not UNRENDERED.search(path.name), path


def test_the_template_names_the_package_only_through_its_variable():
    """A module path written as the default's (`task_queue.x`) runs in the default project
    only: another project name fails there at run time (test_acl once did)."""
    from conftest import TEMPLATE

    hits = [
        f"{path.relative_to(TEMPLATE)}:{n}"
        for path in (TEMPLATE / "{{cookiecutter.project}}").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\btask_queue\.[a-z]", line)
    ]
    assert not hits, hits


def test_text_files_end_with_one_newline(project):
    # What the generated pre-commit's end-of-file hook demands; Jinja tags on their own line
    # (raw blocks) easily leave a second one. Secret files are git-ignored values, no newline.
    for path in project.rglob("*"):
        if path.is_file() and path.suffix not in BINARY_SUFFIXES and "secrets" not in path.parts:
            text = path.read_text()
            if text:
                assert text.endswith("\n") and not text.endswith("\n\n"), path.relative_to(project)


def test_ruff_check_and_format(project):
    ruff = tool("ruff")
    run([ruff, "check", "--no-cache", "."], cwd=project)
    run([ruff, "format", "--check", "--no-cache", "."], cwd=project)


def test_lock_matches_pyproject(project):
    run(["uv", "lock", "--check"], cwd=project, timeout=300)


def test_hadolint_dockerfile(project):
    run([tool("hadolint"), "Dockerfile"], cwd=project)


def test_yaml_files_parse(project):
    for path in [*project.glob("*.yaml"), *project.glob(".github/**/*.yml")]:
        assert yaml.safe_load(path.read_text()), path


def test_compose_config_is_valid(project, require_docker):
    out = run(
        ["docker", "compose", "--profile", "tools", "--profile", "monitoring", "config",
         "--format", "json"],
        cwd=project,
    ).stdout  # fmt: skip
    config = json.loads(out)
    services = config["services"]
    assert {"redis", "worker-cpu", "worker-io", "flower", "producer"} <= set(services)
    package = next(p.name for p in (project / "src").iterdir())
    # The very command the generated tests start workers with (tests/conftest.py there).
    for kind in ("cpu", "io"):
        assert services[f"worker-{kind}"]["command"] == ["python", "-m", f"{package}.worker", kind]
        assert f'"{package}.worker"' in (project / "tests" / "conftest.py").read_text()
    # Every service, the monitoring profile's too: loopback ports, no capability, no
    # privilege gain, and a read-only root but Redis's (as in the Swarm stack).
    assert {"metrics", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", (name, port)
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("read_only") is True or name == "redis", name
    assert "ports" not in services["redis"]
    # CPU batches yield to latency-bound services when cores are scarce.
    assert services["worker-cpu"]["cpu_shares"] < services["worker-io"].get("cpu_shares", 1024)


def test_dev_override_gives_reloads_the_stop_grace(project, require_docker):
    """watchfiles kills a worker --sigint-timeout after a reload's SIGINT (default 5 s): it
    must wait as long as compose's stop_grace_period, or a reload kills running tasks."""
    cmd = ["docker", "compose", "-f", "compose.yaml", "-f", "compose.dev.yaml", "config"]
    services = json.loads(run([*cmd, "--format", "json"], cwd=project).stdout)["services"]
    for kind in ("cpu", "io"):
        service = services[f"worker-{kind}"]
        command = service["command"]
        assert command[0] == "watchfiles", command
        grace = int(command[command.index("--sigint-timeout") + 1])
        assert grace == seconds(service["stop_grace_period"]), (kind, command)


def seconds(duration: str) -> int:
    """A Go duration as compose prints it (e.g. 1m0s), in whole seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_env_and_secrets_are_ignored(project):
    assert {".env", "secrets/"} <= set((project / ".gitignore").read_text().splitlines())
    dockerignore = (project / ".dockerignore").read_text().splitlines()
    assert dockerignore[dockerignore.index("*")] == "*"  # deny by default
    assert not any(line.startswith(("!.env", "!secrets")) for line in dockerignore)
