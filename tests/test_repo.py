"""The template repository's own scripts and code are linted like the generated project."""

from __future__ import annotations

import shutil

from conftest import TEMPLATE, run


def test_ci_scripts_pass_shellcheck():
    scripts = sorted(str(p) for p in (TEMPLATE / ".ci").iterdir() if p.is_file())
    assert len(scripts) >= 3
    run([shutil.which("shellcheck"), "--shell=bash", *scripts], cwd=TEMPLATE)


def test_template_code_passes_ruff():
    ruff = shutil.which("ruff")
    run([ruff, "check", "--no-cache", "hooks", "tests", "template_answers.py"], cwd=TEMPLATE)
    run(
        [ruff, "format", "--check", "--no-cache", "hooks", "tests", "template_answers.py"],
        cwd=TEMPLATE,
    )
