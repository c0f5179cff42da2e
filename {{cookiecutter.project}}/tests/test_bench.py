"""The benchmark's building blocks; the full run is exercised by the template's smoke test."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.package }}.celery_app import CPU_CHILD_NICE
from {{ cookiecutter.package }}.producer import Job
from {{ cookiecutter.package }}.settings import Settings
from {{ cookiecutter.package }}.worker import worker_argv

from bench import procs
from bench.commands import (
    tuned_argv,
    untuned_argv,
)
from bench.runs import task_timings

ENV = {"REDIS_URL": "redis://:pw@127.0.0.1:9/0", "IO_CONCURRENCY": "500"}


def test_tuned_command_is_the_worker_command_with_only_queue_and_name_changed():
    expected = worker_argv("cpu", Settings(redis_url=ENV["REDIS_URL"], io_concurrency=500))
    got = tuned_argv("cpu", ENV, "bench", queue="io")
    changed = [(a, b) for a, b in zip(expected, got, strict=True) if a != b]
    assert changed == [
        ("--queues=cpu", "--queues=io"),
        ("--hostname=cpu@%h", "--hostname=bench@%h"),
    ]
    assert "--concurrency=500" in tuned_argv("io", ENV, "io")


def test_untuned_command_carries_no_tuning():
    argv = untuned_argv("gevent", 500, "io", "plain", events=False)
    flags = [arg for arg in argv if arg.startswith("-") and arg != "-m"]
    assert flags[0] == "-A" and argv[argv.index("-A") + 1] == "bench.untuned"
    assert sorted(flags[1:]) == sorted(
        [
            "--pool=gevent",
            "--concurrency=500",
            "--queues=io",
            "--hostname=plain@%h",
            "--loglevel=INFO",
        ]
    )
    assert untuned_argv("prefork", 2, "celery", "plain", events=True)[-1] == "-E"


def test_untuned_app_has_celery_defaults_and_the_same_tasks():
    from {{ cookiecutter.package }}.tasks import cpu, io

    from bench.untuned import app as plain

    assert plain.backend.thread_safe is False  # a backend per greenlet
    assert plain.conf.task_acks_late is False
    assert plain.conf.worker_prefetch_multiplier == 4
    plain.loader.import_default_modules()
    plain.finalize()
    assert {cpu.count_primes.name, io.wait_on_api.name, io.noop.name} <= set(plain.tasks)


def _job(started: float, finished: float) -> Job:
    return Job(
        "io", None, submitted=0.0, value={"started": started, "finished": finished, "pid": 1}
    )


def test_timings_come_from_the_tasks_own_stamps():
    jobs = [_job(10.0, 11.0), _job(10.5, 12.0), Job("io", None, error="no result")]
    timings = task_timings(jobs)
    assert timings["makespan_s"] == 2.0
    assert timings["tasks_per_s"] == 1.0
    assert (timings["n"], timings["succeeded"], timings["errors"]) == (3, 2, ["no result"])


# A parent that runs a CPU-bound child to the end, reaps it, reports the child's CPU time from
# its own rusage, and waits: its tree is then the parent alone, apart from pytest's processes.
PARENT = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-c", "sum(range(10**8))"], check=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime, flush=True)
sys.stdin.read()
"""


def test_cpu_and_pss_of_a_process_tree():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.pid in procs.process_tree(os.getpid())
        child_cpu = float(parent.stdout.readline())
        # Only now is the parent's interpreter surely loaded (just after exec it was 0.8 MiB).
        assert procs.pss_mib(parent.pid) > 1
        assert child_cpu > 0.2
        # The reaped child's CPU counts for its parent, all of it (to /proc's 10 ms ticks).
        assert procs.cpu_seconds(parent.pid) >= child_cpu - 0.02
    finally:
        parent.kill()
        parent.wait()


@pytest.mark.parametrize("arg", ["--scenarios=nope", "--scenarios=,"])
def test_bad_scenario_list_is_refused(arg):
    from bench.__main__ import parse_args

    with pytest.raises(SystemExit) as error:
        parse_args([arg])
    assert error.value.code == 2


def _nice(pid: int) -> int:
    # Field 19 of /proc/<pid>/stat; the 17th after the command name's ")".
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_only_the_cpu_workers_task_processes_run_at_lower_priority(workers):
    io_tree = procs.process_tree(workers["io"].proc.pid)
    base = _nice(io_tree[0])
    assert {_nice(pid) for pid in io_tree} == {base}
    cpu_tree = procs.process_tree(workers["cpu"].proc.pid)
    # prefork runs tasks in its children (the parent keeps its priority); solo in itself.
    runners = cpu_tree[1:] or cpu_tree
    assert {_nice(pid) - base for pid in runners} == {CPU_CHILD_NICE}
    if len(cpu_tree) > 1:
        assert _nice(cpu_tree[0]) == base
