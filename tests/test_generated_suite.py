"""The generated project's own test suite (real redis-server, real workers), run as a user would.

The default project's suite runs in test_ci_workflow.py, as its GitHub job runs it (Redis 8
there, Debian's redis-server here); running it twice would add ~5 minutes to CI for nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import clean_env, generate, run

CASES = {
    "solo-threads": {
        "project_name": "Beta Jobs",
        "cpu_pool": "solo",
        "io_pool": "threads",
        "python_version": "3.12",
        "io_concurrency": "300",
    },
}


def collected(project: Path, env: dict[str, str]) -> list[str]:
    """Node ids pytest collects in the project, the way `make test` would run them."""
    cmd = ["uv", "run", "--locked", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = run(cmd, cwd=project, env=env, timeout=300).stdout
    return [line for line in out.splitlines() if "::" in line]


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_project_tests_pass(tmp_path, case):
    project = generate(tmp_path, **CASES[case])
    env = clean_env()
    run(["uv", "sync", "--locked", "--quiet"], cwd=project, env=env, timeout=600)
    ids = collected(project, env)
    # Every test file is collected: a renamed or broken file would shrink both counts alike.
    files = {path.relative_to(project).as_posix() for path in project.glob("tests/test_*.py")}
    assert files and {i.split("::")[0] for i in ids} == files
    # Through the Makefile, as a user would: proves `make test` really runs the suite.
    proc = run(
        ["make", "test", "ARGS=-q -s -p no:cacheprovider"], cwd=project, env=env, timeout=900
    )
    summary = proc.stdout.strip().splitlines()[-1]
    print(f"{case}: {summary} ({len(ids)} collected)")
    # All of them passed: nothing failed, errored, skipped, deselected or xfailed.
    assert re.fullmatch(rf"{len(ids)} passed(, \d+ warnings?)? in .*", summary), summary
    peak = [line for line in proc.stdout.splitlines() if "in flight" in line]
    assert peak, "the concurrency test did not report its figures"
    print(f"{case}: {peak[0].strip('.')}")
