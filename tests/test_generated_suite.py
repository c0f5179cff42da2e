"""The generated project's own test suite (real redis-server, real workers), run as a user would."""

from __future__ import annotations

import os
import re

import pytest
from conftest import generate, run

CASES = {
    "default": {},
    "solo-threads": {
        "project_name": "Beta Jobs",
        "cpu_pool": "solo",
        "io_pool": "threads",
        "python_version": "3.12",
        "io_concurrency": "300",
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_generated_project_tests_pass(tmp_path, case):
    project = generate(tmp_path, **CASES[case])
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "TEST_REDIS_URL")}
    run(["uv", "sync", "--locked", "--quiet"], cwd=project, env=env, timeout=600)
    # Through the Makefile, as a user would: proves `make test` really runs the suite.
    proc = run(
        ["make", "test", "ARGS=-q -s -p no:cacheprovider"],
        cwd=project,
        env=env,
        timeout=900,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    print(f"{case}: {summary}")
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 35
    assert not re.search(r"failed|error|skipped", summary), summary
    peak = [line for line in proc.stdout.splitlines() if "in flight" in line]
    assert peak, "the concurrency test did not report its figures"
    print(f"{case}: {peak[0].strip('.')}")
