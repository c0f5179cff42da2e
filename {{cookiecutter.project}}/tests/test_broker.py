"""The transport's delivery fixes (broker.py), against real Redis."""

import base64
import json
import threading
import time

import pytest
import redis
from kombu import Connection, Exchange, Queue

from {{ cookiecutter.package }} import broker
from {{ cookiecutter.package }}.broker import REJECTED_KEY, Transport

# As the app configures it: one list per queue, which lets the worker take with BLMOVE.
OPTIONS = {"priority_steps": [0]}


def connect(url: str) -> Connection:
    return Connection(url, transport=Transport, transport_options=OPTIONS)


def publish(conn: Connection, queue: Queue, *bodies) -> None:
    producer = conn.Producer(conn.default_channel)
    for body in bodies:
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue])  # fmt: skip


def consume(conn: Connection, queue: Queue, no_ack: bool = False, wait: float = 5) -> list:
    got = []
    with conn.Consumer(queue, callbacks=[lambda body, m: got.append(m)], no_ack=no_ack):
        conn.drain_events(timeout=wait)
    return got


def test_message_taken_as_redis_restarts_is_still_recorded(private_redis):
    """The gap kombu leaves between taking a message and recording it as unacknowledged."""
    queue = Queue("gap", Exchange("gap"), routing_key="gap")
    with Connection(private_redis.url, transport=Transport) as conn:
        channel = conn.channel()
        conn.Producer(channel).publish(
            {"n": 1}, exchange=queue.exchange, routing_key="gap", declare=[queue]
        )
        message = channel.Message(channel._get("gap"), channel=channel)  # taken off the list
        private_redis.stop()
        restart = threading.Timer(1.5, private_redis.start)
        restart.start()
        try:
            channel.qos.append(message, message.delivery_tag)  # kombu's own QoS raises here
        finally:
            restart.join()
        client = redis.Redis.from_url(private_redis.url)
        assert client.hexists("unacked", message.delivery_tag)
        assert client.llen("gap") == 0
        # Unacknowledged, it goes back to the queue: at least once, not lost.
        channel.qos.restore_unacked()
        assert client.llen("gap") == 1


def test_tasks_settled_after_the_connection_is_lost(private_redis):
    """A channel closing while Redis is down, and a task acknowledged on it afterwards:
    kombu's own transport raised out of the worker at either point."""
    queue = Queue("lost", Exchange("lost"), routing_key="lost")
    with Connection(private_redis.url, transport=Transport) as conn:
        channel = conn.channel()
        producer = conn.Producer(channel)
        for n in (1, 2):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="lost", declare=[queue])
        done, unfinished = channel.basic_get("lost"), channel.basic_get("lost")
        private_redis.stop()
        channel.close()  # tries to put both back on the queue
        done.ack()  # finished after the loss
    private_redis.start()
    with Connection(private_redis.url, transport=Transport) as conn:
        conn.channel()  # the next channel settles both
    client = redis.Redis.from_url(private_redis.url)
    assert client.hlen("unacked") == 0
    queued = [json.loads(raw)["body"] for raw in client.lrange("lost", 0, -1)]
    assert [json.loads(base64.b64decode(body)) for body in queued] == [unfinished.payload]


def test_taken_then_recorded_in_one_transaction(private_redis):
    """A worker takes a message into <queue>.taken and, recording it as unacknowledged,
    removes it from there: no moment where the message is in neither place."""
    queue = Queue("one", Exchange("one"), routing_key="one")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        channel = conn.default_channel
        seen = {}
        record = channel.qos.append

        def append(message, tag):  # the moment between the two commands
            seen["taken"], seen["queued"] = client.llen("one.taken"), client.llen("one")
            return record(message, tag)

        channel.qos.append = append
        (message,) = consume(conn, queue)
        assert seen == {"taken": 1, "queued": 0}
        assert client.llen("one.taken") == 0 and client.hexists("unacked", message.delivery_tag)
        message.ack()
    assert client.hlen("unacked") == 0


def test_redis_restart_between_take_and_record(private_redis):
    """The gap that lost 1 of 2,000 tasks in kombu's transport, on the worker's own path."""
    queue = Queue("gap2", Exchange("gap2"), routing_key="gap2")
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        channel, restart = conn.default_channel, threading.Timer(1.5, private_redis.start)
        record = channel.qos.append

        def append(message, tag):
            private_redis.stop()
            restart.start()
            return record(message, tag)

        channel.qos.append = append
        try:
            (message,) = consume(conn, queue)
        finally:
            restart.join()
        client = redis.Redis.from_url(private_redis.url)
        assert client.llen("gap2.taken") == 0 and client.llen("gap2") == 0
        assert client.hexists("unacked", message.delivery_tag)
    # Closed without an ack (the worker went away): back on the queue, not lost.
    assert client.llen("gap2") == 1 and client.hlen("unacked") == 0


def test_entry_left_in_taken_goes_back_after_the_grace(private_redis, monkeypatch):
    """A worker killed (or a reply lost) between taking and recording leaves the message in
    <queue>.taken: a sweep puts it back once it has stayed there TAKEN_GRACE seconds."""
    queue = Queue("left", Exchange("left"), routing_key="left")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 7})
        client.lmove("left", "left.taken", "RIGHT", "LEFT")  # as BLMOVE, then the worker dies
        monkeypatch.setattr(broker, "SWEEP_EVERY", 0)
        monkeypatch.setattr(broker, "TAKEN_SEEN", {})
        with conn.Consumer(queue, callbacks=[]):
            channel = conn.default_channel
            channel.sweep_taken()  # first seen now: too young to put back
            assert (client.llen("left.taken"), client.llen("left")) == (1, 0)
            monkeypatch.setattr(broker, "TAKEN_GRACE", 0)
            channel.sweep_taken()
            assert (client.llen("left.taken"), client.llen("left")) == (0, 1)
        (message,) = consume(conn, queue)
        assert message.payload == {"n": 7}


def test_grace_is_not_restarted_by_a_reconnect(private_redis, monkeypatch):
    """Each reconnect makes a new channel; the time an entry was first seen must carry over,
    or a worker reconnecting more often than TAKEN_GRACE would never put it back."""
    queue = Queue("again", Exchange("again"), routing_key="again")
    client = redis.Redis.from_url(private_redis.url)
    client.lpush("again.taken", "{}")
    monkeypatch.setattr(broker, "SWEEP_EVERY", 0)
    monkeypatch.setattr(broker, "TAKEN_SEEN", {})
    monkeypatch.setattr(broker, "TAKEN_GRACE", 0.5)
    for _ in range(2):
        with connect(private_redis.url) as conn, conn.Consumer(queue, callbacks=[]):
            conn.default_channel.sweep_taken()
        time.sleep(0.6)
    assert client.lrange("again", 0, -1) == [b"{}"] and client.llen("again.taken") == 0


def test_busy_worker_sweeps_between_takes(private_redis, monkeypatch):
    """kombu's restore hook runs only when a worker without an event loop is idle; the taken
    list is also swept before a take, so a worker that is never idle still puts entries back."""
    queue = Queue("busy", Exchange("busy"), routing_key="busy")
    client = redis.Redis.from_url(private_redis.url)
    monkeypatch.setattr(broker, "SWEEP_EVERY", 0)
    monkeypatch.setattr(broker, "TAKEN_GRACE", 0)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": "stuck"}, {"n": "next"})
        client.lmove("busy", "busy.taken", "RIGHT", "LEFT")
        # One message per drain: every take returns at once, the restore hook never runs.
        got = consume(conn, queue) + consume(conn, queue)
        assert [m.payload["n"] for m in got] == ["stuck", "next"]
        assert client.llen("busy.taken") == 0


@pytest.mark.parametrize("body", ["this is not JSON", "[1, 2]"])
def test_rejected_entry_leaves_nothing_in_taken(private_redis, body):
    queue = Queue("bad", Exchange("bad"), routing_key="bad")
    client = redis.Redis.from_url(private_redis.url)
    client.lpush("bad", body)
    with connect(private_redis.url) as conn:
        assert consume(conn, queue) == []
    assert client.lrange(REJECTED_KEY, 0, -1) == [body.encode()]
    assert client.llen("bad.taken") == 0 and client.llen("bad") == 0


def test_no_ack_consumers_use_plain_brpop(private_redis):
    """Nothing records a no_ack message, so it must not go through <queue>.taken (replies to
    `celery inspect` would pile up there)."""
    queue = Queue("replies", Exchange("replies"), routing_key="replies")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue, no_ack=True)
    assert message.payload == {"n": 1}
    assert client.keys("*.taken") == [] and client.hlen("unacked") == 0


def test_the_stacks_workers_take_with_blmove(redis_url, workers, run_producer):
    """The workers run broker.py's path: BLMOVE, never kombu's BRPOP."""
    client = redis.Redis.from_url(redis_url)

    def calls(command: str) -> int:
        return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)

    before = calls("blmove"), calls("brpop")
    proc = run_producer("--cpu", "2", "--io", "4", "--cpu-limit", "1000", "--io-delay", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blmove, brpop = calls("blmove") - before[0], calls("brpop") - before[1]
    # Idle workers poll with BLMOVE too, so its count alone proves little: no BRPOP does.
    assert blmove > 0 and brpop == 0, (blmove, brpop)


ENTRIES = ["this is not JSON", "[1, 2]", '{"body": "no properties"}']


def test_entries_that_are_not_messages_are_kept_aside_and_workers_go_on(
    redis_url, workers, run_producer
):
    client = redis.Redis.from_url(redis_url)
    client.delete(REJECTED_KEY)
    for queue in ("cpu", "io"):
        client.lpush(queue, *ENTRIES)
    proc = run_producer("--cpu", "2", "--io", "4", "--cpu-limit", "1000", "--io-delay", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(worker.proc.poll() is None for worker in workers.values())
    kept = [raw.decode() for raw in client.lrange(REJECTED_KEY, 0, -1)]
    assert sorted(kept) == sorted(ENTRIES * 2)
    for worker in workers.values():
        assert worker.log.read_text().count("rejected a queue entry") >= 3
