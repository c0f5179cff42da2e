"""The generated project's benchmark, run end to end with tiny batches so it never rots.

Real redis-server and real workers, started by the benchmark itself. Speed is never asserted:
only that every scenario ran every task and reported its figures.
"""

from __future__ import annotations

import json

from conftest import clean_env, generate, run

# Figures each scenario must report as positive numbers, per row.
FIGURES = {
    "io": ("tasks_per_s", "bound_tasks_per_s", "pct_of_bound", "cpu_ms_per_task", "makespan_s"),
    "memory": ("pss_total_mib", "idle_pss_total_mib", "pss_per_slot_mib", "slots"),
    "mixed": ("makespan_s", "bound_s", "x_bound", "io_latency_p50_s", "io_latency_p99_s"),
    "overhead": ("tasks_per_s", "cpu_ms_per_task", "cpu_bound_tasks_per_s"),
    "publish": ("tasks_per_s", "x_plain", "batch"),
    "exporter": ("tasks_per_s", "pct_of_bound", "exporter_cpu_s", "exporter_cpu_ms_per_task"),
    "soak": ("end_to_end_tasks_per_s", "end_to_end_s", "cpu_ms_per_task"),
    "enqueue": ("tasks_per_s", "latency_p50_ms", "latency_p99_ms"),
}
VARIANTS = {
    "io": {"template io", "untuned gevent", "template io x cores", "prefork c=cores"},
    "memory": {"template io (gevent)", "template cpu (prefork)"},
    "mixed": {"template: cpu prefork + io gevent", "default: one prefork worker"},
    "overhead": {"template io", "untuned gevent", "template cpu", "untuned prefork"},
    "publish": {"plain", "durable", "durable, one batch", "plain, appendfsync always"},
    "exporter": {"template io + exporter"},
    "soak": {"template cpu + io"},
    "enqueue": {"api, 4 HTTP clients", "producer (apply_async, one process)"},
}


def test_bench_smoke_reports_every_scenario(tmp_path):
    project = generate(tmp_path)
    env = clean_env()
    run(["uv", "sync", "--locked", "--quiet", "--group", "bench"], cwd=project, env=env)
    out = tmp_path / "results"
    bench = ["uv", "run", "--locked", "--group", "bench", "python", "-m"]
    bench += ["bench", "--smoke", "--out", str(out)]
    proc = run(bench, cwd=project, env=env, timeout=900)

    assert (out / "bench-results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    document = json.loads((out / "bench-results.json").read_text())
    assert document["mode"] == "smoke"
    assert document["machine"]["cores"] >= 1
    assert set(document["results"]) == set(FIGURES)
    for name, rows in document["results"].items():
        assert {row["variant"] for row in rows} == VARIANTS[name], name
        for row in rows:
            assert row["succeeded"] == row["n"] > 0, (name, row)
            assert row["errors"] == [], (name, row)
            for figure in FIGURES[name]:
                value = row.get(figure)
                assert isinstance(value, int | float) and value > 0, (name, row["variant"], figure)
    # The exporter counted every task of its batch from the (buffered) events.
    (exporter,) = document["results"]["exporter"]
    assert exporter["exporter_counted"] == exporter["n"]
    measured = [t for t in document["targets"] if t["measured"] is not None]
    assert len(measured) == len(document["targets"]) >= 9
    assert "Targets" in proc.stdout


def test_bench_rejects_an_unknown_scenario(tmp_path):
    project = generate(tmp_path)
    env = clean_env()
    cmd = ["uv", "run", "--locked", "python", "-m", "bench"]
    proc = run([*cmd, "--scenarios", "io,speed"], cwd=project, env=env, check=False)
    assert proc.returncode == 2
    assert "unknown speed" in proc.stderr


def container_ids(stack, kind: str) -> list[str]:
    return stack.compose("ps", "-q", f"worker-{kind}").stdout.split()


def test_bench_stack_mode_measures_the_running_stacks_workers(compose_stack, tmp_path):
    """--stack: no local workers; the tasks run on the stack's containers, at its concurrency."""
    env = clean_env()
    env["COMPOSE_PROJECT_NAME"] = compose_stack.name
    out = tmp_path / "results"
    cmd = [
        "uv",
        "run",
        "--locked",
        "python",
        "-m",
        "bench",
        "--stack",
        "--smoke",
        "--out",
        str(out),
    ]
    proc = run(cmd, cwd=compose_stack.path, env=env, timeout=900)

    document = json.loads((out / "bench-stack.json").read_text())
    assert document["mode"] == "stack"
    io_slots = document["slots"]["io"]
    assert list(io_slots.values()) == [int(compose_stack.env["IO_CONCURRENCY"])]
    io_row, mixed = document["results"]["stack"]
    for row in (io_row, mixed):
        assert row["succeeded"] == row["n"] > 0 and row["errors"] == [], row
        assert row["tasks_per_s"] > 0
    assert io_row["bound_tasks_per_s"] == sum(io_slots.values()) / io_row["latency_s"]
    assert {w.split("@")[0] for w in mixed["workers"]} == {"cpu", "io"}
    # A container's hostname is the start of its id: the stack's containers ran the tasks.
    expected = {
        f"{kind}@{cid[:12]}" for kind in ("cpu", "io") for cid in container_ids(compose_stack, kind)
    }
    assert set(mixed["workers"]) == expected
    assert "running stack" in proc.stdout
