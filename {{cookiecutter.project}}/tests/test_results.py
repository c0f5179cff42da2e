"""The result store in one round trip (results.py), against real Redis."""

import subprocess
import sys
import uuid

import celery
import pytest
import redis
from celery import Celery, states

from {{ cookiecutter.package }} import broker_compat
from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.results import Backend


@pytest.fixture
def backend(redis_url) -> Backend:
    owner = Celery(set_as_current=False)
    owner.conf.update(result_serializer="json", result_expires=300, result_failure_expires=60)
    return Backend(app=owner, url=redis_url)


@pytest.fixture
def client(redis_url) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def test_the_app_stores_results_with_it():
    assert type(app.backend) is Backend


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
    assert broker_compat.changes(broker_compat.CELERY_EXPECTED) == []
    assert broker_compat.source_changes() == []


# The worker's entry point in a fresh interpreter with Celery's store changed; never exec Celery.
CHANGED_CELERY = """
import os, sys
from celery.backends import redis
def _set(self, key, value, expires=None):
    pass
redis.RedisBackend._set = _set
os.execve = lambda *args: sys.exit("no check: the worker would have started")
from {{ cookiecutter.package }}.worker import main
main(["io"])
"""


def test_worker_stops_when_celery_changed_the_store_results_py_replaces():
    proc = subprocess.run(
        [sys.executable, "-c", CHANGED_CELERY], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"results.py does not fit celery {celery.__version__}: ")
    assert "celery.backends.redis.RedisBackend._set changed" in line
