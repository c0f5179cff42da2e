"""The demo (src/{{ cookiecutter.package }}/demo): its API and its example schedule.

`make delete-demo` deletes this folder with it; the template's tests run the rest of the suite
on a project whose demo was deleted.
"""

from __future__ import annotations

import json

import pytest

from {{ cookiecutter.package }}.celery_app import BEAT_SCHEDULE, app, beat_schedule
from {{ cookiecutter.package }}.demo import api
from {{ cookiecutter.package }}.demo.schedule import DEMO_SCHEDULE


def call(path: str) -> tuple[str, dict]:
    answer = {}
    body = b"".join(api.app({"PATH_INFO": path}, lambda status, headers: answer.update(s=status)))
    return answer["s"], json.loads(body)


def test_delay_answers_after_the_delay_and_healthz_at_once(monkeypatch):
    slept = []
    monkeypatch.setattr(api.gevent, "sleep", slept.append)
    assert call("/delay/0.25") == ("200 OK", {"delayed": 0.25})
    assert call("/healthz") == ("200 OK", {"ok": True})
    assert slept == [0.25]


@pytest.mark.parametrize("path", ["/delay/61", "/delay/-1", "/delay/soon", "/delay/"])
def test_a_delay_out_of_range_is_refused_without_waiting(monkeypatch, path):
    monkeypatch.setattr(api.gevent, "sleep", lambda s: pytest.fail("slept"))
    status, body = call(path)
    assert status == "400 Bad Request" and "0..60" in body["error"]
    assert call("/nothing")[0] == "404 Not Found"


def test_demo_entries_are_added_only_with_demo_true_one_per_pool():
    app.loader.import_default_modules()
    assert beat_schedule(False) == BEAT_SCHEDULE
    with_demo = beat_schedule(True)
    assert set(DEMO_SCHEDULE) <= set(with_demo)
    queues = set()
    for name in DEMO_SCHEDULE:
        task = with_demo[name]["task"]
        assert task in app.tasks, name
        queues.add(app.amqp.router.route({}, task)["queue"].name)
    assert queues == {"cpu", "io"}  # an example for each pool
