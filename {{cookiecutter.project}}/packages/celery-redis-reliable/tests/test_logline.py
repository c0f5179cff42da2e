"""The success line's result text (celery_redis_reliable.logline): the same as Celery's for small
results, bounded without walking a large one; through Celery's own tracer."""

import logging

import pytest
from celery import Celery
from celery.app import trace
from celery.utils.saferepr import saferepr
from celery_redis_reliable import logline
from celery_redis_reliable.logline import bounded_repr


class Spy:
    """Counts how often anything looks at it (a repr walk asks each element for its class)."""

    looks = 0

    @property
    def __class__(self):
        Spy.looks += 1
        return Spy


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        2.5,
        "text",
        b"bytes",
        (1,),
        {"status": 200, "worker": "io@host", "pid": 1234, "started": 1.5, "cpu_seconds": None},
        {"nested": [1, 2, {"a": True}]},
        [],
        {},
    ],
)
def test_a_small_result_reads_as_celery_prints_it(value):
    assert bounded_repr(value) == repr(value) == saferepr(value, 1024)


def test_deep_nesting_is_abbreviated_as_celery_does():
    value = {"deep": [1, {"a": (True, [None])}]}
    assert bounded_repr(value) == saferepr(value, 1024) == "{'deep': [1, {'a': (...)}]}"


@pytest.mark.parametrize(
    "value",
    [
        list(range(100_000)),
        {f"key{i}": "x" * 50 for i in range(10_000)},
        "y" * 1_000_000,
        [[i, {"i": i}] for i in range(10_000)],
        10**5000,  # saferepr raises on it (Python's int-to-text limit)
    ],
    ids=["long list", "large dict", "long str", "nested", "huge int"],
)
def test_a_large_result_is_cut_near_maxsize(value):
    text = bounded_repr(value, 200)
    assert 10 < len(text) <= 260, text
    assert "..." in text or text.startswith("<int of")


def test_a_large_result_is_not_walked_past_what_is_shown():
    large = [*range(1000), *(Spy() for _ in range(1000))]
    Spy.looks = 0
    bounded_repr(large)
    assert Spy.looks == 0
    saferepr(large, 1024)  # Celery's walks the whole value for a kilobyte of text
    assert Spy.looks == 1000


def test_the_tracer_logs_the_bounded_text_once_installed(caplog, monkeypatch):
    monkeypatch.setattr(trace, "saferepr", trace.saferepr)  # undone after the test
    app = Celery(set_as_current=False)
    app.conf.task_always_eager = True

    @app.task
    def big():
        return [*range(100_000), Spy()]

    logline.install()
    Spy.looks = 0
    with caplog.at_level(logging.INFO, logger="celery.app.trace"):
        result = big.apply(task_id="big-1")
    assert result.successful()
    (line,) = [r.getMessage() for r in caplog.records if "succeeded" in r.getMessage()]
    # The format the fault and Swarm suites grep, and what users read.
    assert line.startswith(f"Task {big.name}[big-1] succeeded in ")
    assert line.split("s: ", 1)[1].startswith("[0, 1, 2, ")
    assert len(line) < 1200 and Spy.looks == 0
