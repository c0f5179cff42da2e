"""Countdowns and ETAs the broker cannot hold are refused where they are published.

A delayed task waits unacknowledged in a worker; past VISIBILITY_TIMEOUT Redis hands a copy to
another worker, and each copy runs. The limit is VISIBILITY_TIMEOUT - TASK_TIME_LIMIT.
"""

import subprocess
import sys

from conftest import with_redis

# Limit 60 s: VISIBILITY_TIMEOUT 120 - TASK_TIME_LIMIT 60.
LIMITS = {"VISIBILITY_TIMEOUT": "120", "TASK_TIME_LIMIT": "60", "RETRY_BACKOFF_MAX": "10"}

PUBLISH = """
from datetime import timedelta
from {{ cookiecutter.package }}.celery_app import DelayTooLong, app
from {{ cookiecutter.package }}.tasks.cpu import noop

client = app.connection_for_write().default_channel.client
now = app.now()
refused = [
    lambda: noop.apply_async(countdown=61),
    lambda: app.send_task("{{ cookiecutter.package }}.tasks.cpu.noop", countdown=3600),
    lambda: noop.apply_async(eta=now + timedelta(seconds=600)),
    lambda: noop.apply_async(eta=(now + timedelta(days=1)).isoformat()),
]
accepted = [
    lambda: noop.apply_async(countdown=60),
    lambda: noop.apply_async(eta=now + timedelta(seconds=30)),
    lambda: noop.delay(),
]
for send in refused:
    try:
        send()
        print("sent")
    except DelayTooLong as exc:
        print("refused", exc)
print("queued", client.llen("cpu"))
for send in accepted:
    send()
print("queued", client.llen("cpu"))
"""


def test_a_countdown_or_eta_past_the_limit_is_refused_and_nothing_is_sent(
    private_redis, stack_env, tmp_path
):
    env = {**with_redis(stack_env, private_redis.url, tmp_path), **LIMITS}
    proc = subprocess.run(
        [sys.executable, "-c", PUBLISH], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["refused"] * 4 + ["queued", "queued"], lines
    assert lines[-2:] == ["queued 0", "queued 3"]
    assert lines[0] == (
        "refused {{ cookiecutter.package }}.tasks.cpu.noop: a countdown/eta 61 s ahead is above "
        "60 s (VISIBILITY_TIMEOUT=120 - TASK_TIME_LIMIT=60), so Redis would hand the waiting "
        "task to more workers and run it several times; accepted: at most 60 s ahead (or raise "
        "VISIBILITY_TIMEOUT, or schedule it with beat)"
    )
