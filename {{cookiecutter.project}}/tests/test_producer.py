"""The producer's summary, as pure units: the table at 80 columns, the JSON, its error handling."""

import io
import json

import pytest
from rich.console import Console

from {{ cookiecutter.package }} import producer
from {{ cookiecutter.package }}.producer import Job

# Long names as they occur for real: Kubernetes pod names, Docker container ids.
CPU_WORKERS = ("cpu@task-queue-worker-cpu-7d9f8b6c5-x2k4p", "cpu@3f9c2a1b7d4e")
IO_WORKER = "io@task-queue-worker-io-5c8d7f9b64-qz7wm"


def finished_job(queue: str, worker: str, pool: str, start: float, cpu: float | None) -> Job:
    job = Job(queue, signature=None, submitted=start - 0.25)
    job.value = {"worker": worker, "pool": pool, "queue": queue, "started": start,
                 "finished": start + 12.3456, "cpu_seconds": cpu}  # fmt: skip
    return job


def big_summary() -> dict:
    """The widest realistic figures: a million tasks per queue, two pools on one queue."""
    jobs = [finished_job("cpu", CPU_WORKERS[i % 2], "prefork", 1000.0 + i, 1.5) for i in range(6)]
    jobs += [finished_job("io", IO_WORKER, "gevent", 1000.0 + i, None) for i in range(5)]
    jobs.append(finished_job("io", IO_WORKER, "threads", 1003.0, 0.01))
    jobs.append(Job("io", signature=None, error="HTTPStatusError: GET /delay/1 answered 503"))
    summary = producer.summarize(jobs, started=999.0)
    for queue in summary["queues"].values():
        queue["submitted"] = queue["succeeded"] = 1_000_000
        queue["peak_in_flight"] = 1_000_000
        queue["makespan_s"] = 123456.789
    return summary


def render(summary: dict, width: int = 80) -> list[str]:
    out = io.StringIO()
    producer.print_table(summary, Console(file=out, width=width, color_system=None))
    return out.getvalue().splitlines()


def test_table_fits_80_columns_and_no_cell_wraps():
    summary = big_summary()
    lines = render(summary)
    assert max(map(len, lines)) <= 80, "\n".join(lines)
    assert not any("…" in line for line in lines), "a cell was cut:\n" + "\n".join(lines)
    queues = list(summary["queues"].values())
    for label, show in producer.TABLE_ROWS:
        # A wrapped cell would leave part of its text on the next line.
        cells = [label, *(show(q) for q in queues)]
        assert any(all(cell in line for cell in cells) for line in lines), (cells, lines)


def test_table_names_every_worker_and_error_below_it():
    text = "\n".join(render(big_summary()))
    for worker in CPU_WORKERS:
        assert f"cpu: 3 tasks ran on {worker}" in text
    assert f"io: 6 tasks ran on {IO_WORKER}" in text
    assert "io: 1 x HTTPStatusError: GET /delay/1 answered 503" in text


def test_json_carries_every_figure_the_table_shows():
    summary = json.loads(json.dumps(big_summary()))
    for label, show in producer.TABLE_ROWS:
        for queue in summary["queues"].values():
            assert show(queue), label  # raises KeyError if the JSON lacks the figure
    io_queue = summary["queues"]["io"]
    assert io_queue["workers"] == {IO_WORKER: 6}
    assert io_queue["pools"] == {"gevent": 5, "threads": 1}
    assert io_queue["errors"] == [["HTTPStatusError: GET /delay/1 answered 503", 1]]


def test_cpu_total_is_left_out_when_a_task_could_not_measure_its_own():
    summary = big_summary()
    assert summary["queues"]["cpu"]["cpu_seconds"] == 9.0
    assert summary["queues"]["io"]["cpu_seconds"] is None  # gevent tasks share one clock
    assert "task CPU total: not measured under gevent" in "\n".join(render(summary))


def test_an_unrelated_runtime_error_is_not_reported_as_a_publish_failure(monkeypatch):
    def broken(jobs, **options):
        raise RuntimeError("a bug in user code")

    monkeypatch.setattr(producer, "submit", broken)
    with pytest.raises(RuntimeError, match="a bug in user code"):
        producer.main(["--cpu", "1", "--io", "0"])
