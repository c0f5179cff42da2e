"""One measured run: start workers, feed them a batch, read the tasks' own clocks and /proc."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import redis

from {{ cookiecutter.package }}.producer import Job, submit, wait

from bench import procs

# Redis lists the example workload can land in: the template's two queues, Celery's default one.
QUEUES = ("cpu", "io", "celery")
HOLD = "bench-hold:"


@dataclass
class WorkerSpec:
    name: str
    argv: list[str]
    env: dict[str, str]


@dataclass
class Bench:
    """What every run shares: Redis, the HTTP upstream, the environment, where logs go."""

    redis_url: str
    upstream_url: str
    logdir: Path
    progress: object = None
    base_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: object) -> dict[str, str]:
        merged = dict(self.base_env)
        merged.update((key, str(value)) for key, value in overrides.items())
        return merged

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)


def run_batch(
    bench: Bench,
    label: str,
    specs: list[WorkerSpec],
    jobs: list[Job],
    preload: bool,
    timeout: float,
) -> dict:
    """Run ``jobs`` on fresh workers; returns timings, worker CPU and PSS.

    ``preload``: the whole batch is queued before the workers start and released in one
    step once they are ready, so start-up and publishing cost stay out of the figures.
    Otherwise jobs are published to ready workers (the mixed scenario measures latency).
    """
    client = bench.redis()
    if preload:
        submit(jobs)
        _move(client, "", HOLD)
    workers = [procs.Worker(s.name, s.argv, s.env, bench.logdir) for s in specs]
    try:
        for worker in workers:
            procs.wait_until(worker.ready, 90, f"worker {worker.name}")
        idle_pss = {w.name: _tree_pss(w) for w in workers}
        cpu_before = sum(procs.cpu_seconds(w.proc.pid) for w in workers)
        if preload:
            _move(client, HOLD, "")
        else:
            submit(jobs)
        wait(jobs, timeout, on_done=_advance(bench, label, len(jobs)))
        cpu = sum(procs.cpu_seconds(w.proc.pid) for w in workers) - cpu_before
        loaded_pss = {w.name: _tree_pss(w) for w in workers}
        children = {w.name: len(w.tree()) - 1 for w in workers}
    finally:
        procs.stop(*(worker.proc for worker in workers))
    return {
        **task_timings(jobs),
        "worker_cpu_s": round(cpu, 3),
        "cpu_ms_per_task": round(1000 * cpu / max(1, len(jobs)), 3),
        "processes": len(workers),
        "idle_pss_mib": idle_pss,
        "pss_mib": loaded_pss,
        "children": children,
    }


def _move(client: redis.Redis, src: str, dst: str) -> None:
    # RENAME is O(1) and wakes the workers' blocking take on the restored list at once.
    for queue in QUEUES:
        if client.exists(src + queue):
            client.rename(src + queue, dst + queue)


def _tree_pss(worker: procs.Worker) -> list[float]:
    """PSS of the worker process first, then of each child (prefork)."""
    return [round(procs.pss_mib(pid), 2) for pid in worker.tree()]


def _advance(bench: Bench, label: str, total: int):
    if bench.progress is None:
        return None
    task = bench.progress.add_task(label, total=total)
    return lambda job: bench.progress.advance(task)


def task_timings(jobs: list[Job]) -> dict:
    """Makespan, throughput and latencies from the tasks' own start/finish stamps."""
    done = [job for job in jobs if job.value is not None]
    errors = sorted({job.error for job in jobs if job.error})
    if not done:
        return {"n": len(jobs), "succeeded": 0, "errors": errors}
    first = min(job.value["started"] for job in done)
    last = max(job.value["finished"] for job in done)
    makespan = max(last - first, 1e-9)
    return {
        "n": len(jobs),
        "succeeded": len(done),
        "errors": errors,
        "makespan_s": round(makespan, 3),
        "tasks_per_s": round(len(done) / makespan, 1),
        "duration_p50_s": round(percentile([_duration(j) for j in done], 50), 4),
        "pids": len({job.value["pid"] for job in done}),
    }


def latencies(jobs: list[Job]) -> list[float]:
    """Submitted (client clock) to finished (task clock): same host, same clock."""
    return [job.value["finished"] - job.submitted for job in jobs if job.value is not None]


def _duration(job: Job) -> float:
    return job.value["finished"] - job.value["started"]


def percentile(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def cores() -> int:
    """CPUs this process may run on (affinity), as Celery's --concurrency=auto counts them."""
    return len(os.sched_getaffinity(0))
