"""The example pipeline across both pools: fetches on the io worker, the reduce on the cpu worker."""

import json
import uuid

EXPECTED_CPU_POOL = "{{ cookiecutter.cpu_pool }}"
EXPECTED_IO_POOL = "{{ cookiecutter.io_pool }}"


def test_fetches_run_on_io_and_the_reduce_on_cpu(run_producer):
    proc = run_producer("pipeline", "--fetches", "12", "--delay", "0.1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["fetches"] == 12
    fetches = [row for row in summary["where"] if row["step"] == "fetch"]
    (reduce,) = [row for row in summary["where"] if row["step"] == "reduce"]
    assert sum(row["tasks"] for row in fetches) == 12
    assert {(row["queue"], row["pool"]) for row in fetches} == {("io", EXPECTED_IO_POOL)}
    assert all(row["worker"].startswith("io@") for row in fetches)
    assert (reduce["queue"], reduce["pool"], reduce["tasks"]) == ("cpu", EXPECTED_CPU_POOL, 1)
    assert reduce["worker"].startswith("cpu@")


def test_summary_table_says_where_each_step_ran(run_producer):
    proc = run_producer("pipeline", "--fetches", "3", "--delay", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("3 fetches")
    assert any("fetch" in line and "queue=io" in line and "x3" in line for line in lines)
    assert any("reduce" in line and "queue=cpu" in line and "x1" in line for line in lines)


def test_a_failing_fetch_fails_the_pipeline_with_its_error(run_producer, upstream_url):
    url = f"{upstream_url}/flaky/{uuid.uuid4().hex}?fail=1000&status=404"
    # A hang would hit the subprocess timeout (180 s), far below the pipeline's own 600 s.
    proc = run_producer("pipeline", "--fetches", "3", "--url", url, "--timeout", "600")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: pipeline ") and "failed" in line, line
    assert "answered 404" in line, line
    assert proc.stdout == ""


def test_bad_pipeline_input_is_named(run_producer):
    proc = run_producer("pipeline", "--fetches", "0")
    assert proc.returncode == 2
    assert "--fetches must be from 1 to 1000, got 0" in proc.stderr
