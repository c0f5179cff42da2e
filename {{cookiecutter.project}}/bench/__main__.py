"""Run the benchmark against real Redis and real workers started here as local processes.

    python -m bench                 # full run, every scenario
    python -m bench --scenarios soak   # 100,000 no-ops through both workers, end to end
    python -m bench --smoke         # tiny batches, for CI
    python -m bench --scenarios io,mixed
    python -m bench --stack [--smoke]     # the running compose stack's own workers instead

Writes bench-results.json and bench-results.png to --out (--stack: bench-stack.json).
Exit status 1 if any task failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import procs

{% if cookiecutter.web_api == "fastapi" %}NAMES = ("io", "memory", "mixed", "overhead", "publish", "exporter", "soak", "enqueue")
{% else %}NAMES = ("io", "memory", "mixed", "overhead", "publish", "exporter", "soak")
{% endif %}PROJECT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny batches: checks it runs, not speed"
    )
    parser.add_argument(
        "--scenarios", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(), help="folder for bench-results.json/.png"
    )
    parser.add_argument(
        "--stack",
        action="store_true",
        help="measure the workers of the running compose stack (make up) instead of local ones",
    )
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown or not chosen:
        parser.error(
            f"--scenarios: unknown {', '.join(unknown) or '(empty)'}; accepted: {', '.join(NAMES)}"
        )
    args.scenarios = [name for name in NAMES if name in chosen]
    return args


def clean_environment() -> dict[str, str]:
    """The caller's environment without the stack's knobs: each run sets what it compares.

    The project folder goes on PYTHONPATH: the untuned workers import ``bench.untuned``,
    which is not part of the installed package.
    """
    from {{ cookiecutter.package }}.settings import Settings

    knobs = {name.upper() for name in Settings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in knobs}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    return env


def require_matplotlib() -> None:
    # Checked first: finding it missing after a ten-minute run would waste the run.
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("matplotlib is missing: uv sync --group bench") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stack:
        return run_stack(args)
    require_matplotlib()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    redis_proc, redis_url = procs.start_redis(workdir)
    api_proc = None
    try:
        # Before any import of the Celery app, which reads its settings at import time.
        base = clean_environment()
        os.environ.update(REDIS_URL=redis_url, LOG_LEVEL="INFO")
        api_proc, api_url = procs.start_upstream()
        os.environ["DEMO_API_URL"] = api_url
        base.update(REDIS_URL=redis_url, DEMO_API_URL=api_url, LOG_LEVEL="INFO")
        ok = _run(args, base, redis_url, api_url, workdir)
    finally:
        if api_proc is not None:
            procs.stop(api_proc)
        procs.stop(redis_proc)
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"worker logs kept in {workdir}")
    return 0 if ok else 1


def _run(args, base: dict[str, str], redis_url: str, api_url: str, workdir: Path) -> bool:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from bench import report, scenarios, targets
    from bench.runs import Bench

    sizes = scenarios.SMOKE if args.smoke else scenarios.FULL
    # Wide tables also when the output goes to a file or CI log.
    console = Console(width=None if sys.stdout.isatty() else 200)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    results, started = {}, time.time()
    with Progress(*columns, console=console) as progress:
        bench = Bench(redis_url, api_url, workdir, progress, base)
        for name in args.scenarios:
            results[name] = scenarios.SCENARIOS[name](bench, sizes)
    checked = targets.evaluate(results, sizes)
    report.print_tables(console, results, checked)
    document = {
        "machine": machine(redis_url),
        "mode": "smoke" if args.smoke else "full",
        "elapsed_s": round(time.time() - started, 1),
        "sizes": asdict(sizes),
        "results": results,
        "targets": checked,
    }
    report.write_json(args.out / "bench-results.json", document)
    report.write_chart(args.out / "bench-results.png", results)
    console.print(f"wrote {args.out / 'bench-results.json'} and {args.out / 'bench-results.png'}")
    return all(row.get("succeeded") == row.get("n") for rows in results.values() for row in rows)


def run_stack(args: argparse.Namespace) -> int:
    """bench/stack.py in a one-off container of the stack (the producer service's image and
    network, bench/ mounted): it reaches Redis, which the stack does not publish."""
    from rich.console import Console

    from bench import report

    argv = ["docker", "compose", "run", "--rm", "--no-deps", "-T", "--entrypoint", "python"]
    argv += ["-v", f"{PROJECT / 'bench'}:/bench-src/bench:ro", "-e", "PYTHONPATH=/bench-src"]
    # As Redis's admin user: it asks each worker its concurrency (a control broadcast and its
    # reply queue), which the producer role may not (docs/secrets.md).
    admin = PROJECT / "secrets" / "redis_password"
    argv += ["-e", "REDIS_USER=default", "-v", f"{admin}:/run/secrets/redis_password:ro"]
    argv += ["producer", "-m", "bench.stack", *(["--smoke"] if args.smoke else [])]
    proc = subprocess.run(argv, cwd=PROJECT, stdout=subprocess.PIPE, text=True, check=False)
    if not proc.stdout.strip():
        return proc.returncode or 1
    document = json.loads(proc.stdout)
    console = Console(width=None if sys.stdout.isatty() else 200)
    report.print_tables(console, document["results"], [])
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "bench-stack.json", document)
    return proc.returncode


def machine(redis_url: str) -> dict:
    import celery
    import gevent
    import redis

    from bench.runs import cores

    server = redis.Redis.from_url(redis_url).info("server")
    return {
        "cores": cores(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "gevent": gevent.__version__,
        "redis_py": redis.__version__,
        "redis_server": server.get("redis_version"),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
