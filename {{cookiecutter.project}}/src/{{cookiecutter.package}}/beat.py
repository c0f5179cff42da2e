"""The beat service: sends the periodic tasks of ``BEAT_SCHEDULE`` (celery_app.py) on time.

    python -m {{ cookiecutter.package }}.beat

RedBeat keeps the schedule and each entry's last run in Redis, so a restart neither repeats
nor skips a run, and a lock lets only one beat send: run two replicas and the second waits.
The holder renews the lock every loop (at most BEAT_MAX_LOOP_INTERVAL seconds apart) before
sending anything; if it dies, the lock expires after BEAT_LOCK_TIMEOUT and a standby, which
tries every loop, takes over. A holder that stalled past the timeout finds its lock gone at
its next renewal and exits instead of sending.

Both holder and standby touch HEARTBEAT_FILE every loop: ``health heartbeat`` checks it.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from celery import signals
from redbeat.schedulers import (
    LUA_EXTEND_TO_SCRIPT,
    RedBeatScheduler,
    acquire_distributed_beat_lock,
    get_redis,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from {{ cookiecutter.package }}.health import touch
from {{ cookiecutter.package }}.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class Scheduler(RedBeatScheduler):
    """RedBeat, plus a heartbeat after every loop."""

    def tick(self, *args, **kwargs):
        interval = super().tick(*args, **kwargs)
        touch(get_settings().heartbeat_file)
        return interval


# RedBeat's own start-up hook blocks in the lock's acquire, silent to the health check.
signals.beat_init.disconnect(acquire_distributed_beat_lock)


@signals.beat_init.connect
def wait_for_lock(sender=None, **kwargs):
    """Take the lock, trying once per loop; a standby stays healthy meanwhile."""
    scheduler = sender.scheduler
    client = get_redis(scheduler.app)
    lock = client.lock(scheduler.lock_key, timeout=scheduler.lock_timeout)
    # RedBeat's renewal sets the expiry to the full timeout instead of adding to it.
    lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
    waiting = False
    while True:
        try:
            if lock.acquire(blocking=False):
                break
            touch(get_settings().heartbeat_file)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # No heartbeat while Redis is unreachable: the health check shows it.
            logger.warning("beat: cannot reach Redis for the lock (%s); retrying", exc)
        if not waiting:
            logger.info("beat: standby, another beat holds the lock; trying every loop")
            waiting = True
        time.sleep(scheduler.max_interval)
    logger.info("beat: acquired the lock, sending the schedule")
    scheduler.lock = lock


def beat_argv(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "{{ cookiecutter.package }}.celery_app",
        "beat",
        f"--loglevel={settings.log_level}",
    ]


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else args
    if args:
        print(
            "usage: python -m {{ cookiecutter.package }}.beat (no arguments)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    argv = beat_argv(get_settings())
    os.execv(argv[0], argv)  # noqa: S606 - become Celery beat, signals reach it directly


if __name__ == "__main__":
    main()
