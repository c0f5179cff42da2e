"""A task's SUCCESS held for its delivery's ack and stored with it in one script
(results.Held, transport.STATE.hold_result), against real redis-servers: the result is always
stored before the delivery is settled, whichever way it is settled."""

import threading
import uuid

import pytest
import redis
from celery import Celery, states
from celery.app.task import Context
from celery_redis_reliable import transport as broker
from celery_redis_reliable.results import Backend
from celery_redis_reliable.testing import wait_until
from kombu import Exchange, Queue

from .test_transport import connect, consume, publish, queued_bodies, redis_answers

QUEUE = Queue("held", Exchange("held"), routing_key="held")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch) -> None:
    monkeypatch.setattr(broker, "STATE", broker.ProcessState())


def backend_on(url: str) -> Backend:
    owner = Celery(set_as_current=False)
    owner.conf.update(
        result_serializer="json",
        result_expires=300,
        result_backend_always_retry=True,  # as the project runs it
        result_backend_max_retries=20,
    )
    return Backend(app=owner, url=url)


def take(conn) -> tuple[object, str, Context]:
    """One delivery, recorded, and the request its task would run with."""
    task_id = str(uuid.uuid4())
    publish(conn, QUEUE, {"task": task_id})
    (message,) = consume(conn, QUEUE)
    return message, task_id, Context(properties=message.properties, chord=None)


def ack_across_an_outage(server, message, channel=None) -> None:
    """Redis stops (then ``channel`` closes), and the task acks while Redis comes back."""
    server.stop()
    if channel is not None:
        channel.close()  # its restore of the delivery is deferred
    back = threading.Timer(2.0, server.start)
    back.start()
    message.ack()  # waits in the backend's retries for Redis
    back.join()


def meta(backend: Backend, task_id: str) -> dict:
    raw = backend.client.get(backend.get_key_for_task(task_id))
    return backend.decode_result(raw) if raw else {}


def calls(client: redis.Redis) -> dict[str, int]:
    return {name: s["calls"] for name, s in client.info("commandstats").items()}


def test_a_success_is_stored_by_the_ack_in_one_script(private_redis):
    backend = backend_on(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        for _ in range(2):  # the first call of a script may be NOSCRIPT, then a load
            message, task_id, request = take(conn)
            backend.mark_as_done(task_id, {"n": 1}, request)
            assert meta(backend, task_id) == {}  # held, not written yet
            client.config_resetstat()
            message.ack()
            sent = calls(client)
    assert meta(backend, task_id)["status"] == states.SUCCESS
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)
    # Commands run inside the script count too (GET, SET, PUBLISH, ZREM...): one script ran.
    assert (sent["cmdstat_evalsha"], sent["cmdstat_set"], sent["cmdstat_zrem"]) == (1, 1, 1)


def test_an_ack_deferred_by_a_lost_connection_stores_the_result_first(private_redis):
    """The channel is gone before the task acks: its result is stored the backend's way
    (retried until Redis answers), and only then is the ack deferred as before."""
    backend = backend_on(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        message, task_id, request = take(conn)
        backend.mark_as_done(task_id, {"n": 2}, request)
        ack_across_an_outage(private_redis, message, conn.default_channel)
    wait_until(lambda: redis_answers(client), 30, "redis-server loading its AOF")
    assert meta(backend, task_id)["status"] == states.SUCCESS
    assert {tag for tag, *_ in broker.STATE.acks} == {message.delivery_tag}
    with connect(private_redis.url) as conn:
        conn.channel()  # settles the deferred ack: put back, as after any Redis restart
    assert queued_bodies(client, "held") == [{"task": task_id}]


def test_a_channel_lost_with_reserved_deliveries_lets_them_go(private_redis):
    """Reserved deliveries that never ack (Celery drops them on a lost connection) must not
    keep the closed channel's QoS alive, nor let a result be held for them."""
    with connect(private_redis.url) as conn:
        message, *_ = take(conn)
        assert set(broker.STATE.held) == {message.delivery_tag}
        private_redis.stop()
        conn.default_channel.close()
        assert broker.STATE.held == {}
        private_redis.start()


def test_a_settle_refused_by_a_lost_connection_stores_the_result_first(private_redis):
    """Redis goes away under a live channel: the one script fails, the result is stored the
    backend's way once Redis answers, then the ack runs as before (after a restart: put back)."""
    backend = backend_on(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        message, task_id, request = take(conn)
        backend.mark_as_done(task_id, {"n": 5}, request)
        ack_across_an_outage(private_redis, message)
        assert meta(backend, task_id)["status"] == states.SUCCESS
    assert client.hlen("unacked") == 0
    assert queued_bodies(client, "held") == [{"task": task_id}]


def test_a_run_of_an_earlier_delivery_is_not_held_for_its_copy(private_redis):
    """A message put back keeps its delivery tag: while its first run goes on, another channel
    takes the copy. The first run's result is stored at once (holding it for the copy's ack
    left it unstored, and the first run's ack dropped the copy's entry); its ack leaves the
    copy's record and hold alone; the copy's result is held for its own ack."""
    backend = backend_on(private_redis.url)
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as first_conn, connect(private_redis.url) as copy_conn:
        first, task_id, first_request = take(first_conn)
        tag = first.delivery_tag
        qos = first_conn.default_channel.qos
        qos.restore_owned(tag, qos.scores[tag])  # put back, as after a Redis restart
        (copy,) = consume(copy_conn, QUEUE)
        assert copy.delivery_tag == tag
        copy_request = Context(properties=copy.properties, chord=None)
        backend.mark_as_done(task_id, {"run": 1}, first_request)
        assert meta(backend, task_id)["result"] == {"run": 1}  # stored, not held
        first.ack()
        assert client.hlen("unacked") == 1  # the copy's record
        assert broker.STATE.held[tag][0] is copy_conn.default_channel.qos
        backend.mark_as_done(task_id, {"run": 2}, copy_request)
        assert set(copy_conn.default_channel.qos.results) == {tag}  # held for the copy's ack
        copy.ack()
    assert meta(backend, task_id)["result"] == {"run": 1}  # a SUCCESS is never replaced
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)


def test_a_later_store_for_the_delivery_writes_the_held_success_first(private_redis):
    """A SUCCESS is never replaced: a failure stored after it (e.g. an on_success handler
    raised) must find it there, as it would without the hold."""
    backend = backend_on(private_redis.url)
    with connect(private_redis.url) as conn:
        message, task_id, request = take(conn)
        backend.mark_as_done(task_id, {"n": 3}, request)
        backend.mark_as_failure(task_id, ValueError("after the success"), request=request)
        assert meta(backend, task_id)["status"] == states.SUCCESS
        message.ack()
    assert meta(backend, task_id)["result"] == {"n": 3}


def test_a_result_for_another_redis_is_stored_at_once(private_redis, redis_url):
    backend = backend_on(redis_url)  # not the broker's server: no script spans both
    with connect(private_redis.url) as conn:
        message, task_id, request = take(conn)
        backend.mark_as_done(task_id, {"n": 4}, request)
        assert meta(backend, task_id)["status"] == states.SUCCESS
        message.ack()
    assert redis.Redis.from_url(private_redis.url).hlen("unacked") == 0
