"""The one place that reads configuration: environment in, typed and validated values out.

A bad value stops start-up with one line per problem, naming the variable, before anything
connects to Redis.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values shown in errors are hidden for these variables: they carry passwords.
SECRET_FIELDS = {"redis_url"}

# What each variable accepts, appended to its error so the fix is obvious.
ACCEPTED = {
    "redis_url": "redis://:<password>@<host>:<port>/<db> (a password is required)",
    "cpu_pool": "prefork or solo",
    "io_pool": "gevent or threads",
    "cpu_concurrency": "'auto' or an integer from 1 to 1024",
    "io_concurrency": "an integer from 1 to 10000",
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
    "heartbeat_file": "an absolute file path",
}

Concurrency = Annotated[int, Field(ge=1, le=1024)]


class Settings(BaseSettings):
    """Every knob of the stack. Environment variable = field name in upper case."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", validate_default=True)

    redis_url: SecretStr
    cpu_pool: Literal["prefork", "solo"] = "{{ cookiecutter.cpu_pool }}"
    io_pool: Literal["gevent", "threads"] = "{{ cookiecutter.io_pool }}"
    # "auto": Celery sizes prefork to the container's CPU quota and affinity.
    cpu_concurrency: Concurrency | Literal["auto"] = "{{ cookiecutter.cpu_concurrency }}"
    io_concurrency: int = Field({{ cookiecutter.io_concurrency }}, ge=1, le=10000)
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
    heartbeat_file: str = "/tmp/worker-heartbeat"

    @field_validator("redis_url")
    @classmethod
    def _redis_url_has_password(cls, value: SecretStr) -> SecretStr:
        from urllib.parse import urlsplit

        url = urlsplit(value.get_secret_value())
        try:
            url.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ValueError("not a redis:// or rediss:// URL with a host")
        if not url.password:
            raise ValueError("has no password")
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

    @property
    def broker_url(self) -> str:
        return self.redis_url.get_secret_value()


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
        raise SystemExit(2) from None
