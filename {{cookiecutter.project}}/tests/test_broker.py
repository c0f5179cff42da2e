"""The transport's two delivery fixes (broker.py), against real Redis."""

import threading

import redis
from kombu import Connection, Exchange, Queue

from {{ cookiecutter.package }}.broker import REJECTED_KEY, Transport


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
