"""The transport's delivery fixes (celery_redis_reliable.transport), against a real redis-server."""

import base64
import json
import logging
import threading
import time

import pytest
import redis
from celery_redis_reliable import guard
from celery_redis_reliable import transport as broker
from celery_redis_reliable.testing import wait_until
from celery_redis_reliable.transport import REJECTED_KEY, Transport
from kombu import Connection, Exchange, Queue

# As the generated app configures it: one list per queue, which lets the worker take with BLMOVE.
OPTIONS = {"priority_steps": [0]}


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch) -> None:
    """Each test starts with nothing deferred or seen, as a new worker process would."""
    monkeypatch.setattr(broker, "STATE", broker.ProcessState())


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
        done, _unfinished = channel.basic_get("lost"), channel.basic_get("lost")
        private_redis.stop()
        channel.close()  # tries to put both back on the queue
        done.ack()  # finished after the loss
    private_redis.start()
    with Connection(private_redis.url, transport=Transport) as conn:
        conn.channel()  # the next channel settles both
    client = redis.Redis.from_url(private_redis.url)
    assert client.hlen("unacked") == 0
    # Redis restarted in between: the finished one runs again too, as a crash could have lost
    # its result (see the next tests).
    assert sorted(n["n"] for n in queued_bodies(client, "lost")) == [1, 2]


def queued_bodies(client: redis.Redis, queue: str) -> list:
    return [
        json.loads(base64.b64decode(json.loads(raw)["body"])) for raw in client.lrange(queue, 0, -1)
    ]


def test_an_ack_after_a_redis_restart_puts_the_message_back(private_redis):
    """With appendfsync everysec a crash loses Redis's last second of writes: the task's result
    can be gone while its ack, retried or deferred past the restart, still removes the record
    (1 of 2,000 lost in a kill -9 fault row). An ack in a later run of redis-server than the
    record must put the message back instead. Here the channel's pool reconnects unnoticed."""
    queue = Queue("crash", Exchange("crash"), routing_key="crash")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1}, {"n": 2})
        first, second = consume(conn, queue), consume(conn, queue)
        first[0].ack()  # same run of Redis: forgotten
        assert (client.llen("crash"), client.hlen("unacked")) == (0, 1)
        private_redis.stop()
        private_redis.start()
        wait_until(lambda: redis_answers(client), 30, "redis-server loading its AOF")
        second[0].ack()  # on the same channel, after the restart
        assert client.hlen("unacked") == 0
        assert queued_bodies(client, "crash") == [{"n": 2}]
    with connect(private_redis.url) as conn:  # the worker reconnects: its poll lost Redis
        (again,) = consume(conn, queue)
        again.ack()  # its new record is of this run: forgotten
    assert (client.llen("crash"), client.hlen("unacked")) == (0, 0)


def test_an_ack_deferred_while_redis_answers_again_without_a_restart_forgets(
    private_redis, monkeypatch
):
    """The same run of redis-server (a dropped connection, not a restart): the deferred ack
    removes the record, and the task does not run again."""
    queue = Queue("blip", Exchange("blip"), routing_key="blip")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue)
        qos = conn.default_channel.qos
        forget = qos.forget

        def blip(*args):
            raise redis.ConnectionError("Connection reset by peer")

        monkeypatch.setattr(qos, "forget", blip)
        message.ack()  # deferred
        monkeypatch.setattr(qos, "forget", forget)
        assert client.hlen("unacked") == 1 and len(broker.STATE.acks) == 1
        broker.STATE.settle(qos)
    assert (client.llen("blip"), client.hlen("unacked"), broker.STATE.acks) == (0, 0, set())


def test_redis_without_info_for_scripts_keeps_acks_as_they_were(private_redis, caplog):
    """INFO renamed away (some managed Redis): no life to compare, so an ack forgets as kombu's
    does, with one warning saying what that risks."""
    private_redis.stop()
    private_redis.config += 'rename-command INFO ""\n'
    private_redis.start()
    queue = Queue("noinfo", Exchange("noinfo"), routing_key="noinfo")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1}, {"n": 2})
        for _ in range(2):
            (message,) = consume(conn, queue)
            message.ack()
    assert (client.llen("noinfo"), client.hlen("unacked")) == (0, 0)
    assert caplog.text.count("Redis refuses INFO to scripts") == 1


@pytest.mark.parametrize("info", [True, False], ids=["info", "no-info"])
def test_a_late_ack_leaves_the_redelivered_copy_recorded(private_redis, monkeypatch, info):
    """The other order (review 2026-12-02, D1): a long task's ack, deferred on the channel
    that closed while Redis was away, is settled only after its message went back and another
    worker recorded the copy under the same delivery tag. The ack must not remove that record:
    the copy would then live only in the second worker's memory, lost when it stops. Without
    INFO for scripts (no restart seen), the record's score alone tells the deliveries apart."""
    if not info:
        private_redis.stop()
        private_redis.config += 'rename-command INFO ""\n'
        private_redis.start()
    queue = Queue("dup", Exchange("dup"), routing_key="dup")
    client = redis.Redis.from_url(private_redis.url)
    state_a, state_b = broker.ProcessState(), broker.ProcessState()  # two worker processes
    monkeypatch.setattr(broker, "STATE", state_a)
    a = connect(private_redis.url)
    publish(a, queue, {"n": 1})
    (original,) = consume(a, queue)
    private_redis.stop()
    a.default_channel.close()  # Redis away: the put-back is deferred
    private_redis.start()
    a2 = connect(private_redis.url)
    assert a2.default_channel  # built, it settles: the message is back on the queue
    assert client.llen("dup") == 1
    monkeypatch.setattr(broker, "STATE", state_b)
    b = connect(private_redis.url)
    (copy,) = consume(b, queue)  # worker B runs the copy, recorded under the same tag
    assert copy.delivery_tag == original.delivery_tag
    monkeypatch.setattr(broker, "STATE", state_a)
    original.ack()  # the first run finishes: its channel is closed, the ack is deferred
    state_a.settle(a2.default_channel.qos)
    assert client.hexists("unacked", copy.delivery_tag), "the late ack removed B's record"
    monkeypatch.setattr(broker, "STATE", state_b)
    b.default_channel.qos.restore_unacked()  # B stops (soft shutdown): the copy goes back
    assert client.llen("dup") == 1 and client.hlen("unacked") == 0
    for conn in (a2, b):
        conn.release()


def test_a_late_ack_of_the_same_process_keeps_its_own_newer_copy(private_redis):
    """As above, with the copy taken by the same process (a reconnected worker takes its own
    message again): the first delivery's ack does not remove the second delivery's record."""
    queue = Queue("again", Exchange("again"), routing_key="again")
    client = redis.Redis.from_url(private_redis.url)
    a = connect(private_redis.url)
    publish(a, queue, {"n": 1})
    (original,) = consume(a, queue)
    private_redis.stop()
    a.default_channel.close()
    private_redis.start()
    a2 = connect(private_redis.url)
    (copy,) = consume(a2, queue)  # the put-back was settled by this channel, then taken
    original.ack()
    broker.STATE.settle(a2.default_channel.qos)
    assert client.hexists("unacked", copy.delivery_tag), "the late ack removed the copy"
    copy.ack()  # the copy's own ack removes it
    assert client.hlen("unacked") == 0 and client.llen("again") == 0
    a2.release()


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


@pytest.mark.parametrize("requeue", [True, False])
def test_reject_settles_on_a_live_channel(private_redis, requeue):
    """kombu's Message.reject passes requeue by keyword (a killed prefork child's task)."""
    queue = Queue("rej", Exchange("rej"), routing_key="rej")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue)
        message.reject(requeue=requeue)
    assert client.hlen("unacked") == 0
    assert client.llen("rej") == int(requeue)


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


# Each changes if parsed and serialized again: only the entry as it was matches.
BAD_ENTRIES = [b"this is not JSON", b"[1,2]", b'{"body":"no properties"}', b"\xff\xfe not UTF-8"]


@pytest.mark.parametrize("entry", BAD_ENTRIES)
def test_rejected_entry_is_kept_as_it_was_and_leaves_nothing_in_taken(private_redis, entry):
    queue = Queue("bad", Exchange("bad"), routing_key="bad")
    client = redis.Redis.from_url(private_redis.url)
    client.lpush("bad", entry)
    with connect(private_redis.url) as conn:
        assert consume(conn, queue) == []
    assert client.lrange(REJECTED_KEY, 0, -1) == [entry]
    assert client.llen("bad.taken") == 0 and client.llen("bad") == 0


def test_a_huge_rejected_entry_is_kept_cut_short(private_redis):
    queue = Queue("huge", Exchange("huge"), routing_key="huge")
    client = redis.Redis.from_url(private_redis.url)
    client.lpush("huge", b"x" * 3 * broker.REJECTED_MAX_BYTES)
    with connect(private_redis.url) as conn:
        assert consume(conn, queue) == []
    assert client.lrange(REJECTED_KEY, 0, -1) == [b"x" * broker.REJECTED_MAX_BYTES]


def test_no_ack_consumers_use_plain_brpop(private_redis, caplog):
    """Nothing records a no_ack message, so it must not go through <queue>.taken (replies to
    `celery inspect` would pile up there). Said at INFO: `celery inspect` prints warnings."""
    caplog.set_level(logging.INFO, logger=broker.logger.name)
    queue = Queue("replies", Exchange("replies"), routing_key="replies")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue, no_ack=True)
    assert message.payload == {"n": 1}
    assert client.keys("*.taken") == [] and client.hlen("unacked") == 0
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "kombu's BRPOP, no taken list, for a consumer with no acknowledgements "
         "(nothing to record)"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"priority_steps": [0, 5]}, "priorities (priority_steps other than [0]"),
        ({"priority_steps": [0], "global_keyprefix": "app:"}, "a global_keyprefix"),
    ],
)
def test_one_queue_on_kombus_path_warns_once_why(private_redis, caplog, options, reason):
    queue = Queue("plain", Exchange("plain"), routing_key="plain")
    client = redis.Redis.from_url(private_redis.url)
    with Connection(private_redis.url, transport=Transport, transport_options=options) as conn:
        publish(conn, queue, {"n": 1}, {"n": 2})
        got = consume(conn, queue) + consume(conn, queue)
    assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
    assert client.keys("*.taken") == []
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"kombu's BRPOP, no taken list, for a consumer with {reason}")


def test_entry_put_back_before_its_record_is_not_run_here(private_redis, monkeypatch):
    """A sweep put the entry back while this worker's reply waited (e.g. parked while its
    prefetch was full): the record finds it gone, and only the put-back copy runs."""
    queue = Queue("race", Exchange("race"), routing_key="race")
    client = redis.Redis.from_url(private_redis.url)
    monkeypatch.setattr(broker, "TAKEN_GRACE", 0)
    with connect(private_redis.url) as conn, connect(private_redis.url) as other:
        publish(conn, queue, {"n": 1})
        channel = conn.default_channel
        record = channel.qos.append

        def append(message, tag):  # another worker's sweep, between the take and the record
            with other.Consumer(queue, callbacks=[]):
                other.default_channel.sweep_taken()
            return record(message, tag)

        channel.qos.append = append
        assert consume(conn, queue) == []
        assert (client.llen("race"), client.llen("race.taken"), client.hlen("unacked")) == (1, 0, 0)
        channel.qos.append = record
        (message,) = consume(conn, queue)
        assert message.payload == {"n": 1}
        message.ack()
    assert client.llen("race") == 0 and client.hlen("unacked") == 0


def test_a_record_whose_reply_was_lost_goes_back_once_redis_answers(private_redis, monkeypatch):
    """Redis ran the record and stopped before replying (seen in a 90 s outage): the worker
    gives up, and the recorded message must not wait for the visibility timeout."""
    queue = Queue("lostreply", Exchange("lostreply"), routing_key="lostreply")
    client = redis.Redis.from_url(private_redis.url)
    monkeypatch.setattr(broker, "RECORD_RETRY_SECONDS", 0)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        qos = conn.default_channel.qos
        record = qos._record_taken

        def ran_then_lost(*args):
            record(*args)
            raise redis.ConnectionError("Connection closed by server.")

        monkeypatch.setattr(qos, "_record_taken", ran_then_lost)
        with pytest.raises(redis.ConnectionError):
            consume(conn, queue)
        assert (client.llen("lostreply"), client.hlen("unacked")) == (0, 1)  # recorded, unseen
        broker.STATE.settle(qos)  # what the next sweep or channel does once Redis answers
        assert (client.llen("lostreply"), client.hlen("unacked")) == (1, 0)
        monkeypatch.setattr(qos, "_record_taken", record)
        (message,) = consume(conn, queue)
        message.ack()
    assert client.llen("lostreply") == 0 and client.hlen("unacked") == 0


def test_a_record_retried_after_its_reply_was_lost_runs_the_task_once(private_redis, monkeypatch):
    """The record ran, its reply was lost, and the retry finds the entry gone from the taken
    list: the record there is its own (same tag and score), so the task runs here."""
    queue = Queue("retried", Exchange("retried"), routing_key="retried")
    client = redis.Redis.from_url(private_redis.url)
    monkeypatch.setattr(broker, "RECORD_RETRY_PAUSE", 0)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        qos = conn.default_channel.qos
        record, lives = qos._record_taken, []

        def first_reply_lost(*args):
            lives.append(record(*args))
            if len(lives) == 1:
                raise redis.ConnectionError("Connection closed by server.")
            return lives[-1]

        monkeypatch.setattr(qos, "_record_taken", first_reply_lost)
        (message,) = consume(conn, queue)
        assert len(lives) == 2 and lives[0] == lives[1] != broker.NO_LIFE
        assert (client.llen("retried.taken"), client.hlen("unacked")) == (0, 1)
        message.ack()
    assert (client.llen("retried"), client.hlen("unacked")) == (0, 0)


def test_a_worker_that_is_never_idle_restores_a_dead_workers_tasks(private_redis, monkeypatch):
    """kombu restores overdue unacknowledged tasks (a worker killed outright) only after a poll
    that returned nothing: a gevent worker with a steady stream never did. Restored before the
    next take, the dead worker's task comes first."""
    queue = Queue("orphans", Exchange("orphans"), routing_key="orphans")
    client = redis.Redis.from_url(private_redis.url)
    monkeypatch.setattr(broker, "SWEEP_EVERY", 0)
    with connect(private_redis.url) as dead:
        publish(dead, queue, {"n": "orphan"})
        (orphan,) = consume(dead, queue)
        dead.default_channel.qos._delivered.clear()  # as after kill -9: nothing restores it
    client.zadd("unacked_index", {orphan.delivery_tag: time.time() - 3600})
    options = {**OPTIONS, "visibility_timeout": 60}
    with Connection(private_redis.url, transport=Transport, transport_options=options) as conn:
        publish(conn, queue, *({"n": n} for n in range(3)))
        got = consume(conn, queue)  # every take finds a message: never an idle poll
        assert [m.payload["n"] for m in got] == ["orphan"]
        assert client.llen("orphans") == 3
        got[0].ack()


def test_a_channel_closing_after_its_connection_let_go_defers_its_restore(private_redis):
    """kombu's close() restores a channel's unacked tasks after the connection may already have
    let go of the transport (a threads worker exited so, "Unrecoverable error: AttributeError",
    in a Redis outage): the restore is deferred instead."""
    queue = Queue("detached", Exchange("detached"), routing_key="detached")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue)
        channel = conn.default_channel
        transport_client, channel.connection.client = channel.connection.client, None
        channel._disconnect_pools()
        try:
            channel.qos.restore_unacked()
        finally:
            channel.connection.client = transport_client
        assert (message.delivery_tag, channel.qos.scores.get(message.delivery_tag)) in (
            broker.STATE.restores
        )
        assert client.hlen("unacked") == 1  # still recorded: put back when Redis answers
        broker.STATE.settle(channel.qos)
    assert client.llen("detached") == 1 and client.hlen("unacked") == 0


def test_failed_ack_on_a_live_channel_is_settled_without_a_reconnect(private_redis, monkeypatch):
    """An ack that failed (Redis away for a moment) is done by the channel's periodic hook,
    not left to re-run the task after the visibility timeout."""
    monkeypatch.setattr(broker, "SWEEP_EVERY", 0)  # the hook's next round, without the wait
    queue = Queue("acked", Exchange("acked"), routing_key="acked")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue)
        channel = conn.default_channel
        private_redis.stop()
        message.ack()  # deferred
        private_redis.start()
        wait_until(lambda: redis_answers(client), 30, "redis-server loading its AOF")
        assert client.hexists("unacked", message.delivery_tag)

        def settled() -> bool:
            channel.qos.restore_visible()  # what the worker's timer (or an idle poll) calls
            return client.hlen("unacked") == 0

        wait_until(settled, 30, "the deferred ack")
        assert conn.default_channel is channel
    assert broker.STATE.acks == set()
    # Settled after a restart: put back (see test_an_ack_after_a_redis_restart_...).
    assert queued_bodies(client, "acked") == [{"n": 1}]


def redis_answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.exceptions.BusyLoadingError:
        return False


def test_a_tag_that_keeps_failing_stays_pending_and_channels_still_open(private_redis, caplog):
    client = redis.Redis.from_url(private_redis.url)
    client.hset("unacked", "bad-tag", "not a record")
    broker.STATE.defer("bad-tag", requeue=True)
    with connect(private_redis.url) as conn:
        assert conn.default_channel.qos  # built: its settle in the constructor did not raise
    assert broker.STATE.restores == {("bad-tag", None)}
    assert "task bad-tag not settled in Redis yet" in caplog.text


def test_programming_errors_are_not_taken_for_an_unreachable_redis(private_redis):
    queue = Queue("typo", Exchange("typo"), routing_key="typo")
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        (message,) = consume(conn, queue)

        def broken(*args):
            raise AttributeError("a bug, not a lost connection")

        with pytest.MonkeyPatch.context() as patch, pytest.raises(AttributeError):
            patch.setattr(conn.default_channel.qos, "forget", broken)
            message.ack()
    assert broker.STATE.acks == set()


def test_take_after_a_disconnect_reads_kombus_reply_as_kombus(private_redis):
    """A BLMOVE lost with its connection, then a second queue (kombu's BRPOP): the BRPOP
    reply must not be read as a BLMOVE reply."""
    first, second = (Queue(n, Exchange(n), routing_key=n) for n in ("first", "second"))
    got = []
    with connect(private_redis.url) as conn, conn.Consumer(first, callbacks=[got.append]):
        conn.transport.cycle.on_poll_start()  # BLMOVE sent
        conn.default_channel.client.connection.disconnect()  # reply never read
        with conn.Consumer(second, callbacks=[lambda body, m: got.append(m)]):
            publish(conn, second, {"n": 2})
            conn.drain_events(timeout=5)
    assert [m.payload for m in got] == [{"n": 2}]


def test_reply_read_after_cancel_goes_back_to_the_queue(private_redis):
    """Celery cancels its consumer before closing the channel, which reads a pending take:
    that message goes straight back, whichever channel kombu would have picked."""
    queue = Queue("late", Exchange("late"), routing_key="late")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})  # on the default channel: kombu's pick, not ours
        channel = conn.channel()
        consumer = conn.Consumer(queue, channel=channel, callbacks=[])
        consumer.consume()
        conn.transport.cycle.on_poll_start()  # BLMOVE sent on `channel`
        consumer.cancel()
        assert channel._ack_queues == set()
        channel.close()
    assert (client.llen("late"), client.llen("late.taken"), client.hlen("unacked")) == (1, 0, 0)


def test_redis_error_during_the_sweep_is_a_warning(private_redis, caplog):
    """Redis refuses the sweep (here WRONGTYPE: something else wrote that key; a full
    noeviction Redis refusing a script is another case): the consumer goes on."""
    queue = Queue("odd", Exchange("odd"), routing_key="odd")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn, conn.Consumer(queue, callbacks=[]):
        client.set("odd.taken", "not a list")
        conn.default_channel.periodic()
    assert "sweep of the taken list failed, will retry: ResponseError: WRONGTYPE" in caplog.text


def test_sweep_looks_at_the_oldest_entries_only(private_redis, monkeypatch):
    """After a mass failure one sweep puts back at most SWEEP_LOOK entries, oldest first."""
    queue = Queue("mass", Exchange("mass"), routing_key="mass")
    client = redis.Redis.from_url(private_redis.url)
    entries = [f"e{n}".encode() for n in range(broker.SWEEP_LOOK + 100)]
    client.lpush("mass.taken", *entries)  # as BLMOVE leaves them: oldest at the tail
    monkeypatch.setattr(broker, "TAKEN_GRACE", 0)
    with connect(private_redis.url) as conn, conn.Consumer(queue, callbacks=[]):
        conn.default_channel.sweep_taken()
    assert sorted(client.lrange("mass", 0, -1)) == sorted(entries[: broker.SWEEP_LOOK])
    assert sorted(client.lrange("mass.taken", 0, -1)) == sorted(entries[broker.SWEEP_LOOK :])


def test_purge_size_and_delete_count_the_taken_list(private_redis):
    queue = Queue("tally", Exchange("tally"), routing_key="tally")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        channel = conn.default_channel
        bound = queue.bind(channel)
        for drop in (bound.purge, bound.delete):
            publish(conn, queue, {"n": 1}, {"n": 2}, {"n": 3})
            client.lmove("tally", "tally.taken", "RIGHT", "LEFT")  # taken, not yet recorded
            assert channel._size("tally") == 3
            drop()
            assert client.exists("tally", "tally.taken") == 0


@pytest.mark.parametrize(
    ("version", "supported"),
    [("6.0.16", False), ("6.2.0", True), ("7.0.15", True), ("10.0.0", True), ("unknown", False)],
)
def test_blmove_needs_redis_6_2(version, supported):
    assert broker.blmove_supported(version) is supported


def test_old_redis_falls_back_to_brpop_with_one_warning(private_redis, monkeypatch, caplog):
    """Stands in for a Redis older than 6.2 (none here) by the version the channel reads."""
    monkeypatch.setattr(broker.Channel, "_server_version", lambda self: "6.0.16")
    queue = Queue("old", Exchange("old"), routing_key="old")
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1}, {"n": 2})
        got = consume(conn, queue) + consume(conn, queue)
    assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
    assert client.info("commandstats").get("cmdstat_blmove") is None
    assert caplog.text.count("Redis 6.0.16 (BLMOVE needs 6.2 or later)") == 1


def test_consumer_of_several_queues_warns_once_why_it_uses_brpop(private_redis, caplog):
    queues = [Queue(n, Exchange(n), routing_key=n) for n in ("one", "two")]
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        for queue in queues:
            publish(conn, queue, {"n": queue.name})
        got = []
        with conn.Consumer(queues, callbacks=[lambda body, m: got.append(body)]):
            for _ in queues:
                conn.drain_events(timeout=5)
    assert sorted(b["n"] for b in got) == ["one", "two"]
    assert client.keys("*.taken") == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "kombu's BRPOP, no taken list, for a consumer with several queues (BLMOVE takes from one list)"
    ]


def test_installed_kombu_fits_the_transport():
    assert guard.changes() == []


def test_one_redis_client_per_pool_not_per_call(private_redis):
    """kombu built a client per record, ack and publish (~170 callbacks filled each time); the
    channel keeps one per pool, and a new pool (after a reconnect) gets a new one."""
    with connect(private_redis.url) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.connection_pool is channel.pool
            assert first.ping()
        given = redis.Redis.from_url(private_redis.url)
        with channel.conn_or_acquire(given) as client:
            assert client is given
        channel._pool = None  # what kombu does when it drops the channel's pools
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
            assert third.ping()


def test_a_full_redis_pauses_taking_said_once_and_taking_resumes(private_redis, caplog):
    """BLMOVE is refused at maxmemory (noeviction): the consumer waits for room, not exits."""
    queue = Queue("full", Exchange("full"), routing_key="full")
    client = redis.Redis.from_url(private_redis.url)
    got = []
    with connect(private_redis.url) as conn:
        publish(conn, queue, {"n": 1})
        # Declared before Redis is full: a full Redis refuses even the declare's MULTI.
        with conn.Consumer(queue, callbacks=[lambda body, m: got.append(m)]):
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)  # below what any Redis uses: writes refused
            for _ in range(3):  # a synchronous consumer asks again after its poll timeout
                with pytest.raises(TimeoutError):
                    conn.drain_events(timeout=1.5 * broker.FULL_PAUSE)
            assert got == [] and client.llen("full") == 1 and client.llen("full.taken") == 0
            refused = client.info("commandstats")["cmdstat_blmove"]["rejected_calls"]
            assert refused >= 2, refused  # taking was retried, and said once (below)
            client.config_set("maxmemory", 0)
            conn.drain_events(timeout=5)
    assert [m.payload for m in got] == [{"n": 1}]
    said = [r.getMessage() for r in caplog.records if "taking tasks" in r.getMessage()]
    assert said == [
        "Redis is full (maxmemory, noeviction): taking tasks paused until it has room "
        "(OutOfMemoryError: command not allowed when used memory > 'maxmemory'.)",
        "Redis has room again: taking tasks resumed",
    ], said
