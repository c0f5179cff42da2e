"""The template repository's own scripts and code are linted like the generated project."""

from __future__ import annotations

import re

from conftest import TEMPLATE, run, tool


def test_ci_scripts_pass_shellcheck():
    scripts = sorted(
        str(p) for p in (TEMPLATE / ".ci").iterdir() if p.is_file() and p.suffix != ".py"
    )
    assert len(scripts) >= 3
    scripts.append(str(TEMPLATE / "quickstart.sh"))
    run([tool("shellcheck"), "--shell=bash", *scripts], cwd=TEMPLATE)


def test_template_code_passes_ruff():
    ruff = tool("ruff")
    run([ruff, "check", "--no-cache", "hooks", "tests", ".ci", "template_answers.py"], cwd=TEMPLATE)
    run(
        [ruff, "format", "--check", "--no-cache", "hooks", "tests", ".ci", "template_answers.py"],
        cwd=TEMPLATE,
    )


def test_ci_runs_the_test_command_the_readme_gives():
    readme = (TEMPLATE / "README.md").read_text()
    command = re.search(r"```bash\nbash \.ci/setup && (.+)\n```", readme).group(1)
    ci = [ln for ln in (TEMPLATE / ".ci/run").read_text().splitlines() if ln and ln[0] != "#"]
    assert ci[-2:] == ["bash .ci/setup", command], ci
