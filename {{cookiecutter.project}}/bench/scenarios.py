"""The four scenarios of the benchmark; each returns rows with their physical bound beside them."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from dataclasses import dataclass

from {{ cookiecutter.package }}.celery_app import CPU_QUEUE, IO_QUEUE
from {{ cookiecutter.package }}.producer import Job
from {{ cookiecutter.package }}.tasks import cpu, io

from bench import procs
from bench.commands import (
    tuned_argv,
    untuned_argv,
)
{% if cookiecutter.web_api == "fastapi" %}from bench.enqueue import enqueue
{% endif %}from bench.publish import publish_cost
from bench.runs import (
    Bench,
    WorkerSpec,
    cores,
    latencies,
    percentile,
    run_batch,
)


@dataclass(frozen=True)
class Sizes:
    """Batch sizes: ``full`` for the documented run, ``smoke`` for CI."""

    io_concurrency: int = 500
    io_tasks: int = 5000
    io_latency: float = 1.0  # I/O near the bound
    overhead_latency: float = 0.1  # per-task overhead binds
    prefork_io_tasks: int = 40
    memory_warm_tasks: int = 1000
    mixed_cpu_tasks: int = 30
    mixed_cpu_limit: int = 300_000
    mixed_io_tasks: int = 200
    mixed_io_latency: float = 0.5
    noop_tasks: int = 4000
    # Published without workers, in batches, with and without the durable wait.
    publish_tasks: int = 1000
    publish_batch: int = 100
    publish_rounds: int = 3
    # Task events off (Celery's default) and on (what Flower switches on), side by side.
    events: tuple[bool, ...] = (False, True)
    # Soak: no-ops per queue, published while both workers run (the stack's shape).
    soak_tasks: int = 50_000
{% if cookiecutter.web_api == "fastapi" %}    # Enqueueing through the web API against the CLI producer's apply_async.
    enqueue_tasks: int = 3000
    enqueue_clients: int = 20
    enqueue_rounds: int = 3
{% endif %}

FULL = Sizes()
SMOKE = Sizes(
    io_tasks=100,
    io_latency=0.2,
    overhead_latency=0.05,
    prefork_io_tasks=4,
    memory_warm_tasks=100,
    mixed_cpu_tasks=4,
    mixed_cpu_limit=20_000,
    mixed_io_tasks=20,
    mixed_io_latency=0.2,
    noop_tasks=100,
    publish_tasks=100,
    publish_batch=50,
    publish_rounds=1,
    # Each worker start and stop costs seconds: CI checks the code paths, once.
    events=(False,),
    soak_tasks=100,
{% if cookiecutter.web_api == "fastapi" %}    enqueue_tasks=100,
    enqueue_clients=4,
    enqueue_rounds=1,
{% endif %})


# --- worker specs -------------------------------------------------------------------------


def template_io(bench: Bench, sizes: Sizes, events: bool, name: str = "io") -> WorkerSpec:
    env = bench.env(
        IO_CONCURRENCY=sizes.io_concurrency,
        TASK_EVENTS=events,
        HEARTBEAT_FILE=bench.logdir / f"{name}.hb",
    )
    return WorkerSpec(name, tuned_argv("io", env, name), env)


def template_cpu(bench: Bench, sizes: Sizes, events: bool, queue: str = CPU_QUEUE) -> WorkerSpec:
    env = bench.env(
        CPU_CONCURRENCY=cores(),
        TASK_EVENTS=events,
        IO_CONCURRENCY=sizes.io_concurrency,
        HEARTBEAT_FILE=bench.logdir / "cpu.hb",
    )
    return WorkerSpec("cpu", tuned_argv("cpu", env, "cpu", queue), env)


def untuned(
    bench: Bench, sizes: Sizes, pool: str, concurrency: int, queue: str, events: bool
) -> WorkerSpec:
    # IO_CONCURRENCY sizes the example tasks' HTTP pool (app code, not Celery tuning).
    env = bench.env(IO_CONCURRENCY=sizes.io_concurrency)
    return WorkerSpec(
        f"untuned-{pool}", untuned_argv(pool, concurrency, queue, f"untuned-{pool}", events), env
    )


# --- 1. I/O throughput --------------------------------------------------------------------


def io_throughput(bench: Bench, sizes: Sizes) -> list[dict]:
    rows = []
    for latency in (sizes.io_latency, sizes.overhead_latency):
        for events in sizes.events:
            rows += [
                _io_row(bench, sizes, latency, events, variant)
                for variant in _io_variants(latency, sizes)
            ]
    return rows


def _io_variants(latency: float, sizes: Sizes) -> list[str]:
    variants = ["template io", "untuned gevent", "prefork c=cores"]
    if latency == sizes.overhead_latency:
        variants.insert(2, "template io x cores")
    return variants


def _io_row(bench: Bench, sizes: Sizes, latency: float, events: bool, variant: str) -> dict:
    c, n = sizes.io_concurrency, sizes.io_tasks
    if variant == "template io":
        specs, slots = [template_io(bench, sizes, events)], c
    elif variant == "untuned gevent":
        specs, slots = [untuned(bench, sizes, "gevent", c, IO_QUEUE, events)], c
    elif variant == "template io x cores":
        specs = [template_io(bench, sizes, events, f"io{i}") for i in range(cores())]
        slots = c * cores()
    else:
        specs, slots, n = (
            [template_cpu(bench, sizes, events, IO_QUEUE)],
            cores(),
            sizes.prefork_io_tasks,
        )
    jobs = [Job(IO_QUEUE, io.wait_on_api.s(latency)) for _ in range(n)]
    label = f"io L={latency:g}s {variant} events={'on' if events else 'off'}"
    bound_s = n * latency / slots
    # Generous (150 tasks/s would do), yet a lost task ends the run instead of hanging it.
    timeout = 120 + 5 * max(bound_s, n / 150)
    result = run_batch(bench, label, specs, jobs, preload=True, timeout=timeout)
    return {
        "variant": variant,
        "events": events,
        "latency_s": latency,
        "slots": slots,
        "bound_s": round(bound_s, 3),
        "bound_tasks_per_s": round(slots / latency, 1),
        "pct_of_bound": _pct(bound_s, result.get("makespan_s")),
        **result,
    }


def _pct(bound_s: float, makespan_s: float | None) -> float | None:
    return None if not makespan_s else round(100 * bound_s / makespan_s, 1)


# --- 2. memory per concurrency slot -------------------------------------------------------


def memory(bench: Bench, sizes: Sizes) -> list[dict]:
    rows = []
    for events in sizes.events:
        rows.append(
            _memory_row(
                bench,
                "template io (gevent)",
                [template_io(bench, sizes, events)],
                sizes.io_concurrency,
                events,
                _warm_io(sizes),
            )
        )
        rows.append(
            _memory_row(
                bench,
                "template cpu (prefork)",
                [template_cpu(bench, sizes, events)],
                cores(),
                events,
                _warm_cpu(),
            )
        )
    return rows


def _warm_io(sizes: Sizes) -> list[Job]:
    # More tasks than slots, each long enough that every greenlet is busy at once.
    return [Job(IO_QUEUE, io.wait_on_api.s(0.5)) for _ in range(sizes.memory_warm_tasks)]


def _warm_cpu() -> list[Job]:
    return [Job(CPU_QUEUE, cpu.count_primes.s(50_000)) for _ in range(4 * cores())]


def _memory_row(
    bench: Bench, variant: str, specs: list[WorkerSpec], slots: int, events: bool, jobs: list[Job]
) -> dict:
    result = run_batch(
        bench,
        f"memory {variant} events={'on' if events else 'off'}",
        specs,
        jobs,
        preload=True,
        timeout=120,
    )
    pss = result["pss_mib"][specs[0].name]
    idle = result["idle_pss_mib"][specs[0].name]
    total, kids = sum(pss), pss[1:]
    return {
        "variant": variant,
        "events": events,
        "slots": slots,
        "pss_total_mib": round(total, 1),
        "idle_pss_total_mib": round(sum(idle), 1),
        "pss_main_mib": pss[0],
        "pss_per_child_mib": round(sum(kids) / len(kids), 1) if kids else None,
        "pss_per_slot_mib": round(total / slots, 3),
        "n": result["n"],
        "succeeded": result["succeeded"],
        "errors": result["errors"],
    }


# --- 3. mixed load ------------------------------------------------------------------------


def mixed(bench: Bench, sizes: Sizes) -> list[dict]:
    rows = []
    for events in sizes.events:
        rows.append(_mixed_row(bench, sizes, "template: cpu prefork + io gevent", events))
        rows.append(_mixed_row(bench, sizes, "default: one prefork worker", events))
    return rows


def _mixed_jobs(sizes: Sizes, default: bool) -> list[Job]:
    if default:
        # Celery's default app has no routes: everything goes to its one queue, "celery".
        from bench.untuned import app as plain

        cpu_sig = lambda: plain.signature(cpu.count_primes.name, args=(sizes.mixed_cpu_limit,))  # noqa: E731
        io_sig = lambda: plain.signature(io.wait_on_api.name, args=(sizes.mixed_io_latency,))  # noqa: E731
    else:
        cpu_sig = lambda: cpu.count_primes.s(sizes.mixed_cpu_limit)  # noqa: E731
        io_sig = lambda: io.wait_on_api.s(sizes.mixed_io_latency)  # noqa: E731
    # The CPU batch first, so every I/O task is queued while the CPU work is running.
    jobs = [Job(CPU_QUEUE, cpu_sig()) for _ in range(sizes.mixed_cpu_tasks)]
    return jobs + [Job(IO_QUEUE, io_sig()) for _ in range(sizes.mixed_io_tasks)]


def _mixed_row(bench: Bench, sizes: Sizes, variant: str, events: bool) -> dict:
    default = variant.startswith("default")
    if default:
        specs = [untuned(bench, sizes, "prefork", cores(), "celery", events)]
    else:
        specs = [template_cpu(bench, sizes, events), template_io(bench, sizes, events)]
    jobs = _mixed_jobs(sizes, default)
    label = f"mixed {variant} events={'on' if events else 'off'}"
    serial = sizes.mixed_cpu_tasks * 2 + sizes.mixed_io_tasks * sizes.mixed_io_latency
    result = run_batch(bench, label, specs, jobs, preload=False, timeout=120 + 2 * serial)
    return {
        "variant": variant,
        "events": events,
        **_mixed_figures(sizes, jobs),
        "worker_cpu_s": result["worker_cpu_s"],
        "succeeded": result["succeeded"],
        "n": result["n"],
        "errors": result["errors"],
    }


def _mixed_figures(sizes: Sizes, jobs: list[Job]) -> dict:
    done = [job for job in jobs if job.value is not None]
    if not done:
        return {}
    cpu_work = sum(job.value["cpu_seconds"] for job in done if job.queue == CPU_QUEUE)
    io_lat = latencies([job for job in done if job.queue == IO_QUEUE])
    makespan = max(j.value["finished"] for j in done) - min(j.submitted for j in jobs)
    bound = max(
        cpu_work / cores(), sizes.mixed_io_tasks * sizes.mixed_io_latency / sizes.io_concurrency
    )
    return {
        "makespan_s": round(makespan, 3),
        "cpu_work_s": round(cpu_work, 3),
        "bound_s": round(bound, 3),
        "x_bound": round(makespan / bound, 2) if bound else None,
        "io_task_s": sizes.mixed_io_latency,
        "io_latency_p50_s": round(percentile(io_lat, 50), 3) if io_lat else None,
        "io_latency_p99_s": round(percentile(io_lat, 99), 3) if io_lat else None,
    }


# --- 4. per-task overhead -----------------------------------------------------------------


def overhead(bench: Bench, sizes: Sizes) -> list[dict]:
    rows = []
    for events in sizes.events:
        for variant in ("template io", "untuned gevent", "template cpu", "untuned prefork"):
            rows.append(_overhead_row(bench, sizes, variant, events))
    return rows


def _overhead_row(bench: Bench, sizes: Sizes, variant: str, events: bool) -> dict:
    c = sizes.io_concurrency
    spec, queue, task, usable = {
        "template io": (lambda: template_io(bench, sizes, events), IO_QUEUE, io.noop, 1),
        "untuned gevent": (
            lambda: untuned(bench, sizes, "gevent", c, IO_QUEUE, events),
            IO_QUEUE,
            io.noop,
            1,
        ),
        "template cpu": (lambda: template_cpu(bench, sizes, events), CPU_QUEUE, cpu.noop, cores()),
        "untuned prefork": (
            lambda: untuned(bench, sizes, "prefork", cores(), CPU_QUEUE, events),
            CPU_QUEUE,
            cpu.noop,
            cores(),
        ),
    }[variant]
    jobs = [Job(queue, task.s()) for _ in range(sizes.noop_tasks)]
    label = f"no-op {variant} events={'on' if events else 'off'}"
    result = run_batch(
        bench, label, [spec()], jobs, preload=True, timeout=60 + sizes.noop_tasks / 20
    )
    per_task = result["cpu_ms_per_task"] / 1000
    # One gevent process runs on at most one core; prefork's processes on all of them.
    ceiling = round(min(usable, cores()) / per_task, 1) if per_task else None
    return {"variant": variant, "events": events, "cpu_bound_tasks_per_s": ceiling, **result}


# --- 5. the metrics exporter's own CPU ---------------------------------------------------


def exporter(bench: Bench, sizes: Sizes) -> list[dict]:
    """The io batch of scenario 1 (events on) with the exporter (metrics.py) consuming its events."""
    port = procs.free_port()
    module = "{{ cookiecutter.package }}.metrics"
    argv = [sys.executable, "-m", module, "--port", str(port)]
    env = bench.env(TASK_EVENTS=True)
    with (bench.logdir / "exporter.log").open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        procs.wait_until(lambda: procs.port_open(port), 90, "exporter")
        before = procs.cpu_seconds(proc.pid)
        row = _io_row(bench, sizes, sizes.io_latency, True, "template io")
        cpu = procs.cpu_seconds(proc.pid) - before
        counted = _succeeded_counted(port)
    finally:
        procs.stop(proc)
    return [
        {
            **row,
            "variant": "template io + exporter",
            "exporter_cpu_s": round(cpu, 3),
            "exporter_cpu_ms_per_task": round(1000 * cpu / max(1, row["n"]), 3),
            # Its own count of the batch, from the buffered events: equal to n when none is lost.
            "exporter_counted": counted,
        }
    ]


def _succeeded_counted(port: int) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return round(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "celery_tasks_total" and sample.labels.get("state") == "succeeded"
        )
    )


# --- 7. soak: both workers, a long run end to end ------------------------------------------


def soak(bench: Bench, sizes: Sizes) -> list[dict]:
    """``soak_tasks`` no-ops per queue through both template workers (events and results on),
    published while they run: end-to-end throughput, first publish to last finish."""
    n = sizes.soak_tasks
    jobs = [Job(CPU_QUEUE, cpu.noop.s()) for _ in range(n)]
    jobs += [Job(IO_QUEUE, io.noop.s()) for _ in range(n)]
    specs = [template_cpu(bench, sizes, True), template_io(bench, sizes, True)]
    result = run_batch(bench, "soak", specs, jobs, preload=False, timeout=600 + n / 10)
    done = [job for job in jobs if job.value is not None]
    span = max(j.value["finished"] for j in done) - min(j.submitted for j in jobs) if done else 0
    return [
        {
            "variant": "template cpu + io",
            "events": True,
            **result,
            "end_to_end_s": round(span, 1),
            "end_to_end_tasks_per_s": round(len(done) / span, 1) if span > 0 else None,
        }
    ]


SCENARIOS = {
    "io": io_throughput,
    "memory": memory,
    "mixed": mixed,
    "overhead": overhead,
    "publish": publish_cost,
    "exporter": exporter,
    "soak": soak,
{% if cookiecutter.web_api == "fastapi" %}    "enqueue": enqueue,
{% endif %}}
