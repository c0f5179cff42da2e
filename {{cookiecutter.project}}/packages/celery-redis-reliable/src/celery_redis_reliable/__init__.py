"""Celery on Redis without lost tasks: a kombu transport, a result store, task-event batching,
durable publishing, and a guard that stops any process whose celery/kombu the layer was not
ported to (see README.md)."""

__version__ = "0.1.0"

from celery_redis_reliable.guard import check

check()
