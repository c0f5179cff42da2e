"""Template updates reach a generated project: generate with cruft at one commit, change the
template, `cruft update` applies the change with the recorded answers and keeps local work."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import TEMPLATE, run

GIT = [
    "git",
    "-c",
    "user.name=Test",
    "-c",
    "user.email=test@example.invalid",
    "-c",
    "commit.gpgsign=false",
]
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache")


def commit(repo: Path, message: str) -> str:
    run([*GIT, "add", "-A"], cwd=repo)
    run([*GIT, "commit", "-q", "-m", message], cwd=repo)
    return run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()


def cruft(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([shutil.which("cruft"), *args], cwd=cwd, check=check, timeout=300)


def local_secrets(project: Path) -> dict[str, str]:
    """Every file the post-generation hook fills with fresh values (git-ignored)."""
    files = [project / ".env", *(project / "secrets").iterdir()]
    files += (project / "deploy/k8s/base/secrets").iterdir()
    return {str(f.relative_to(project)): f.read_text() for f in files}


def test_cruft_update_applies_a_template_change(tmp_path):
    # The template as a git repository of its own, at a first commit.
    template = tmp_path / "template"
    shutil.copytree(TEMPLATE, template, ignore=IGNORED)
    run(["git", "init", "-q", "-b", "main"], cwd=template)
    first = commit(template, "v1")

    out = tmp_path / "out"
    answers = {"project_name": "Billing Jobs", "io_concurrency": "321"}
    cruft(
        "create",
        str(template),
        "--no-input",
        "--output-dir",
        str(out),
        "--extra-context",
        json.dumps(answers),
        cwd=tmp_path,
    )
    project = out / "billing-jobs"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(template)
    assert state["commit"] == first
    assert state["context"]["cookiecutter"]["io_concurrency"] == "321"
    assert state["context"]["cookiecutter"]["package"] == "billing_jobs"

    run(["git", "init", "-q", "-b", "main"], cwd=project)
    secrets_before = local_secrets(project)
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\nOur own notes, kept across updates.\n")
    commit(project, "generated, plus a local change")
    assert cruft("check", cwd=project).returncode == 0

    # A template change that uses the answers: a new Makefile target.
    makefile = template / "{{cookiecutter.project}}" / "Makefile"
    makefile.write_text(
        makefile.read_text()
        + "\nabout: ## what this project is\n\t@echo {{ cookiecutter.package }} io={{ cookiecutter.io_concurrency }}\n"
    )
    second = commit(template, "v2: make about")

    stale = cruft("check", cwd=project, check=False)
    assert stale.returncode != 0, stale.stdout
    update = cruft("update", "--skip-apply-ask", cwd=project)
    # A clean three-way apply: no fallback to a rejecting apply, no conflict leftovers.
    assert "Failed to apply" not in update.stdout + update.stderr
    assert not list(project.rglob("*.rej"))
    assert "<<<<<<<" not in (project / "Makefile").read_text()

    assert "@echo billing_jobs io=321" in (project / "Makefile").read_text()
    assert run(["make", "about"], cwd=project).stdout.strip() == "billing_jobs io=321"
    assert "Our own notes, kept across updates." in readme.read_text()
    secrets_after = local_secrets(project)
    assert secrets_after == secrets_before  # [tool.cruft] skip keeps them
    assert json.loads((project / ".cruft.json").read_text())["commit"] == second
    commit(project, "template update")
    assert cruft("check", cwd=project).returncode == 0
