"""The generated project's own test suite (real redis-server, real workers), run as a user would.

Split by the project's own `slow` marker: its fast tests are part of the everyday tier
(`-m fast`), its slow ones run in the full run; together they are the whole suite, which the
first test checks. The default project's suite, demo included, runs in test_ci_workflow.py, as
its GitHub job runs it (Redis 8 there, Debian's redis-server here); this one is the non-default
option set with its demo deleted (`make delete-demo`, as a team would): the app and its tests
must not need the demo.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, generate, run
from k8s import render

ANSWERS = {
    "project_name": "Beta Jobs",
    "cpu_pool": "solo",
    "io_pool": "threads",
    "python_version": "3.12",
    "io_concurrency": "300",
    "web_api": "none",
}


def fast_parts(project: Path) -> tuple[list[str], list[str]]:
    """The fast tests in two runs of about equal length, each on its own xdist worker (the
    fast tier's longest test, split): the app's test files up to test_d*, then the rest and
    the library's (packages/*/tests), which test_generated_library.py runs."""
    app = sorted(p.relative_to(project).as_posix() for p in project.glob("tests/**/test_*.py"))
    first = [f for f in app if f < "tests/test_e"]
    return first, [f for f in app if f not in first] + ["packages"]


def collected(project: Path, env: dict[str, str], *args: str) -> list[str]:
    """Node ids pytest collects in the project, the way `make test` would run them."""
    cmd = ["uv", "run", "--locked", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = run([*cmd, *args], cwd=project, env=env, timeout=300).stdout
    return [line for line in out.splitlines() if "::" in line]


# What `make delete-demo` must remove (besides the marked blocks).
DEMO_PATHS = ("src/beta_jobs/demo", "tests/demo", "deploy/swarm/stack.demo.yaml",
              "deploy/k8s/components/demo", "deploy/k8s/overlays/demo")  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    project = generate(tmp_path_factory.mktemp("solo-threads"), **ANSWERS)
    env = clean_env()
    run(["uv", "sync", "--locked", "--quiet"], cwd=project, env=env, timeout=600)
    assert all((project / p).exists() for p in DEMO_PATHS)
    run(["make", "delete-demo"], cwd=project, env=env)
    return project, env


@pytest.mark.fast
def test_delete_demo_leaves_no_trace_and_a_stack_that_still_configures(project):
    path, env = project
    assert not [p for p in DEMO_PATHS if (path / p).exists()]
    for name in ("compose.yaml", ".env", ".env.example"):
        text = (path / name).read_text()
        assert ">>> demo" not in text and "<<< demo" not in text and "DEMO=" not in text, name
    code = [*path.glob("src/**/*.py"), *path.glob("tests/**/*.py"), *path.glob("bench/*.py")]
    # Left: the schedule's guarded import (DEMO=true without the demo is one clear error) and
    # the test of that error.
    refs = {p.relative_to(path).as_posix() for p in code if "beta_jobs.demo" in p.read_text()}
    assert code and refs == {"src/beta_jobs/celery_app.py", "tests/test_beat.py"}
    config = yaml.safe_load(run(["docker", "compose", "config"], cwd=path, env=env).stdout)
    assert "demo-api" not in config["services"] and {"worker-cpu", "worker-io"} <= set(
        config["services"]
    )
    assert "demo-api" not in config["services"]["worker-io"].get("depends_on", {})
    for variant in ("base", "overlays/production", "overlays/managed-redis"):
        names = {o["metadata"]["name"] for o in render(path, variant)}
        assert "worker-io" in names and "demo-api" not in names, variant
    # Beat sends no example entry: DEMO defaults to false and the demo's entries are gone.
    probe = "from beta_jobs.celery_app import app; print(sorted(app.conf.beat_schedule))"
    unused = {**env, "REDIS_URL": "redis://:unused@127.0.0.1:9/0"}  # read, never connected to
    out = run(["uv", "run", "--locked", "python", "-c", probe], cwd=path, env=unused).stdout
    assert out.strip() == "[]"


def make_test(project: Path, env: dict[str, str], marks: str, *paths: str) -> str:
    """`make test` with a marker expression (and test folders, else pytest's testpaths);
    asserts every test it selects passed."""
    ids = collected(project, env, "-m", marks, *paths)
    assert ids, f"no test selected by -m {marks!r} {' '.join(paths)}"
    proc = run(
        ["make", "test", f"ARGS=-q -s -p no:cacheprovider -m '{marks}' {' '.join(paths)}"],
        cwd=project,
        env=env,
        # A safety net against a hang: the slow tier takes ~7 min here idle, twice that loaded.
        timeout=2400,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    print(f"-m {marks!r}: {summary} ({len(ids)} selected)")
    # All of them passed: nothing failed, errored, skipped or xfailed.
    assert re.fullmatch(
        rf"{len(ids)} passed(, \d+ deselected)?(, \d+ warnings?)? in .*", summary
    ), summary
    return proc.stdout


@pytest.mark.fast
def test_generated_fast_tests_pass(project):
    path, env = project
    everything = collected(path, env)
    # Every test file is collected, and the two runs below cover all of its tests.
    # The app's tests and the library's (packages/*/tests), as pytest's testpaths say.
    tests = [*path.glob("tests/**/test_*.py"), *path.glob("packages/*/tests/test_*.py")]
    files = {p.relative_to(path).as_posix() for p in tests}
    assert files and {i.split("::")[0] for i in everything} == files
    fast, slow = collected(path, env, "-m", "not slow"), collected(path, env, "-m", "slow")
    assert sorted(fast + slow) == sorted(everything) and slow
    # The first part here, the second beside it (test_generated_library.py): between them,
    # every fast test, each once.
    first, second = fast_parts(path)
    here = [i for i in fast if i.split("::")[0] in first]
    there = [i for i in fast if i.split("::")[0] in second or i.startswith("packages/")]
    assert sorted(here + there) == sorted(fast) and here and there
    make_test(path, env, "not slow", *first)


def test_generated_slow_tests_pass(project):
    path, env = project
    make_test(path, env, "slow")
