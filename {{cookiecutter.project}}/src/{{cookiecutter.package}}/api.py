"""The web producer: enqueue tasks over HTTP and report their state. Docs at /docs.

    python -m {{ cookiecutter.package }}.api --port 8000

Callers never name a queue: each task goes where ``task_routes`` sends it (celery_app.py).
Every route but the health checks and the docs wants ``Authorization: Bearer <API_KEY>``.
Redis calls run in worker threads, never on the event loop; a publish that does not reach
Redis within API_PUBLISH_TIMEOUT answers 503, and 202 means the task is in Redis (on disk
too with DURABLE_PUBLISH=true).
"""

from __future__ import annotations

import argparse
import hmac
import sys
from typing import Annotated, Any

import anyio
import uvicorn
from celery_redis_reliable import durable
from fastapi import Depends, FastAPI, HTTPException, Path, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field, HttpUrl
from redis.exceptions import RedisError

from {{ cookiecutter.package }} import pipeline
from {{ cookiecutter.package }}.celery_app import DelayTooLong
from {{ cookiecutter.package }}.celery_app import app as celery
from {{ cookiecutter.package }}.settings import get_settings
from {{ cookiecutter.package }}.tasks import cpu, io

# Celery's current app is per thread, and Redis calls run in worker threads: make this app the
# default there too (durable publishing, canvas), not a blank one aiming at localhost.
celery.set_default()

# A few quick tries within the publish timeout; Celery's default retries for ~10 s.
PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.3, "interval_max": 1}


class Enqueued(BaseModel):
    id: str
    queue: str = Field(description="where task_routes sent it")
    state_url: str


class TaskState(BaseModel):
    id: str
    state: str = Field(description="PENDING also means unknown: Celery cannot tell them apart")
    result: Any = None
    error: str | None = None
    worker: str | None = Field(None, description="for tasks that return run_info (tasks/)")
    queue: str | None = None


class CountPrimes(BaseModel):
    limit: int = Field(ge=2, le=10_000_000, description="count the primes below this")


class WaitOnApi(BaseModel):
    seconds: float = Field(ge=0, le=io.MAX_DELAY, description="how long the demo API waits")


class Fetch(BaseModel):
    url: HttpUrl
    timeout: float = Field(30.0, gt=0, le=300)


class Pipeline(BaseModel):
    urls: list[HttpUrl] = Field(min_length=1, max_length=500)


bearer = HTTPBearer(auto_error=False, description="the API key (secrets/api_key)")


def require_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    expected = get_settings().api_key
    given = credentials.credentials if credentials else ""
    # Constant time: the comparison tells nothing about how much of a wrong key was right.
    if expected is None or not hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API key: send Authorization: Bearer <API_KEY>",
            headers={"WWW-Authenticate": "Bearer"},
        )


# Swagger UI at /docs from files installed with fastapi-offline: no CDN (none reachable here,
# nor behind many firewalls).
web: FastAPI = FastAPIOffline(
    title="{{ cookiecutter.project_name }}",
    summary="Enqueue tasks by route and read their state",
    redoc_url=None,
    static_url="/static/docs",
)
guarded = [Depends(require_key)]


def unavailable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail)


def error_text(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def in_thread(call, what: str, failed: str):
    """Run a blocking Redis call off the event loop; 503 if Redis fails or does not answer
    in time (``what``: what is then unknown; ``failed``: what a refused call means)."""
    timeout = get_settings().api_publish_timeout
    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    except TimeoutError:
        raise unavailable(f"Redis did not answer within {timeout:g} s: {what} is unknown") from None
    except durable.DurablePublishError as exc:  # sent; Redis cannot say it is on disk
        raise unavailable(
            f"not confirmed on disk ({error_text(exc)}): sent, it may still run"
        ) from None
    except (OperationalError, RedisError, OSError) as exc:
        raise unavailable(f"Redis unreachable ({error_text(exc)}): {failed}") from None


async def enqueue(signature, queue: str) -> Enqueued:
    def publish():
        if get_settings().durable_publish:
            with durable.durable_batch() as producer:  # returns once Redis has it on disk
                return signature.apply_async(
                    producer=producer, retry=True, retry_policy=PUBLISH_RETRY
                )
        return signature.apply_async(retry=True, retry_policy=PUBLISH_RETRY)

    try:
        result = await in_thread(publish, "whether the task was enqueued", "not enqueued")
    except DelayTooLong as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    return Enqueued(id=result.id, queue=queue, state_url=f"/tasks/{result.id}")


def route_of(task) -> str:
    return celery.amqp.router.route({}, task.name)["queue"].name


@web.post("/tasks/count-primes", status_code=202, dependencies=guarded, tags=["cpu"])
async def count_primes(body: CountPrimes) -> Enqueued:
    """Count primes below ``limit`` on the cpu queue (prefork worker)."""
    return await enqueue(cpu.count_primes.s(body.limit), route_of(cpu.count_primes))


@web.post("/tasks/wait-on-api", status_code=202, dependencies=guarded, tags=["io"])
async def wait_on_api(body: WaitOnApi) -> Enqueued:
    """Wait on the demo API for ``seconds`` on the io queue (gevent worker)."""
    return await enqueue(io.wait_on_api.s(body.seconds), route_of(io.wait_on_api))


@web.post("/tasks/fetch", status_code=202, dependencies=guarded, tags=["io"])
async def fetch(body: Fetch) -> Enqueued:
    """GET ``url`` on the io queue."""
    return await enqueue(io.fetch.s(str(body.url), body.timeout), route_of(io.fetch))


@web.post("/pipelines", status_code=202, dependencies=guarded, tags=["pipeline"])
async def start_pipeline(body: Pipeline) -> Enqueued:
    """Fetch every URL on io, then reduce them on cpu (a chord); the id is the reduce's."""
    urls = [str(url) for url in body.urls]
    result = await in_thread(
        lambda: pipeline.build(urls), "whether the pipeline started", "not started, or in part"
    )
    return Enqueued(
        id=result.id, queue=route_of(cpu.reduce_fetches), state_url=f"/tasks/{result.id}"
    )


@web.get("/tasks/{task_id}", dependencies=guarded, tags=["state"])
async def task_state(task_id: Annotated[str, Path(max_length=255)]) -> TaskState:
    """A task's state, its result or error, and where it ran."""
    meta = await in_thread(
        lambda: celery.backend.get_task_meta(task_id), "its state", "state unknown"
    )
    state, value = meta["status"], meta.get("result")
    if state == "FAILURE" or isinstance(value, BaseException):
        return TaskState(id=task_id, state=state, error=f"{type(value).__name__}: {value}")
    where = value if isinstance(value, dict) else {}
    if where.get("steps"):  # a pipeline's reduce: where its last step ran
        where = where["steps"][-1]
    return TaskState(
        id=task_id, state=state, result=value, worker=where.get("worker"), queue=where.get("queue")
    )


@web.get("/healthz", include_in_schema=False)
async def live() -> dict:
    """Liveness: the server answers; Redis is not asked (an outage restarts nothing)."""
    return {"ok": True}


@web.get("/readyz", include_in_schema=False)
async def ready() -> JSONResponse:
    """Readiness: Redis answers a PING within the publish timeout."""

    def ping() -> bool:
        with celery.connection_for_write() as conn:
            return bool(conn.default_channel.client.ping())

    try:
        await in_thread(ping, "readiness", "not ready")
    except HTTPException as exc:
        return JSONResponse({"ok": False, "detail": exc.detail}, status_code=503)
    return JSONResponse({"ok": True})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside its container
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = get_settings()  # bad settings stop here, with one line each
    if settings.api_key is None:
        print(
            "settings error: API_KEY is not set; accepted: a string of at least 16 characters "
            "(env or the file api_key in SECRETS_DIR)",
            file=sys.stderr,
        )
        return 2
    # SIGTERM: stop taking connections, let requests in flight finish (below the grace period).
    uvicorn.run(
        web,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
        access_log=False,  # one line per request is the proxy's job; errors are still logged
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
