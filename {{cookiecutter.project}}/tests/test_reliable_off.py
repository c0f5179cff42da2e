"""RELIABLE_REDIS=false: stock kombu transport and Celery's RedisBackend, real workers, tasks done."""

import subprocess
import sys

import pytest
import redis

from {{ cookiecutter.package }}.settings import Settings

from conftest import Worker, stop, wait_until, with_redis


def test_reliable_redis_must_be_a_boolean():
    with pytest.raises(ValueError, match="reliable_redis"):
        Settings(reliable_redis="maybe")


def test_switched_off_the_stock_stack_runs_tasks(stack_env, private_redis, tmp_path):
    env = {**with_redis(stack_env, private_redis.url, tmp_path), "RELIABLE_REDIS": "false"}
    client = redis.Redis.from_url(private_redis.url)
    workers = [Worker(kind, env, tmp_path) for kind in ("cpu", "io")]
    try:
        for worker in workers:
            wait_until(worker.ready, 180, f"worker {worker.kind} (hang)")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "{{ cookiecutter.package }}.producer",
                "--cpu",
                "3",
                "--io",
                "5",
                "--cpu-limit",
                "1000",
                "--io-delay",
                "0",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        stats = client.info("commandstats")
        # Stock kombu takes with BRPOP; the library's transport never does.
        assert stats.get("cmdstat_brpop", {}).get("calls", 0) > 0
        assert stats.get("cmdstat_blmove", {}).get("calls", 0) == 0
        assert not client.keys("*.taken")
    finally:
        stop(*(worker.proc for worker in workers))
