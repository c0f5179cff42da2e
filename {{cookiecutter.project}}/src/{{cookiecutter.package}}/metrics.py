"""Prometheus exporter: celery-redis-prometheus plus what it cannot see of this stack.

    python -m {{ cookiecutter.package }}.metrics [--port 9808]

celery-redis-prometheus (``celery prometheus --queue-length``) gives tasks by queue and
state, runtime and time waiting in the queue by queue, and ``celery_queue_length`` (waiting +
unacked: up to concurrency x prefetch of a healthy io worker, so no sign of a backlog alone).
Flower's ``/metrics`` gives workers online and tasks running per worker. This module adds,
read from Redis on each scrape:

- ``celery_queue_waiting{queue}``: tasks no worker has taken yet (the backlog);
- ``celery_queue_taken{queue}``: entries in ``<queue>.taken`` (the library's transport: taken by
  a worker, not yet recorded as unacked; they stay there only if something went wrong);
- ``celery_unacked_oldest_age_seconds``: age of the oldest unacknowledged delivery;
- ``celery_broker_up``, ``celery_broker_memory_used_bytes``, ``celery_broker_memory_max_bytes``;
- ``celery_worker_concurrency{worker}``: pool size per worker (``inspect stats`` once a minute,
  off the scrape path), to turn Flower's running-task count into a utilisation.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from celery.bin.celery import celery
from celery_redis_prometheus import exporter
from celery_redis_reliable.transport import TAKEN_SUFFIX
from kombu.transport import redis as kombu_redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from {{ cookiecutter.package }}.celery_app import app
from {{ cookiecutter.package }}.deadletter import DROPPED_KEY
from {{ cookiecutter.package }}.deadletter import KEY as DEADLETTER_KEY

logger = logging.getLogger(__name__)

PORT = 9808
STATS_EVERY = 60.0  # seconds between `inspect stats` broadcasts
STATS_TIMEOUT = 2.0
# Answer within Prometheus's scrape timeout when Redis does not.
REDIS_TIMEOUTS = {"socket_timeout": 3, "socket_connect_timeout": 3}


class ReadOnlyQoS(kombu_redis.QoS):
    def restore_visible(self, *args, **kwargs) -> None:
        """Not here: the workers put back a dead worker's tasks; this process's Redis user
        (exporter, deploy/redis/acl.sh) may write no queue. kombu does it from any consumer."""


class ReadOnlyChannel(kombu_redis.Channel):
    QoS = ReadOnlyQoS


class ReadOnlyTransport(kombu_redis.Transport):
    """Stock kombu without the visibility restore: the exporter only receives events and
    replies, so it needs neither the library's taken list nor a restore."""

    Channel = ReadOnlyChannel


def gauge(name: str, doc: str, value: float | None = None, labels=()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, labels=list(labels) or None)


class StackCollector(Collector):
    def __init__(self, celery_app):
        self.app = celery_app
        self.concurrency: dict[str, int] = {}

    def start(self) -> StackCollector:
        threading.Thread(target=self._poll_workers, name="inspect-stats", daemon=True).start()
        return self

    def _poll_workers(self) -> None:
        while True:
            try:
                stats = self.app.control.inspect(timeout=STATS_TIMEOUT).stats() or {}
                self.concurrency = {n: s["pool"]["max-concurrency"] for n, s in stats.items()}
            except Exception as exc:  # Redis down: keep the last answer
                logger.warning("inspect stats failed: %r", exc)
            time.sleep(STATS_EVERY)

    def describe(self):
        return []  # no Redis call when the collector is registered

    def collect(self):
        try:
            yield from self._broker()
        except Exception:
            yield gauge("celery_broker_up", "1 when Redis answered this scrape", 0)
        yield from self._workers()

    def _broker(self):
        queues = [queue.name for queue in self.app.conf.task_queues]
        options = {**(self.app.conf.broker_transport_options or {}), **REDIS_TIMEOUTS}
        with self.app.connection_for_read(transport_options=options) as conn:
            conn.ensure_connection(max_retries=0)
            client = conn.default_channel.client
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.llen(queue)
                pipe.llen(queue + TAKEN_SUFFIX)
            pipe.zrange("unacked_index", 0, 0, withscores=True)
            pipe.info("memory")
            pipe.hlen(DEADLETTER_KEY)
            pipe.get(DROPPED_KEY)
            *lengths, oldest, memory, dead, dropped = pipe.execute()
        yield gauge("celery_broker_up", "1 when Redis answered this scrape", 1)
        waiting = gauge("celery_queue_waiting", "Tasks not taken yet", labels=["queue"])
        taken = gauge("celery_queue_taken", "Entries in <queue>.taken", labels=["queue"])
        for i, queue in enumerate(queues):
            waiting.add_metric([queue], lengths[2 * i])
            taken.add_metric([queue], lengths[2 * i + 1])
        yield waiting
        yield taken
        age = time.time() - oldest[0][1] if oldest else 0.0
        yield gauge("celery_unacked_oldest_age_seconds", "Oldest unacked delivery", age)
        yield gauge("celery_broker_memory_used_bytes", "Redis used_memory", memory["used_memory"])
        yield gauge("celery_broker_memory_max_bytes", "Redis maxmemory", memory["maxmemory"])
        yield gauge("celery_deadletter_size", "Entries in the dead-letter queue", dead)
        yield CounterMetricFamily(
            "celery_deadletter_dropped", "Dead letters dropped at DEADLETTER_MAX", int(dropped or 0)
        )

    def _workers(self):
        family = gauge("celery_worker_concurrency", "Pool size per worker", labels=["worker"])
        for name, size in sorted(self.concurrency.items()):
            family.add_metric([name], size)
        yield family


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    port = args[1] if args[:1] == ["--port"] and len(args) == 2 else None
    if args and port is None:
        print(
            "usage: python -m {{ cookiecutter.package }}.metrics [--port N]",
            file=sys.stderr,
        )
        raise SystemExit(2)
    app.conf.broker_transport = ReadOnlyTransport
    exporter.REGISTRY.register(StackCollector(app).start())
    app_module = "{{ cookiecutter.package }}.celery_app"
    argv = ["-A", app_module, "prometheus", "--queue-length"]
    # In this process, so the exporter serves the collector registered above.
    celery.main([*argv, f"--port={port or PORT}"], prog_name="celery", auto_envvar_prefix="CELERY")


if __name__ == "__main__":
    main()
