"""A test-only Celery app, built twice: through this project's layer, or on stock Celery.

"layer": the project's Redis transport and result backend, exactly as celery_app.py configures
them (read from the project's own app, so moving them changes nothing here). "stock": kombu's
own ``redis://`` transport and Celery's own RedisBackend. Both keep the project's tuning that
changes what a task sees (late acks, re-queue on a lost worker, JSON, transport options).

A worker loads it with ``celery -A semantics_app worker`` (tests/ on PYTHONPATH) and reads
SEMANTICS_VARIANT, SEMANTICS_QUEUE and REDIS_URL (a full URL, password included).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from celery.exceptions import Reject

from {{ cookiecutter.package }}.celery_app import app as project_app

VARIANTS = ("layer", "stock")

# The project's settings that change what a task or a caller observes.
TUNING = (
    "task_serializer",
    "result_serializer",
    "accept_content",
    "result_accept_content",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "result_backend_thread_safe",
    "broker_transport_options",
    "redis_max_connections",
    "result_backend_always_retry",
    "result_backend_max_retries",
    "broker_connection_retry_on_startup",
)


def make_app(variant: str, url: str, queue: str) -> Celery:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    app = Celery(f"semantics-{variant}")
    app.conf.update({key: project_app.conf[key] for key in TUNING})
    if variant == "layer":
        # "<backend class>+<url>": the project's class, on this test's Redis.
        backend = project_app.conf.result_backend.partition("+")[0]
        app.conf.update(
            broker_url=url,
            broker_transport=project_app.conf.broker_transport,
            result_backend=f"{backend}+{url}",
        )
    else:
        app.conf.update(broker_url=url, result_backend=url)
    app.conf.update(
        task_default_queue=queue,
        result_extended=True,
        # The kill test needs a free child while the killed one is replaced.
        worker_prefetch_multiplier=1,
    )
    register(app, url)
    return app


def register(app: Celery, url: str) -> None:
    """The test tasks, named ``sem.*``; they record what they did in Redis under ``key``."""
    store = redis.Redis.from_url(url)
    # shared=False: each app (layer, stock) keeps its own tasks, bound to its own broker.

    @app.task(name="sem.add", shared=False)
    def add(x, y):
        return x + y

    @app.task(name="sem.tsum", shared=False)
    def tsum(values):
        return sum(values)

    @app.task(name="sem.fail", shared=False)
    def fail(message):
        raise ValueError(message)

    @app.task(name="sem.mark", shared=False)
    def mark(key):
        store.rpush(f"{key}:at", repr(time.time()))
        return store.incr(key)

    @app.task(name="sem.limited", shared=False, rate_limit="1/m")
    def limited(key):
        return store.incr(key)

    @app.task(name="sem.sleep", shared=False)
    def sleep(key, seconds):
        store.set(f"{key}:pid", os.getpid())
        store.incr(key)
        time.sleep(seconds)
        return "slept"

    @app.task(name="sem.retry_once", shared=False, bind=True)
    def retry_once(self, key):
        store.rpush(f"{key}:at", repr(time.time()))
        if store.incr(key) == 1:
            raise self.retry(countdown=1)
        return {"runs": int(store.get(key)), "retries": self.request.retries}

    @app.task(name="sem.die_once", shared=False)
    def die_once(key):
        # The first run waits to be killed (-9) by the test; the re-delivered one returns.
        runs = store.incr(key)
        if runs == 1:
            store.set(f"{key}:pid", os.getpid())
            time.sleep(60)
            raise Reject("not killed", requeue=False)
        return runs


app = make_app(
    os.environ.get("SEMANTICS_VARIANT", "stock"),
    os.environ.get("REDIS_URL", "redis://127.0.0.1:9/0"),
    os.environ.get("SEMANTICS_QUEUE", "semantics"),
)
