"""The guard: installed celery/kombu pass; a changed guarded body or an untested version stops
the import with one line naming what changed."""

import subprocess
import sys

import celery
import kombu
import pytest
from celery_redis_reliable import __version__, guard


def test_installed_versions_pass():
    assert guard.problem() is None
    assert set(guard.current_sources()) == set(guard.SOURCES)


def import_after(change: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # A fresh interpreter: change kombu/Celery first, then import the library as any process would.
    script = f"{change}\nimport celery_redis_reliable\nprint('imported')\n"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )


BODY = """
from kombu.transport import redis
def _brpop_read(self, **options):
    return None
redis.Channel._brpop_read = _brpop_read
"""


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (BODY, "kombu.transport.redis.Channel._brpop_read"),
        (
            "from kombu.transport import redis\n"
            "redis.QoS.restore_visible = lambda self, start=0, num=10, interval=10: None",
            "kombu.transport.redis.QoS.restore_visible",
        ),
        (
            "from celery.backends import redis\n"
            "def _set(self, key, value, expires=None):\n    pass\nredis.RedisBackend._set = _set",
            "celery.backends.redis.RedisBackend._set",
        ),
        (
            "from celery.events import dispatcher\n"
            "def flush(self, errors=True, groups=True):\n    pass\n"
            "dispatcher.EventDispatcher.flush = flush",
            "celery.events.dispatcher.EventDispatcher.flush",
        ),
    ],
)
def test_a_changed_body_stops_the_import_naming_it(change, named):
    proc = import_after(change)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        f"celery_redis_reliable {__version__} was not ported to kombu {kombu.__version__} / "
        f"celery {celery.__version__}: changed {named}; pin kombu=="
    ), line
    assert line.endswith("(runbook: packages/celery-redis-reliable/README.md)")


def test_a_version_outside_the_range_asks_for_the_pinned_range():
    proc = import_after("import kombu\nkombu.__version__ = '5.8.1'")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "installed kombu 5.8.1 (tested: 5.7.x): install the range the library pins" in line


def test_warn_mode_logs_and_imports(monkeypatch):
    import os

    env = {**os.environ, "CELERY_REDIS_RELIABLE_GUARD": "warn"}
    proc = import_after(BODY, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "imported"
    assert "kombu.transport.redis.Channel._brpop_read" in proc.stderr


def test_an_unknown_guard_mode_is_refused():
    import os

    env = {**os.environ, "CELERY_REDIS_RELIABLE_GUARD": "off"}
    (line,) = import_after(BODY, env).stderr.splitlines()
    assert line == "CELERY_REDIS_RELIABLE_GUARD='off': accepted are fail or warn"
