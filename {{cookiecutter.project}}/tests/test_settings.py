"""Settings: env in, typed values out; bad values stop start-up with one line naming the variable."""

import subprocess
import sys

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package }}.settings import Settings, describe_errors

GOOD_URL = "redis://:s3cret-pass@redis:6379/0"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("REDIS_URL", GOOD_URL)
    # An empty secrets folder of the test's own: nothing from the machine's /run/secrets.
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    return monkeypatch


def test_defaults_are_the_generated_choices():
    s = Settings()
    assert s.cpu_pool == "{{ cookiecutter.cpu_pool }}"
    assert s.io_pool == "{{ cookiecutter.io_pool }}"
    assert str(s.cpu_concurrency) == "{{ cookiecutter.cpu_concurrency }}"
    assert s.io_concurrency == {{ cookiecutter.io_concurrency }}
    assert s.io_processes == 1  # worker-cpu wants the cores: docs/pools.md
    assert s.broker_url == GOOD_URL


def test_defaults_fit_the_shortest_visibility_timeout(clean_env):
    # Every other knob left at its default must be valid beside VISIBILITY_TIMEOUT's minimum.
    minimum = Settings.model_fields["visibility_timeout"].metadata[0].ge
    clean_env.setenv("VISIBILITY_TIMEOUT", str(minimum))
    clean_env.setenv("TASK_TIME_LIMIT", "30")
    assert Settings().visibility_timeout == minimum


def test_values_from_env_are_typed(clean_env):
    clean_env.setenv("IO_CONCURRENCY", "750")
    clean_env.setenv("CPU_CONCURRENCY", "3")
    clean_env.setenv("TASK_EVENTS", "false")
    clean_env.setenv("LOG_LEVEL", "debug")
    clean_env.setenv("IO_PROCESSES", "2")
    s = Settings()
    assert (s.io_concurrency, s.cpu_concurrency, s.task_events, s.log_level, s.io_processes) == (
        750,
        3,
        False,
        "DEBUG",
        2,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IO_CONCURRENCY", "abc"),
        ("IO_CONCURRENCY", "0"),
        ("IO_CONCURRENCY", "100000"),
        ("IO_PROCESSES", "0"),
        ("IO_PROCESSES", "65"),
        ("IO_PROCESSES", "two"),
        ("CPU_CONCURRENCY", "-1"),
        ("CPU_CONCURRENCY", "many"),
        ("CPU_POOL", "eventlet"),
        ("IO_POOL", "prefork"),
        ("TASK_EVENTS", "maybe"),
        ("DURABLE_PUBLISH", "maybe"),
        ("DURABLE_PUBLISH_TIMEOUT", "0"),
        ("DURABLE_PUBLISH_TIMEOUT", "60"),
        ("TASK_TIME_LIMIT", "0"),
        ("VISIBILITY_TIMEOUT", "10"),
        ("LOG_LEVEL", "LOUD"),
        ("DEMO_API_URL", "ftp://example"),
        ("HEARTBEAT_FILE", "relative/path"),
        ("IO_PREFETCH_MULTIPLIER", "1"),
        ("REDIS_URL", "http://:pw@redis:6379/0"),
        ("FLOWER_USER", "ad:min"),
        ("REDIS_URL", "redis://:pw@redis:notaport/0"),
        ("REDIS_URL", "redis://:pw@/0"),
        ("FLOWER_PASSWORD", "a,b"),
        ("FLOWER_PASSWORD", ""),
        ("REDIS_URL", "redis://:pw@[::1/0"),
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
    if name in ("REDIS_URL", "FLOWER_PASSWORD"):
        assert "<hidden>" in lines[0] and (not value or value not in lines[0])
    else:
        assert repr(value) in lines[0]


def test_missing_redis_url_is_named(clean_env):
    clean_env.delenv("REDIS_URL")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_errors(caught.value) == [
        "settings error: REDIS_URL is not set (Field required); accepted: "
        "redis://<host>:<port>/<db> with REDIS_PASSWORD, or redis://:<password>@<host>:<port>/<db>"
    ]


def test_visibility_timeout_must_exceed_time_limit(clean_env):
    clean_env.setenv("TASK_TIME_LIMIT", "600")
    clean_env.setenv("VISIBILITY_TIMEOUT", "300")
    with pytest.raises(ValidationError) as caught:
        Settings()
    (line,) = describe_errors(caught.value)
    assert "VISIBILITY_TIMEOUT=300 must be above TASK_TIME_LIMIT=600" in line


{% if cookiecutter.web_api == "fastapi" %}BAD_CONCURRENCY = (
    "settings error: IO_CONCURRENCY='abc' is invalid (Input should be a valid integer, "
    "unable to parse string as an integer); accepted: an integer from 1 to 10000"
)
NO_API_KEY = (
    "settings error: API_KEY is not set; accepted: a string of at least 16 characters "
    "(env or the file api_key in SECRETS_DIR)"
)


@pytest.mark.parametrize(
    ("argv", "env", "line"),
    [
        (["worker", "cpu"], {"IO_CONCURRENCY": "abc"}, BAD_CONCURRENCY),
        (["worker", "io"], {"IO_CONCURRENCY": "abc"}, BAD_CONCURRENCY),
        (["api", "--port", "0"], {}, NO_API_KEY),  # the web API wants its key
    ],
    ids=["worker-cpu", "worker-io", "api"],
)
def test_a_process_refuses_to_start_on_bad_env(clean_env, argv, env, line):
    for name, value in env.items():
        clean_env.setenv(name, value)
    module, *args = argv
{% else %}@pytest.mark.parametrize("kind", ["cpu", "io"])
def test_worker_refuses_to_start_on_bad_env(clean_env, kind):
    clean_env.setenv("IO_CONCURRENCY", "abc")
{% endif %}    proc = subprocess.run(
{% if cookiecutter.web_api == "fastapi" %}        [sys.executable, "-m", f"{{ cookiecutter.package }}.{module}", *args],
{% else %}        [sys.executable, "-m", "{{ cookiecutter.package }}.worker", kind],
{% endif %}        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
{% if cookiecutter.web_api == "fastapi" %}    assert proc.stderr.strip().splitlines() == [line]
{% else %}    assert proc.stderr.strip().splitlines() == [
        "settings error: IO_CONCURRENCY='abc' is invalid (Input should be a valid integer, "
        "unable to parse string as an integer); accepted: an integer from 1 to 10000"
    ]
{% endif %}

def test_password_from_a_file_in_secrets_dir(clean_env, tmp_path):
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    # Trailing newline as `echo > file` leaves it; characters that need percent-encoding.
    (tmp_path / "redis_password").write_text("p/w#x@y:z%\n")
    (tmp_path / "flower_password").write_text("flower-pw\n")
    s = Settings()
    assert s.broker_url == "redis://:p%2Fw%23x%40y%3Az%25@redis:6379/0"
    assert s.flower_password.get_secret_value() == "flower-pw"


def settings_errors() -> list[str]:
    with pytest.raises(ValidationError) as caught:
        Settings()
    return describe_errors(caught.value)


def test_each_role_logs_in_with_its_own_password_file(clean_env, tmp_path):
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    (tmp_path / "redis_password").write_text("admin-pw\n")
    (tmp_path / "redis_worker_password").write_text("worker-pw\n")
    assert Settings().broker_url == "redis://:admin-pw@redis:6379/0"  # no role: default user
    clean_env.setenv("REDIS_USER", "worker")
    assert Settings().broker_url == "redis://worker:worker-pw@redis:6379/0"
    # Redis's own default user is the requirepass secret (a managed Redis's one user).
    clean_env.setenv("REDIS_USER", "default")
    assert Settings().broker_url == "redis://default:admin-pw@redis:6379/0"


def test_a_role_without_its_file_never_logs_in_with_another(clean_env, tmp_path):
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    clean_env.setenv("REDIS_USER", "flower")
    (tmp_path / "redis_password").write_text("admin-pw")
    assert settings_errors() == [
        "settings error: no Redis password: REDIS_URL has none and REDIS_PASSWORD is not set; "
        "accepted: REDIS_PASSWORD (env or the file redis_flower_password in SECRETS_DIR) or "
        "REDIS_URL redis://:<password>@<host>:<port>/<db>"
    ]


@pytest.mark.parametrize("user", ["Worker", "work er", "worker/../x", "-x", "w" * 65])
def test_a_bad_redis_user_is_named_with_what_is_accepted(clean_env, user):
    clean_env.setenv("REDIS_USER", user)
    assert settings_errors() == [
        f"settings error: REDIS_USER={user!r} is invalid (not a valid Redis ACL user name); "
        "accepted: a Redis ACL user name: lower-case letter first, then lower-case letters, "
        "digits, '-' or '_', up to 64 (this stack's: worker, producer, flower, exporter)"
    ]


def test_the_url_and_redis_user_name_one_user(clean_env):
    clean_env.setenv("REDIS_URL", "redis://app:pw@redis:6379/0")
    clean_env.setenv("REDIS_USER", "app")
    assert Settings().broker_url == "redis://app:pw@redis:6379/0"
    clean_env.setenv("REDIS_USER", "worker")
    assert settings_errors() == [
        "settings error: REDIS_URL names a user other than REDIS_USER=worker; accepted: the "
        "user in one of them, or the same in both"
    ]


def test_password_from_env_keeps_the_username(clean_env):
    clean_env.setenv("REDIS_URL", "rediss://app@redis:6380/2?ssl_cert_reqs=required")
    clean_env.setenv("REDIS_PASSWORD", "pw")
    assert Settings().broker_url == "rediss://app:pw@redis:6380/2?ssl_cert_reqs=required"


def test_broker_url_password_reaches_redis_py_intact(clean_env):
    import redis

    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    clean_env.setenv("REDIS_PASSWORD", "p/w#x@y:z% ")
    kwargs = redis.connection.parse_url(Settings().broker_url)
    assert kwargs["password"] == "p/w#x@y:z% "


def test_env_wins_over_the_file(clean_env, tmp_path):
    (tmp_path / "flower_password").write_text("from-file")
    clean_env.setenv("FLOWER_PASSWORD", "from-env")
    assert Settings().flower_password.get_secret_value() == "from-env"


def test_password_in_url_and_redis_password_is_an_error(clean_env, tmp_path):
    (tmp_path / "redis_password").write_text("other")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_errors(caught.value) == [
        "settings error: REDIS_URL carries a password and REDIS_PASSWORD is set too; "
        "accepted: one of them"
    ]


def test_no_password_anywhere_is_an_error(clean_env):
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    with pytest.raises(ValidationError) as caught:
        Settings()
    (line,) = describe_errors(caught.value)
    assert line.startswith("settings error: no Redis password: REDIS_URL has none")


def test_secrets_dir_that_is_not_a_folder_is_named(clean_env, tmp_path):
    clean_env.setenv("SECRETS_DIR", str(tmp_path / "nope"))
    proc = subprocess.run(
        [sys.executable, "-m", "{{ cookiecutter.package }}.worker", "cpu"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"settings error: SECRETS_DIR='{tmp_path / 'nope'}' is not a folder; "
        "accepted: the folder holding redis_password and flower_password files"
    ]


# Passwords whose '/', '#', '@' or ':' move urlsplit's netloc split, so a parser's message
# would quote part of them (the review reproduced "...integer value as 'abc'").
LEAKY_PASSWORDS = ["Qz7/Kx9w", "Qz7#Kx9w", "Qz7@Kx9/w", "Qz7:Kx9#w", "/#@:Qz7", "Qz7:Kx9@w"]


@pytest.mark.parametrize("password", LEAKY_PASSWORDS)
def test_no_part_of_a_password_appears_in_errors(clean_env, password):
    clean_env.setenv("REDIS_URL", f"redis://:{password}@redis:6379/0")
    clean_env.setenv("FLOWER_PASSWORD", password + ",")
    clean_env.setenv("IO_CONCURRENCY", "abc")  # one error always: describe_errors always runs
    with pytest.raises(ValidationError) as caught:
        Settings()
    text = "\n".join(describe_errors(caught.value))
    pieces = {password[i:j] for i in range(len(password)) for j in range(i + 3, len(password) + 1)}
    assert not {p for p in pieces if p in text}, text


def test_flower_login_comes_from_settings(clean_env, tmp_path):
    from {{ cookiecutter.package }} import flower

    (tmp_path / "flower_password").write_text("s3cret\n")
    clean_env.setenv("FLOWER_USER", "ops")
    assert flower.basic_auth(Settings()) == "ops:s3cret"


def test_flower_refuses_to_start_without_a_password(clean_env):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "{{ cookiecutter.package }}.flower",
            "--port=1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("settings error: FLOWER_PASSWORD is not set (Flower needs a login)")


@pytest.mark.parametrize("query", ["", "?ssl_cert_reqs=", "?ssl_cert_reqs=maybe"])
def test_rediss_url_needs_ssl_cert_reqs(clean_env, query):
    clean_env.setenv("REDIS_URL", f"rediss://redis:6380/0{query}")
    with pytest.raises(ValidationError, match="needs \\?ssl_cert_reqs= set to one of required"):
        Settings()


@pytest.mark.parametrize("value", ["required", "CERT_REQUIRED", "optional", "none"])
def test_rediss_url_with_ssl_cert_reqs_builds_the_backend(clean_env, value):
    clean_env.setenv("REDIS_URL", f"rediss://redis:6380/0?ssl_cert_reqs={value}")
    clean_env.setenv("REDIS_PASSWORD", "pw")
    from celery import Celery

    # Celery's own check on the URL, with no connection made.
    Celery(backend=Settings().broker_url).backend  # noqa: B018


def test_tls_options_pass_a_rediss_urls_ssl_parameters_on():
    from {{ cookiecutter.package }}.celery_app import tls_options

    url = "rediss://:pw@redis:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem&health=1"
    assert tls_options(url) == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"}
    assert tls_options("redis://:pw@redis:6379/0?ssl_cert_reqs=required") is None
{% if cookiecutter.web_api == "fastapi" %}

def test_a_short_api_key_is_refused_without_showing_it(clean_env):
    clean_env.setenv("API_KEY", "short-key")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert describe_errors(caught.value) == [
        "settings error: API_KEY=<hidden> is invalid (is shorter than 16 characters); "
        "accepted: a string of at least 16 characters (env or the file api_key in SECRETS_DIR)"
    ]
{% endif %}