"""bench/upstream.py, the tests' HTTP upstream: its flaky endpoint counts per key, memory bounded."""

from __future__ import annotations

import json

from bench import upstream


def call(path: str, query: str = "") -> tuple[str, dict, dict]:
    answer = {}

    def start_response(status, headers):
        answer.update(status=status, headers=dict(headers))

    body = b"".join(upstream.app({"PATH_INFO": path, "QUERY_STRING": query}, start_response))
    return answer["status"], answer["headers"], json.loads(body)


def test_flaky_fails_k_times_then_answers_and_counts_past_the_kept_times(monkeypatch):
    monkeypatch.setattr(upstream, "HITS", type(upstream.HITS)())
    monkeypatch.setattr(upstream, "MAX_HITS", 3)
    statuses = [call("/flaky/a", "fail=2&status=503&retry_after=4")[0] for _ in range(5)]
    assert statuses == ["503 Failing on purpose"] * 2 + ["200 OK"] * 3
    assert call("/flaky/a", "fail=2")[2] == {"key": "a", "call": 6}  # counted beyond MAX_HITS
    assert len(call("/hits/a")[2]["hits"]) == 3  # the last three arrival times
    assert call("/flaky/b", "fail=1&retry_after=4")[1]["Retry-After"] == "4"
    assert call("/hits/unknown")[2] == {"hits": []}


def test_keys_are_forgotten_oldest_first_past_max_keys(monkeypatch):
    monkeypatch.setattr(upstream, "HITS", type(upstream.HITS)())
    monkeypatch.setattr(upstream, "MAX_KEYS", 100)
    for n in range(250):
        call(f"/flaky/k{n}", "fail=0")
    call("/flaky/k150", "fail=0")  # used again: now the newest
    for n in range(250, 260):
        call(f"/flaky/k{n}", "fail=0")
    assert len(upstream.HITS) == 100
    assert "k150" in upstream.HITS and "k151" not in upstream.HITS
    assert list(upstream.HITS)[-1] == "k259"


def test_bad_flaky_parameters_are_one_clear_error():
    status, _, body = call("/flaky/x", "status=700")
    assert status == "400 Bad Request"
    assert body == {"error": "status must be an integer from 400 to 599"}
