"""The one place that reads configuration: environment in, typed and validated values out.

{% if cookiecutter.web_api == "fastapi" %}Secrets (REDIS_PASSWORD, FLOWER_PASSWORD, API_KEY) come from the environment or from a file named after
{% else %}Secrets (REDIS_PASSWORD, FLOWER_PASSWORD) come from the environment or from a file named after
{% endif %}the variable in lower case in SECRETS_DIR (default /run/secrets, where compose, Swarm and
Kubernetes mount them). With REDIS_USER (the Redis ACL user of this process's role, see
deploy/redis/acl.sh) the password file is that user's: redis_<user>_password. A bad value stops start-up with one line per problem, naming the
variable, before anything connects to Redis; secret values are never printed.
"""

from __future__ import annotations

import os
import re
import sys
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qs, quote, urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRETS_DIR = "/run/secrets"

# Values shown in errors are hidden for these variables: they carry passwords. Their
# validators raise fixed messages only (a parser's message can quote part of the input).
{% if cookiecutter.web_api == "fastapi" %}SECRET_FIELDS = {"redis_url", "redis_password", "flower_password", "api_key"}
{% else %}SECRET_FIELDS = {"redis_url", "redis_password", "flower_password"}
{% endif %}
# The values Celery's result backend accepts for a rediss:// URL's ssl_cert_reqs (any case).
_CERT_REQS = {"required", "optional", "none", "cert_required", "cert_optional", "cert_none"}

# A Redis ACL user name as acl.sh writes them; also keeps the file name redis_<user>_password plain.
_USER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")

# What each variable accepts, appended to its error so the fix is obvious.
ACCEPTED = {
    "redis_url": "redis://<host>:<port>/<db> with REDIS_PASSWORD, or redis://:<password>@<host>:<port>/<db>",
    "redis_password": (
        "a non-empty string (env, or in SECRETS_DIR the file redis_<user>_password with "
        "REDIS_USER, redis_password without)"
    ),
    "redis_user": (
        "a Redis ACL user name: lower-case letter first, then lower-case letters, digits, '-' "
        "or '_', up to 64 (this stack's: worker, producer, flower, exporter)"
    ),
    "flower_user": "a name without ':' or ','",
    "flower_password": "a non-empty string without ',' (env or the file flower_password in SECRETS_DIR)",
{% if cookiecutter.web_api == "fastapi" %}    "api_key": "a string of at least 16 characters (env or the file api_key in SECRETS_DIR)",
    "api_publish_timeout": "seconds, a number above 0 and up to 30",
{% endif %}    "cpu_pool": "prefork or solo",
    "io_pool": "gevent or threads",
    "cpu_concurrency": "'auto' or an integer from 1 to 1024",
    "io_concurrency": "an integer from 1 to 10000",
    "io_processes": "an integer from 1 to 64 (io worker processes per container)",
    "cpu_prefetch_multiplier": "an integer from 1 to 64",
    "io_prefetch_multiplier": "an integer from 2 to 64",
    "task_events": "true or false",
    "task_events_flush_interval": "seconds, a number above 0 and up to 60",
    "task_time_limit": "seconds, an integer from 1 to 86400",
    "visibility_timeout": "seconds, an integer from 60 to 604800, above TASK_TIME_LIMIT",
    "result_expires": "seconds, an integer from 60 to 604800",
    "max_memory_per_child": "KiB, 0 (no cap) or an integer up to 67108864",
    "cpu_soft_shutdown_timeout": "seconds, 0 (warm shutdown) or an integer up to 3600",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "demo_api_url": "an http:// or https:// URL",
    "demo": "true or false (true needs src/{{ cookiecutter.package }}/demo)",
    "heartbeat_file": "an absolute file path",
    "beat_max_loop_interval": "seconds, an integer from 1 to 5 (the health check allows 15 s)",
    "beat_lock_timeout": "seconds, an integer from 3 to 600, at least 3 x BEAT_MAX_LOOP_INTERVAL",
    "io_max_retries": "an integer from 0 to 50",
    "retry_backoff_base": "seconds, a number from 0.01 to 60",
    "retry_backoff_max": (
        "seconds, a number from 0.01 to 3600, at most VISIBILITY_TIMEOUT - TASK_TIME_LIMIT"
    ),
    "durable_publish": "true or false (true needs Redis 7.2+ with appendonly yes)",
    "durable_publish_timeout": "seconds, a number above 0 and up to 25",
    "deadletter_max": "an integer from 1 to 10000000 (entries kept; the oldest are dropped and counted)",
    "reliable_redis": "true or false",
}

Concurrency = Annotated[int, Field(ge=1, le=1024)]


class Settings(BaseSettings):
    """Every knob of the stack. Environment variable = field name in upper case."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    redis_url: SecretStr
    redis_password: SecretStr | None = None
    # The Redis ACL user this process connects as (its role); unset: Redis's default user.
    redis_user: str | None = None
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
{% if cookiecutter.web_api == "fastapi" %}    # The web API's clients send it as a bearer token (api.py); without it the API refuses to start.
    api_key: SecretStr | None = None
    # The API answers 503 when a publish has not reached Redis within this long.
    api_publish_timeout: float = Field(5.0, gt=0, le=30)
{% endif %}    cpu_pool: Literal["prefork", "solo"] = "{{ cookiecutter.cpu_pool }}"
    io_pool: Literal["gevent", "threads"] = "{{ cookiecutter.io_pool }}"
    # "auto": Celery sizes prefork to the container's CPU quota and affinity.
    cpu_concurrency: Concurrency | Literal["auto"] = "{{ cookiecutter.cpu_concurrency }}"
    io_concurrency: int = Field({{ cookiecutter.io_concurrency }}, ge=1, le=10000)
    # io worker processes per container, each IO_CONCURRENCY wide (supervise.py). One: each
    # tops out near one core, and worker-cpu wants the cores too (docs/pools.md).
    io_processes: int = Field(1, ge=1, le=64)
    # CPU tasks are long: take one at a time so an idle sibling can take the next.
    cpu_prefetch_multiplier: int = Field(1, ge=1, le=64)
    # gevent drains its queue with a 2 s timeout; a multiplier of 1 starves it.
    io_prefetch_multiplier: int = Field(4, ge=2, le=64)
    task_events: bool = True
    # gevent worker: task events go out in batches at least this often (events.py).
    task_events_flush_interval: float = Field(0.5, gt=0, le=60)
    task_time_limit: int = Field(300, ge=1, le=86400)
    # A task of a worker killed outright (OOM, SIGKILL) comes back after this long: above the
    # longest a message may sit reserved plus run, shorter means faster recovery.
    visibility_timeout: int = Field(1800, ge=60, le=604800)
    result_expires: int = Field(3600, ge=60, le=604800)
    max_memory_per_child: int = Field(512_000, ge=0, le=67_108_864)
    # prefork only: on SIGTERM let running tasks finish for this long, then re-queue the rest
    # at once (0 = plain warm shutdown). Keep below CPU_STOP_GRACE_PERIOD.
    cpu_soft_shutdown_timeout: int = Field(45, ge=0, le=3600)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    demo_api_url: AnyHttpUrl = AnyHttpUrl("http://demo-api:8000")
    # Beat also sends the demo's example entries (demo/schedule.py): the local stack only.
    demo: bool = False
    heartbeat_file: str = "/tmp/worker-heartbeat"
    # Beat wakes at least this often; the lock holder renews the lock on each wake-up.
    beat_max_loop_interval: int = Field(5, ge=1, le=5)
    # A standby beat takes over at most this long (plus one loop) after the holder dies.
    beat_lock_timeout: int = Field(30, ge=3, le=600)
    # Transient I/O failures: retried this often, waits doubling from the base up to the max.
    io_max_retries: int = Field(5, ge=0, le=50)
    retry_backoff_base: float = Field(1.0, ge=0.01, le=60)
    # 30 s: fits the shortest VISIBILITY_TIMEOUT accepted (60) with a TASK_TIME_LIMIT up to 30.
    retry_backoff_max: float = Field(30.0, ge=0.01, le=3600)
    # Opt-in: the producer returns only once Redis has fsynced what it published (WAITAOF,
    # Redis 7.2+); otherwise a machine crash can lose the last ~1 s of sent tasks. See durable.py.
    durable_publish: bool = False
    # Below the broker connection's socket_timeout (30 s), which would cut the wait short.
    durable_publish_timeout: float = Field(5.0, gt=0, le=25)
    # Dead letters kept at most; beyond it the oldest go (counted in deadletter.dropped), so a
    # bad deploy failing every task cannot fill Redis, where a full Redis stops every worker.
    deadletter_max: int = Field(10_000, ge=1, le=10_000_000)
    # false: stock kombu transport and RedisBackend (packages/celery-redis-reliable/README.md).
    reliable_redis: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over a file; no secrets folder (a laptop) is not an error.
        folder = secrets_dir()
        if folder is None:
            return init_settings, env_settings
        role = RolePasswordSource(settings_cls, folder)
        return init_settings, env_settings, role, SecretsSettingsSource(settings_cls, folder)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr) -> SecretStr:
        try:
            url = urlsplit(value.get_secret_value())
            url.port  # noqa: B018 - parsing the port is the check
        except ValueError:
            # Fixed text: the parser's own message quotes part of the netloc (the password).
            raise ValueError(
                "not a valid URL: bad host or port (percent-encode '/', '#', '@' in a password)"
            ) from None
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ValueError("not a redis:// or rediss:// URL with a host")
        if url.scheme == "rediss":
            # Celery's result backend refuses a rediss:// URL without it, at first use.
            reqs = parse_qs(url.query).get("ssl_cert_reqs", [""])[-1]
            if reqs.lower() not in _CERT_REQS:
                raise ValueError(
                    "a rediss:// URL needs ?ssl_cert_reqs= set to one of "
                    "required, optional, none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)"
                )
        return value

    @field_validator("redis_user", mode="before")
    @classmethod
    def _unset_if_empty(cls, value: object) -> object:
        return None if value == "" else value  # REDIS_USER= in a .env: the default user

    @field_validator("redis_user")
    @classmethod
    def _redis_user(cls, value: str | None) -> str | None:
        if value is not None and not _USER_NAME.fullmatch(value):
            raise ValueError("not a valid Redis ACL user name")
        return value

    @field_validator("redis_password", "flower_password")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("is empty")
{% if cookiecutter.web_api == "fastapi" %}        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("is shorter than 16 characters")
{% endif %}        return value

    @field_validator("flower_password")
    @classmethod
    def _flower_password(cls, value: SecretStr | None) -> SecretStr | None:
        # Flower splits its FLOWER_BASIC_AUTH list on ','.
        if value is not None and "," in value.get_secret_value():
            raise ValueError("contains ','")
        return value

    @field_validator("flower_user")
    @classmethod
    def _flower_user(cls, value: str) -> str:
        if not value or ":" in value or "," in value:
            raise ValueError("is empty or contains ':' or ','")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("heartbeat_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("is not an absolute path")
        return value

    @model_validator(mode="after")
    def _visibility_above_time_limit(self) -> Settings:
        # Redis re-delivers unacked tasks after the visibility timeout: a shorter
        # timeout than the longest task would run that task twice.
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"VISIBILITY_TIMEOUT={self.visibility_timeout} must be above "
                f"TASK_TIME_LIMIT={self.task_time_limit}"
            )
        return self

    @model_validator(mode="after")
    def _lock_outlives_loops(self) -> Settings:
        # The holder renews the lock once per loop: a lock shorter than a few loops would
        # expire under a briefly stalled holder and hand the schedule to the standby.
        if self.beat_lock_timeout < 3 * self.beat_max_loop_interval:
            raise ValueError(
                f"BEAT_LOCK_TIMEOUT={self.beat_lock_timeout} must be at least 3 x "
                f"BEAT_MAX_LOOP_INTERVAL={self.beat_max_loop_interval}"
            )
        return self

    @model_validator(mode="after")
    def _retry_wait_below_visibility(self) -> Settings:
        # A retry waits in the worker as an unacknowledged message, then runs: waiting plus
        # running past the visibility timeout would have Redis hand it to a second worker too.
        # Longer waits are refused at publish time (celery_app.delay_problem).
        limit = self.visibility_timeout - self.task_time_limit
        if self.retry_backoff_max > limit:
            raise ValueError(
                f"RETRY_BACKOFF_MAX={self.retry_backoff_max:g} must be at most "
                f"VISIBILITY_TIMEOUT={self.visibility_timeout} - "
                f"TASK_TIME_LIMIT={self.task_time_limit} = {limit}"
            )
        return self

    @model_validator(mode="after")
    def _one_redis_user(self) -> Settings:
        named = urlsplit(self.redis_url.get_secret_value()).username
        if named and self.redis_user and named != self.redis_user:
            raise ValueError(
                f"REDIS_URL names a user other than REDIS_USER={self.redis_user}; "
                "accepted: the user in one of them, or the same in both"
            )
        return self

    @model_validator(mode="after")
    def _one_redis_password(self) -> Settings:
        in_url = bool(urlsplit(self.redis_url.get_secret_value()).password)
        if in_url and self.redis_password is not None:
            raise ValueError(
                "REDIS_URL carries a password and REDIS_PASSWORD is set too; accepted: one of them"
            )
        if not in_url and self.redis_password is None:
            user = self.redis_user
            file = f"redis_{user}_password" if user not in (None, "default") else "redis_password"
            raise ValueError(
                "no Redis password: REDIS_URL has none and REDIS_PASSWORD is not set; accepted: "
                f"REDIS_PASSWORD (env or the file {file} in SECRETS_DIR) or REDIS_URL "
                "redis://:<password>@<host>:<port>/<db>"
            )
        return self

    @property
    def broker_url(self) -> str:
        """REDIS_URL with REDIS_USER and the password in it, percent-encoded if they came
        from REDIS_USER and REDIS_PASSWORD."""
        raw = self.redis_url.get_secret_value()
        url = urlsplit(raw)
        if self.redis_password is None:
            if self.redis_user and not url.username:
                host = url.netloc.rpartition("@")[2]
                password = url.netloc.rpartition("@")[0].partition(":")[2]
                return url._replace(netloc=f"{self.redis_user}:{password}@{host}").geturl()
            return raw
        user = quote(self.redis_user or url.username or "", safe="")
        password = quote(self.redis_password.get_secret_value(), safe="")
        host = url.netloc.rpartition("@")[2]
        return url._replace(netloc=f"{user}:{password}@{host}").geturl()


class RolePasswordSource(PydanticBaseSettingsSource):
    """REDIS_PASSWORD from the file of REDIS_USER's role, redis_<user>_password in SECRETS_DIR.

    With REDIS_USER set, the default user's file (redis_password) is not read: a missing role
    file is an error naming it, not a login as the wrong user."""

    def __init__(self, settings_cls: type[BaseSettings], folder: Path):
        super().__init__(settings_cls)
        self.folder = folder

    def get_field_value(self, field, field_name):  # unused: __call__ reads the one file
        return None, field_name, False

    def __call__(self) -> dict[str, object]:
        user = self.current_state.get("redis_user")
        if not isinstance(user, str) or not _USER_NAME.fullmatch(user):
            return {}  # no role, or a bad name the validator reports
        # Redis's own default user has the requirepass secret (managed Redis: one user).
        name = "redis_password" if user == "default" else f"redis_{user}_password"
        path = self.folder / name
        return {"redis_password": path.read_text().strip() if path.is_file() else None}


def secrets_dir() -> Path | None:
    """SECRETS_DIR (default /run/secrets) if it is a folder; a SECRETS_DIR set to anything
    else is an error, a missing default is not."""
    given = os.environ.get("SECRETS_DIR")
    folder = Path(given or DEFAULT_SECRETS_DIR)
    if folder.is_dir():
        return folder
    if given:
        raise SecretsDirError(
            f"settings error: SECRETS_DIR={given!r} is not a folder; "
            "accepted: the folder holding redis_password and flower_password files"
        )
    return None


class SecretsDirError(Exception):
    pass


def describe_errors(error: ValidationError) -> list[str]:
    """One readable line per invalid variable: name, value given, what is accepted."""
    lines: dict[str, str] = {}  # keyed by field: a union reports each branch
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        reason = item["msg"].removeprefix("Value error, ")
        if not field:
            lines.setdefault(reason, f"settings error: {reason}")
            continue
        if item["type"] == "missing":
            given = " is not set"
        elif field in SECRET_FIELDS:
            given = "=<hidden> is invalid"
            if item["type"] != "value_error":  # only our own messages are known to be fixed
                reason = "not a valid value"
        else:
            given = f"={item['input']!r} is invalid"
        accepted = ACCEPTED.get(field, "")
        lines.setdefault(
            field, f"settings error: {field.upper()}{given} ({reason}); accepted: {accepted}"
        )
    return list(lines.values())


@cache
def get_settings() -> Settings:
    """Load settings once; on bad input print the problems and exit with status 2."""
    try:
        return Settings()
    except ValidationError as error:
        for line in describe_errors(error):
            print(line, file=sys.stderr)
    except SecretsDirError as error:
        print(error, file=sys.stderr)
    raise SystemExit(2)
