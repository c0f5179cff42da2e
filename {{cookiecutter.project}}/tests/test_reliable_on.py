"""The app on the reliability library (its own tests: packages/celery-redis-reliable/tests):
its result store and broker options, and the stack's workers on its transport."""

import redis
from celery_redis_reliable.results import Backend
from kombu.transport import redis as kombu_redis

from {{ cookiecutter.package }}.celery_app import app


def test_the_app_stores_results_with_it():
    assert type(app.backend) is Backend


def test_broker_connections_time_out():
    """A half-open connection must not block a worker forever: every option is one kombu reads."""
    options = app.conf.broker_transport_options
    for name in ("socket_timeout", "socket_connect_timeout", "socket_keepalive"):
        assert options[name] and name in kombu_redis.Channel.from_transport_options


def test_the_stacks_workers_take_with_blmove(redis_url, workers, run_producer):
    """The workers run the transport's path: BLMOVE, never kombu's BRPOP."""
    client = redis.Redis.from_url(redis_url)

    def calls(command: str) -> int:
        return client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)

    before = calls("blmove"), calls("brpop")
    proc = run_producer("--cpu", "2", "--io", "4", "--cpu-limit", "1000", "--io-delay", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blmove, brpop = calls("blmove") - before[0], calls("brpop") - before[1]
    # Idle workers poll with BLMOVE too, so its count alone proves little: no BRPOP does.
    assert blmove > 0 and brpop == 0, (blmove, brpop)
    for worker in workers.values():
        assert "kombu's BRPOP" not in worker.log.read_text()


ENTRIES = ["this is not JSON", "[1,2]", '{"body":"no properties"}']


def test_entries_that_are_not_messages_are_kept_aside_and_workers_go_on(
    redis_url, workers, run_producer
):
    client = redis.Redis.from_url(redis_url)
    client.delete("_kombu.rejected")  # the name the README gives
    for queue in ("cpu", "io"):
        client.lpush(queue, *ENTRIES)
    proc = run_producer("--cpu", "2", "--io", "4", "--cpu-limit", "1000", "--io-delay", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(worker.proc.poll() is None for worker in workers.values())
    kept = [raw.decode() for raw in client.lrange("_kombu.rejected", 0, -1)]
    assert sorted(kept) == sorted(ENTRIES * 2)
    for worker in workers.values():
        assert worker.log.read_text().count("rejected a queue entry") >= 3
