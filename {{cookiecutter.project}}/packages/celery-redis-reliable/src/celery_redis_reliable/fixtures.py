"""pytest fixtures over :mod:`celery_redis_reliable.testing`, for the library's tests and a
project's: import the ones you use into a ``conftest.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from celery_redis_reliable.testing import RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """One Redis shared by the tests that never stop it: TEST_REDIS_URL's (e.g. a CI service),
    else a redis-server of the session's own."""
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to stop and start; persistent (append-only), as in
    compose."""
    server = RedisServer(tmp_path, appendonly=True).start()
    yield server
    server.stop()
