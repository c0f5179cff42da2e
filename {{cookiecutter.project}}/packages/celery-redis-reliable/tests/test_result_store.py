"""The result store in one round trip (celery_redis_reliable.results), against a real redis-server."""

import uuid

import pytest
import redis
from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery_redis_reliable import guard
from celery_redis_reliable.results import Backend


@pytest.fixture
def backend(redis_url) -> Backend:
    owner = Celery(set_as_current=False)
    owner.conf.update(result_serializer="json", result_expires=300, result_failure_expires=60)
    return Backend(app=owner, url=redis_url)


@pytest.fixture
def client(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_a_result_is_stored_in_one_round_trip(backend, client):
    backend.mark_as_done(str(uuid.uuid4()), None)  # loads the script
    client.config_resetstat()
    task_id = str(uuid.uuid4())
    backend.mark_as_done(task_id, {"pool": "gevent"})
    stats = client.info("commandstats")
    # Celery's own store is GET, then MULTI/SETEX/PUBLISH/EXEC: two round trips.
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert not {"cmdstat_multi", "cmdstat_exec", "cmdstat_setex"} & stats.keys()
    assert backend.get_task_meta(task_id)["result"] == {"pool": "gevent"}


def test_a_success_is_never_overwritten(backend):
    done, failed = str(uuid.uuid4()), str(uuid.uuid4())
    backend.mark_as_done(done, 42)
    backend.mark_as_failure(done, ValueError("re-delivered copy failed"))
    assert backend.get_task_meta(done)["status"] == states.SUCCESS
    backend.mark_as_failure(failed, ValueError("first try"))
    backend.mark_as_done(failed, 43)  # anything but a success may be replaced, as in Celery
    assert (backend.get_task_meta(failed)["status"], backend.get_task_meta(failed)["result"]) == (
        states.SUCCESS,
        43,
    )


SERIALIZERS = ["json", "msgpack", "pickle", "yaml"]
COMPRESSIONS = [None, "gzip", "bzip2"]


def store_sequence(backend_cls, redis_url, serializer, compression, first, then):
    """Store ``first`` then ``then`` for one task id; return what a reader sees afterwards."""
    owner = Celery(set_as_current=False)
    owner.conf.update(
        result_serializer=serializer,
        result_accept_content=[serializer],
        result_compression=compression,
        result_expires=300,
    )
    backend = backend_cls(app=owner, url=redis_url)
    task_id = str(uuid.uuid4())
    for state, value in (first, then):
        if state == states.SUCCESS:
            backend.mark_as_done(task_id, value)
        else:
            backend.mark_as_failure(task_id, ValueError(value))
    meta = backend.get_task_meta(task_id)
    result = meta["result"]
    return meta["status"], result if meta["status"] == states.SUCCESS else repr(result)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("serializer", SERIALIZERS)
def test_every_encoding_keeps_a_success_as_stock_celery_does(redis_url, serializer, compression):
    # Side by side with Celery's own RedisBackend on the same Redis: a SUCCESS then a FAILURE
    # for one task id (a re-delivered copy failing) keeps the SUCCESS; the other order does not.
    pytest.importorskip({"yaml": "yaml", "msgpack": "msgpack"}.get(serializer, "json"))
    success, failure = (states.SUCCESS, 42), (states.FAILURE, "re-delivered copy failed")
    for first, then in ((success, failure), (failure, success)):
        ours = store_sequence(Backend, redis_url, serializer, compression, first, then)
        stock = store_sequence(RedisBackend, redis_url, serializer, compression, first, then)
        assert ours == stock == (states.SUCCESS, 42), (first[0], then[0])


def test_a_stored_value_the_script_cannot_read_goes_through_celerys_check(redis_url, client):
    owner = Celery(set_as_current=False)
    owner.conf.update(result_serializer="json", result_compression="gzip")
    backend = Backend(app=owner, url=redis_url)
    task_id = str(uuid.uuid4())
    backend.mark_as_done(task_id, 1)
    client.config_resetstat()
    backend.mark_as_failure(task_id, ValueError("late copy"))
    stats = client.info("commandstats")
    # The script read (one GET) and wrote nothing; Celery's own GET then decided, keeping it.
    assert (stats["cmdstat_evalsha"]["calls"], stats["cmdstat_get"]["calls"]) == (1, 2)
    assert not {"cmdstat_set", "cmdstat_setex", "cmdstat_publish"} & stats.keys()
    assert backend.get_task_meta(task_id)["status"] == states.SUCCESS


def test_expiry_and_publish_are_celerys(backend, client):
    done, failed = str(uuid.uuid4()), str(uuid.uuid4())
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(backend.get_key_for_task(done))
    pubsub.get_message(timeout=1)
    backend.mark_as_done(done, "ok")
    message = pubsub.get_message(timeout=5)
    assert message and message["data"] == client.get(backend.get_key_for_task(done))
    backend.mark_as_failure(failed, ValueError("boom"))
    assert 290 <= client.ttl(backend.get_key_for_task(done)) <= 300
    assert 50 <= client.ttl(backend.get_key_for_task(failed)) <= 60


def test_installed_celery_fits_results_py():
    assert guard.changes(guard.CELERY_EXPECTED) == []
    assert guard.body_changes() == []


# The guard firing on a changed Celery: packages/celery-redis-reliable/tests/test_guard.py.
