"""Output of a benchmark run: rich tables, bench-results.json and a PNG chart."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

COLUMNS = {
    "io": [
        ("L s", "latency_s"),
        ("variant", "variant"),
        ("events", "events"),
        ("slots", "slots"),
        ("n", "n"),
        ("ok", "succeeded"),
        ("tasks/s", "tasks_per_s"),
        ("bound tasks/s", "bound_tasks_per_s"),
        ("% of bound", "pct_of_bound"),
        ("CPU ms/task", "cpu_ms_per_task"),
    ],
    "memory": [
        ("variant", "variant"),
        ("events", "events"),
        ("slots", "slots"),
        ("PSS idle MiB (floor)", "idle_pss_total_mib"),
        ("PSS loaded MiB", "pss_total_mib"),
        ("per child MiB", "pss_per_child_mib"),
        ("per slot MiB", "pss_per_slot_mib"),
    ],
    "mixed": [
        ("variant", "variant"),
        ("events", "events"),
        ("ok", "succeeded"),
        ("n", "n"),
        ("makespan s", "makespan_s"),
        ("bound s", "bound_s"),
        ("x bound", "x_bound"),
        ("I/O task s", "io_task_s"),
        ("I/O p50 s", "io_latency_p50_s"),
        ("I/O p99 s", "io_latency_p99_s"),
    ],
    "overhead": [
        ("variant", "variant"),
        ("events", "events"),
        ("n", "n"),
        ("ok", "succeeded"),
        ("tasks/s", "tasks_per_s"),
        ("CPU ms/task", "cpu_ms_per_task"),
        ("CPU-bound tasks/s", "cpu_bound_tasks_per_s"),
    ],
    "publish": [
        ("variant", "variant"),
        ("appendfsync", "appendfsync"),
        ("batch", "batch"),
        ("n", "n"),
        ("queued", "succeeded"),
        ("published/s", "tasks_per_s"),
        ("x plain", "x_plain"),
        ("AOF wait ms/batch", "wait_ms_per_batch"),
    ],
    "stack": [
        ("variant", "variant"),
        ("slots", "slots"),
        ("n", "n"),
        ("ok", "succeeded"),
        ("tasks/s", "tasks_per_s"),
        ("bound tasks/s", "bound_tasks_per_s"),
        ("% of bound", "pct_of_bound"),
        ("I/O task s", "io_task_s"),
        ("I/O p50 s", "io_latency_p50_s"),
        ("I/O p99 s", "io_latency_p99_s"),
    ],
    "exporter": [
        ("L s", "latency_s"),
        ("variant", "variant"),
        ("n", "n"),
        ("ok", "succeeded"),
        ("% of bound", "pct_of_bound"),
        ("worker CPU ms/task", "cpu_ms_per_task"),
        ("exporter CPU s", "exporter_cpu_s"),
        ("exporter CPU ms/task", "exporter_cpu_ms_per_task"),
        ("exporter counted", "exporter_counted"),
    ],
{% if cookiecutter.web_api == "fastapi" %}    "enqueue": [
        ("variant", "variant"),
        ("n", "n"),
        ("ok", "succeeded"),
        ("enqueued/s", "tasks_per_s"),
        ("p50 ms", "latency_p50_ms"),
        ("p99 ms", "latency_p99_ms"),
    ],
{% endif %}    "soak": [
        ("variant", "variant"),
        ("n", "n"),
        ("ok", "succeeded"),
        ("end to end s", "end_to_end_s"),
        ("end to end tasks/s", "end_to_end_tasks_per_s"),
        ("worker CPU ms/task", "cpu_ms_per_task"),
    ],
}
TITLES = {
    "io": "1. I/O throughput (bound: N*L/C, i.e. C/L tasks/s)",
    "memory": "2. Memory per concurrency slot (floor: the idle worker)",
    "mixed": "3. Mixed load (bound: max(CPU work / cores, N*L/C))",
    "overhead": "4. Per-task overhead, no-op tasks (bound: usable cores / CPU per task)",
    "publish": "5. Durable publishing: publish rate with and without the WAITAOF wait (median)",
    "stack": "The running stack's own workers (bound: its io slots / L)",
    "exporter": "6. Metrics exporter's own CPU, consuming the events of the io batch",
    "soak": "7. Soak: no-ops through both workers, published while they run (end to end)",
{% if cookiecutter.web_api == "fastapi" %}    "enqueue": "8. Enqueueing: the web API (concurrent clients) against the producer's apply_async",
{% endif %}}


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "-" if value is None else str(value)


def print_tables(console: Console, results: dict, targets: list[dict]) -> None:
    for name, rows in results.items():
        table = Table(title=TITLES[name], title_justify="left")
        for header, _ in COLUMNS[name]:
            table.add_column(header)
        for row in rows:
            table.add_row(*(_cell(row.get(key)) for _, key in COLUMNS[name]))
        console.print(table)
        for row in rows:
            for error in row.get("errors") or []:
                console.print(f"[red]{name} {row['variant']}: {error}[/red]")
    if targets:
        console.print(_targets_table(targets))


def _targets_table(targets: list[dict]) -> Table:
    table = Table(title="Targets (measured, not asserted)", title_justify="left")
    for header in ("target", "events", "measured", "goal", "met"):
        table.add_column(header)
    for t in targets:
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}[t["met"]]
        table.add_row(t["target"], _cell(t["events"]), _cell(t["measured"]), t["goal"], met)
    return table


def write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_chart(path: Path, results: dict) -> None:
    """One panel per scenario that ran; events off and on side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [name for name in PANELS if results.get(name)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for ax, name in zip(axes[:, 0], panels, strict=True):
        PANELS[name](ax, results[name])
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax, labels: list[str], values: list[float | None], ylabel: str, title: str) -> None:
    heights = [v or 0 for v in values]
    bars = ax.bar(
        range(len(labels)),
        heights,
        color=["#4c72b0" if "off" in lb else "#dd8452" for lb in labels],
    )
    ax.bar_label(bars, labels=[_cell(v) for v in values], fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)


def _label(row: dict, *extra: str) -> str:
    return " ".join([*extra, row["variant"], f"events {_cell(row['events'])}"])


def _io_panel(ax, rows):
    """Tasks/s on a log scale, each bar's bound marked: what a reader compares is how many
    tasks each variant ran (gevent hundreds, prefork a few), and how far it is from its limit."""
    labels = [_label(r, f"L={r['latency_s']:g}s") for r in rows]
    title = "1. I/O throughput, tasks/s on a log scale; black line: each variant's bound (C/L)"
    _bars(ax, labels, [r.get("tasks_per_s") for r in rows], "tasks/s (log)", title)
    ax.set_yscale("log")
    for i, row in enumerate(rows):
        ax.hlines(row["bound_tasks_per_s"], i - 0.4, i + 0.4, colors="black", linewidth=1.5)
    ax.plot([], [], color="black", linewidth=1.5, label="bound: slots / L")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(top=3 * max(row["bound_tasks_per_s"] for row in rows))


def _memory_panel(ax, rows):
    _bars(
        ax,
        [_label(r) for r in rows],
        [r.get("pss_per_slot_mib") for r in rows],
        "PSS MiB per slot (log)",
        TITLES["memory"],
    )
    ax.set_yscale("log")


def _mixed_panel(ax, rows):
    _bars(
        ax,
        [_label(r) for r in rows],
        [r.get("makespan_s") for r in rows],
        "makespan s",
        TITLES["mixed"],
    )
    if rows and rows[0].get("bound_s"):
        ax.axhline(rows[0]["bound_s"], color="black", linestyle="--", linewidth=1, label="bound")
        ax.legend(fontsize=7)


def _overhead_panel(ax, rows):
    _bars(
        ax,
        [_label(r) for r in rows],
        [r.get("cpu_ms_per_task") for r in rows],
        "worker CPU ms per task",
        TITLES["overhead"],
    )


def _publish_panel(ax, rows):
    labels = [f"{r['variant']} (batch {r.get('batch')})" for r in rows]
    _bars(ax, labels, [r.get("tasks_per_s") for r in rows], "published/s (log)", TITLES["publish"])
    ax.set_yscale("log")


def _exporter_panel(ax, rows):
    labels = ["worker", "exporter"]
    for row in rows:
        values = [row.get("cpu_ms_per_task"), row.get("exporter_cpu_ms_per_task")]
        _bars(ax, labels, values, "CPU ms per task", TITLES["exporter"])


def _soak_panel(ax, rows):
    labels = [_label(row) for row in rows]
    values = [row.get("end_to_end_tasks_per_s") for row in rows]
    _bars(ax, labels, values, "tasks/s, end to end", TITLES["soak"])


{% if cookiecutter.web_api == "fastapi" %}def _enqueue_panel(ax, rows):
    labels = [row["variant"] for row in rows]
    _bars(ax, labels, [row.get("tasks_per_s") for row in rows], "enqueued/s", TITLES["enqueue"])


{% endif %}PANELS = {
    "io": _io_panel,
    "memory": _memory_panel,
    "mixed": _mixed_panel,
    "overhead": _overhead_panel,
    "publish": _publish_panel,
    "exporter": _exporter_panel,
    "soak": _soak_panel,
{% if cookiecutter.web_api == "fastapi" %}    "enqueue": _enqueue_panel,
{% endif %}}
