"""Settings: env in, typed values out; bad values stop start-up with one line naming the variable."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package }}.settings import Settings, describe_errors

GOOD_URL = "redis://:s3cret-pass@redis:6379/0"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("REDIS_URL", GOOD_URL)
    return monkeypatch


def test_defaults_are_the_generated_choices():
    s = Settings()
    assert s.cpu_pool == "{{ cookiecutter.cpu_pool }}"
    assert s.io_pool == "{{ cookiecutter.io_pool }}"
    assert str(s.cpu_concurrency) == "{{ cookiecutter.cpu_concurrency }}"
    assert s.io_concurrency == {{ cookiecutter.io_concurrency }}
    assert s.broker_url == GOOD_URL


def test_values_from_env_are_typed(clean_env):
    clean_env.setenv("IO_CONCURRENCY", "750")
    clean_env.setenv("CPU_CONCURRENCY", "3")
    clean_env.setenv("TASK_EVENTS", "false")
    clean_env.setenv("LOG_LEVEL", "debug")
    s = Settings()
    assert (s.io_concurrency, s.cpu_concurrency, s.task_events, s.log_level) == (
        750,
        3,
        False,
        "DEBUG",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IO_CONCURRENCY", "abc"),
        ("IO_CONCURRENCY", "0"),
        ("IO_CONCURRENCY", "100000"),
        ("CPU_CONCURRENCY", "-1"),
        ("CPU_CONCURRENCY", "many"),
        ("CPU_POOL", "eventlet"),
        ("IO_POOL", "prefork"),
        ("TASK_EVENTS", "maybe"),
        ("DURABLE_PUBLISH", "maybe"),
        ("DURABLE_PUBLISH_TIMEOUT", "0"),
        ("TASK_TIME_LIMIT", "0"),
        ("VISIBILITY_TIMEOUT", "10"),
        ("LOG_LEVEL", "LOUD"),
        ("DEMO_API_URL", "ftp://example"),
        ("HEARTBEAT_FILE", "relative/path"),
        ("IO_PREFETCH_MULTIPLIER", "1"),
        ("REDIS_URL", "http://:pw@redis:6379/0"),
        ("REDIS_URL", "redis://redis:6379/0"),
        ("REDIS_URL", "redis://:pw@redis:notaport/0"),
        ("REDIS_URL", "redis://:pw@/0"),
        ("CPU_CONCURRENCY", "0"),
        ("CPU_CONCURRENCY", "2.5"),
        ("CPU_PREFETCH_MULTIPLIER", "0"),
        ("IO_CONCURRENCY", ""),
        ("TASK_TIME_LIMIT", "-5"),
        ("RESULT_EXPIRES", "1h"),
        ("MAX_MEMORY_PER_CHILD", "-1"),
        ("MAX_MEMORY_PER_CHILD", "512MB"),
        ("CPU_SOFT_SHUTDOWN_TIMEOUT", "-1"),
        ("CPU_SOFT_SHUTDOWN_TIMEOUT", "soon"),
        ("VISIBILITY_TIMEOUT", "99999999"),
    ],
)
def test_bad_value_gives_one_line_naming_the_variable(clean_env, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    lines = describe_errors(caught.value)
    assert len(lines) == 1, lines
    assert name in lines[0] and "accepted:" in lines[0]
    if name == "REDIS_URL":
        assert value not in lines[0] and "<hidden>" in lines[0]
    else:
        assert repr(value) in lines[0]


def test_missing_redis_url_is_named(clean_env):
    clean_env.delenv("REDIS_URL")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_errors(caught.value) == [
        "settings error: REDIS_URL is not set (Field required); accepted: "
        "redis://:<password>@<host>:<port>/<db> (a password is required)"
    ]


def test_visibility_timeout_must_exceed_time_limit(clean_env):
    clean_env.setenv("TASK_TIME_LIMIT", "600")
    clean_env.setenv("VISIBILITY_TIMEOUT", "300")
    with pytest.raises(ValidationError) as caught:
        Settings()
    (line,) = describe_errors(caught.value)
    assert "VISIBILITY_TIMEOUT=300 must be above TASK_TIME_LIMIT=600" in line


@pytest.mark.parametrize("kind", ["cpu", "io"])
def test_worker_refuses_to_start_on_bad_env(clean_env, kind):
    clean_env.setenv("IO_CONCURRENCY", "abc")
    proc = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package }}.worker", kind],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "settings error: IO_CONCURRENCY='abc' is invalid (Input should be a valid integer, "
        "unable to parse string as an integer); accepted: an integer from 1 to 10000"
    ]
