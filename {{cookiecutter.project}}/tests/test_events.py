"""Buffered task events (events.py): a real gevent worker, real Redis, Celery's own receiver."""

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from celery_redis_reliable.events import BufferedTaskEvents

from conftest import Worker, make_client, stop, wait_until, with_redis

WAIT_ON_API = "{{ cookiecutter.package }}.tasks.io.wait_on_api"
STATES = ("task-received", "task-started", "task-succeeded")


@pytest.fixture
def client(private_redis) -> Iterator[Celery]:
    """A producer and event monitor of the test's own Redis."""
    client = make_client(private_redis.url)
    yield client
    client.close()


class EventLog:
    """Every event seen on the broker, by type: task ids for task events, hostnames else."""

    def __init__(self, client: Celery):
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.receiver = None
        self.thread = threading.Thread(target=self._run, args=(client,), daemon=True)
        self.thread.start()

    def _run(self, client: Celery) -> None:
        with client.connection_for_read() as conn:
            self.receiver = client.events.Receiver(conn, handlers={"*": self._on_event})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict) -> None:
        self.seen[event["type"]].add(event.get("uuid") or event["hostname"])

    def has_all(self, ids: list[str], states=STATES) -> bool:
        return all(set(ids) <= self.seen[state] for state in states)

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


def start_io_worker(client: Celery, env: dict, tmp_path, **extra: str) -> tuple[Worker, EventLog]:
    events = EventLog(client)
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = {**with_redis(env, client.conf.broker_url, secrets), "IO_POOL": "gevent", **extra}
    worker = Worker("io", env, tmp_path)
    wait_until(worker.ready, 60, "io worker")
    # Subscribed once the worker's own heartbeat shows up: no later event can be missed.
    wait_until(lambda: events.seen["worker-heartbeat"], 30, "event receiver")
    return worker, events


def send(client: Celery, count: int, seconds: float) -> list[str]:
    with client.producer_or_acquire() as producer:
        return [
            client.send_task(WAIT_ON_API, (seconds,), producer=producer).id for _ in range(count)
        ]


def publishes(url: str) -> int:
    stats = redis.Redis.from_url(url).info("commandstats")
    return stats.get("cmdstat_publish", {}).get("calls", 0)


def test_every_task_event_arrives_in_batches(private_redis, client, stack_env, tmp_path):
    worker, events = start_io_worker(client, stack_env, tmp_path)
    try:
        before = publishes(private_redis.url)
        ids = send(client, 300, 0)
        wait_until(lambda: events.has_all(ids), 120, "every task event")
        # Storing a result is one PUBLISH per task; its 3 events were 3 more before the buffer.
        event_publishes = publishes(private_redis.url) - before - len(ids)
        assert event_publishes < len(ids) / 2
    finally:
        stop(worker.proc)
        events.close()


def test_shutdown_flushes_the_last_events(private_redis, client, stack_env, tmp_path):
    # No periodic flush during the test: only the buffer limit (24) and the shutdown send.
    worker, events = start_io_worker(client, stack_env, tmp_path, TASK_EVENTS_FLUSH_INTERVAL="60")
    try:
        ids = send(client, 20, 3)
        wait_until(lambda: worker.log.read_text().count("] received") == len(ids), 60, "tasks")
        # Warm shutdown while they run: 60 events, 48 sent by the buffer limit at most.
        stop(worker.proc, timeout=60)
        assert worker.proc.returncode == 0, worker.log.read_text()
        deadline = time.monotonic() + 10
        while not events.has_all(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(ids) <= events.seen["task-succeeded"], worker.log.read_text()[-3000:]
    finally:
        stop(worker.proc)
        events.close()


def test_workers_with_an_event_loop_are_left_alone():
    """prefork (and any worker with a hub) already buffers: the step must not touch it."""
    dispatcher = SimpleNamespace(buffer_group=frozenset(), enabled=True)
    consumer = SimpleNamespace(hub=object(), event_dispatcher=dispatcher, timer=None)
    step = BufferedTaskEvents(consumer)
    step.start(consumer)
    assert dispatcher.buffer_group == frozenset() and step.tref is None
