"""A backlog is taken and recorded in one script per message (transport.TAKE_RECORDED), against
real redis-servers: the records are those of the two-step take, bad entries are rejected as
before, and whatever Redis refuses leaves the queue as it was."""

import json
import logging

import pytest
import redis
from celery_redis_reliable import transport as broker
from celery_redis_reliable.transport import REJECTED_KEY
from kombu import Exchange, Queue

from .test_transport import BAD_ENTRIES, connect, publish

QUEUE = Queue("backlog", Exchange("backlog"), routing_key="backlog")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch) -> None:
    monkeypatch.setattr(broker, "STATE", broker.ProcessState())


def drain(conn, rounds: int) -> list:
    """Messages delivered in ``rounds`` polls (a poll that finds nothing ends early)."""
    got = []
    with conn.Consumer(QUEUE, callbacks=[lambda body, m: got.append(m)]):
        for _ in range(rounds):
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                break
    return got


def loaded(client: redis.Redis) -> redis.Redis:
    """The script cached, as on a worker after its first take (else that take meets NOSCRIPT,
    loads it and waits on BLMOVE)."""
    client.script_load(broker.TAKE_RECORDED.script)
    return client


def calls(client: redis.Redis, command: str) -> int:
    return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)


def test_a_backlog_after_the_first_take_is_taken_and_recorded_in_one_script(private_redis):
    client = loaded(redis.Redis.from_url(private_redis.url))
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, *[{"n": i} for i in range(10)])
        client.config_resetstat()
        got = drain(conn, 12)
        assert [m.payload for m in got] == [{"n": i} for i in range(10)]  # in order, once
        # The first take waits on BLMOVE, then records (RECORD's LREM); the other nine went
        # in one script each (RPOP), with no <queue>.taken step.
        assert (calls(client, "lrem"), calls(client, "rpop")) == (1, 9)
        assert (client.llen("backlog"), client.llen("backlog.taken")) == (0, 0)
        for message in got:  # the record the two-step take writes: [payload, exchange, key]
            record = json.loads(client.hget("unacked", message.delivery_tag))
            assert record == [json.loads(json.dumps(message._raw)), "backlog", "backlog"]
        scores = client.zrange("unacked_index", 0, -1, withscores=True)
        assert {tag.decode() for tag, _ in scores} == {m.delivery_tag for m in got}
        for message in got:
            message.ack()
    assert (client.hlen("unacked"), client.zcard("unacked_index")) == (0, 0)


@pytest.mark.parametrize("entry", BAD_ENTRIES)
def test_a_bad_entry_in_a_backlog_is_rejected_as_before(private_redis, entry):
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, {"n": 1})
        client.lpush("backlog", entry)  # taken by the one script: it cannot read it
        publish(conn, QUEUE, {"n": 2})
        got = drain(conn, 5)
        assert [m.payload for m in got] == [{"n": 1}, {"n": 2}]
        assert client.lrange(REJECTED_KEY, 0, -1) == [entry]  # as it was
        assert (client.llen("backlog.taken"), client.hlen("unacked")) == (0, 2)


def test_an_envelope_only_the_script_can_read_is_rejected_and_its_record_removed(private_redis):
    """Lua records what has a tag and delivery_info; kombu also needs the rest (headers an
    object): the record the script wrote goes with the rejection."""
    client = redis.Redis.from_url(private_redis.url)
    odd = {"body": "e30=", "headers": 5, "content-type": "application/json",
           "properties": {"delivery_tag": "odd-tag", "body_encoding": "base64",
                          "delivery_info": {"exchange": "backlog", "routing_key": "backlog"}}}  # fmt: skip
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, {"n": 1})
        client.lpush("backlog", json.dumps(odd))
        got = drain(conn, 4)
        assert [m.payload for m in got] == [{"n": 1}]
        assert [json.loads(e) for e in client.lrange(REJECTED_KEY, 0, -1)] == [odd]
        assert client.hget("unacked", "odd-tag") is None
        assert client.zscore("unacked_index", "odd-tag") is None
        assert (client.llen("backlog"), client.llen("backlog.taken")) == (0, 0)


def test_an_acl_without_lindex_falls_back_to_blmove_with_one_warning(private_redis, caplog):
    admin = redis.Redis.from_url(private_redis.url)
    admin.acl_setuser("taker", enabled=True, passwords=["+taker-pw"], keys=["*"],
                      channels=["*"], commands=["+@all", "-lindex"])  # fmt: skip
    url = private_redis.url.replace(f":{private_redis.password}@", "taker:taker-pw@")
    with connect(url) as conn:
        publish(conn, QUEUE, *[{"n": i} for i in range(5)])
        got = drain(conn, 8)
        assert [m.payload for m in got] == [{"n": i} for i in range(5)]
        said = [r.getMessage() for r in caplog.records if "one-round-trip take" in r.getMessage()]
        assert len(said) == 1 and "can't run this command" in said[0], said
        assert (admin.llen("backlog"), admin.llen("backlog.taken"), admin.hlen("unacked")) == (
            0, 0, 5,
        )  # fmt: skip


def test_a_full_redis_refuses_the_one_script_take_with_nothing_changed(private_redis):
    client = loaded(redis.Redis.from_url(private_redis.url))
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, *[{"n": i} for i in range(3)])
        got = []
        with conn.Consumer(QUEUE, callbacks=[lambda body, m: got.append(m)]):
            conn.drain_events(timeout=5)  # BLMOVE and RECORD; the next take is the script
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            with pytest.raises(TimeoutError):
                conn.drain_events(timeout=1.5 * broker.FULL_PAUSE)
            assert calls(client, "rpop") == 0
            assert (client.llen("backlog"), client.hlen("unacked"), len(got)) == (2, 1, 1)
            client.config_set("maxmemory", 0)
            for _ in range(2):
                conn.drain_events(timeout=5)
            assert [m.payload for m in got] == [{"n": i} for i in range(3)]
            assert (client.llen("backlog"), client.hlen("unacked")) == (0, 3)


def test_a_flushed_script_cache_is_loaded_again(private_redis):
    """A restarted Redis has no scripts: the take that meets NOSCRIPT loads it, none is lost."""
    client = redis.Redis.from_url(private_redis.url)
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, *[{"n": i} for i in range(4)])
        got = []
        with conn.Consumer(QUEUE, callbacks=[lambda body, m: got.append(m)]):
            conn.drain_events(timeout=5)
            client.script_flush()
            while len(got) < 4:
                conn.drain_events(timeout=5)
    assert [m.payload for m in got] == [{"n": i} for i in range(4)]
    assert client.script_exists(broker.TAKE_RECORDED.sha) == [True]


def test_a_one_script_take_read_after_cancel_goes_back_to_the_queue(private_redis):
    """As with BLMOVE (test_reply_read_after_cancel_goes_back_to_the_queue): the message
    recorded by the take goes back to the head of the queue, its record removed."""
    client = loaded(redis.Redis.from_url(private_redis.url))
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, {"n": 1}, {"n": 2})
        before = [json.loads(e)["body"] for e in client.lrange("backlog", 0, -1)]
        channel = conn.channel()
        consumer = conn.Consumer(QUEUE, channel=channel, callbacks=[])
        consumer.consume()
        channel._more = True  # as after a take that found a message
        conn.transport.cycle.on_poll_start()  # TAKE_RECORDED sent on `channel`
        consumer.cancel()
        channel.close()
    assert [json.loads(e)["body"] for e in client.lrange("backlog", 0, -1)] == before  # order
    assert (client.llen("backlog"), client.llen("backlog.taken"), client.hlen("unacked")) == (
        2, 0, 0,
    )  # fmt: skip
    assert calls(client, "rpop") == 1  # it was taken and recorded, then put back


def test_logging_is_quiet_on_the_one_script_path(private_redis, caplog):
    caplog.set_level(logging.INFO, logger=broker.logger.name)
    with connect(private_redis.url) as conn:
        publish(conn, QUEUE, *[{"n": i} for i in range(3)])
        assert len(drain(conn, 5)) == 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
