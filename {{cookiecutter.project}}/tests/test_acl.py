"""Redis ACL users per role, for real: a redis-server loaded with the users deploy/redis/acl.sh
writes (the same script compose, Swarm and Kubernetes run), fresh passwords in a secrets folder.
Each role is refused what it must not do, and each role's real process works as its user: the
workers take and run tasks, the producer enqueues and reads results, Flower's API sees the
workers, the exporter serves its metrics; Redis logged no refused command meanwhile."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from bench.procs import free_port, stop, wait_until
from conftest import RedisServer, Worker

ACL_SCRIPT = Path(__file__).parents[1] / "deploy" / "redis" / "acl.sh"
USERS = ("worker", "producer", "flower", "exporter", "keda")
START = 180  # safety net for a start on a loaded machine

# What each role must never run: (command, args). Refused by command or by key/channel.
REFUSED = {
    "worker": [("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"), ("ACL", "LIST"), ("KEYS", "*"),
               ("SCRIPT", "FLUSH"), ("MONITOR",), ("CLIENT", "KILL", "ID", "1")],
    "producer": [("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"), ("BLMOVE", "cpu", "x", "RIGHT", "LEFT", "0.01"),
                 ("LREM", "cpu", "1", "x"), ("HSET", "unacked", "t", "x"), ("DEL", "cpu"),
                 ("SET", "celery-task-meta-forged", "x"), ("PUBLISH", "celery-task-meta-x", "x")],
    "flower": [("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"), ("ACL", "SETUSER", "x"), ("KEYS", "*")],
    "exporter": [("LPUSH", "cpu", "x"), ("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "1"), ("DEL", "unacked"),
                 ("SET", "celery-task-meta-x", "x"), ("PUBLISH", "celery-task-meta-x", "x"), ("LRANGE", "cpu", "0", "-1")],
    "keda": [("GET", "celery-task-meta-x"), ("LRANGE", "cpu", "0", "-1"), ("HGETALL", "unacked"),
             ("LPUSH", "cpu", "x"), ("DEL", "cpu"), ("FLUSHALL",), ("INFO",), ("PUBLISH", "x", "y")],
}  # fmt: skip


class AclRedis:
    """A redis-server whose config is acl.sh's output: the users plus the default user's
    requirepass, each password from its own file in ``secrets``."""

    def __init__(self, workdir: Path):
        self.secrets = workdir / "secrets"
        self.secrets.mkdir()
        for name in ("redis_password", *(f"redis_{user}_password" for user in USERS)):
            (self.secrets / name).write_text(secrets.token_urlsafe(24))
        (self.secrets / "flower_password").write_text(secrets.token_urlsafe(24))
        env = {"PATH": os.environ["PATH"], "SECRETS_DIR": str(self.secrets)}
        users = subprocess.run(["sh", str(ACL_SCRIPT)], env=env, capture_output=True, text=True,
                               check=True, timeout=30).stdout  # fmt: skip
        self.server = RedisServer(workdir)
        self.server.config += users  # its requirepass comes last: it wins
        self.server.password = self.password("default")
        self.server.url = f"redis://:{self.server.password}@127.0.0.1:{self.server.port}/0"
        self.url = f"redis://127.0.0.1:{self.server.port}/0"

    def password(self, user: str) -> str:
        name = "redis_password" if user == "default" else f"redis_{user}_password"
        return (self.secrets / name).read_text()

    def client(self, user: str) -> redis.Redis:
        return redis.Redis(port=self.server.port, username=user, password=self.password(user))

    def refused(self) -> list[dict]:
        """ACL LOG: every command, key or channel Redis refused, newest first."""
        admin = redis.Redis.from_url(self.server.url, decode_responses=True)
        return admin.acl_log()


@pytest.fixture(scope="module")
def acl(tmp_path_factory) -> Iterator[AclRedis]:
    server = AclRedis(tmp_path_factory.mktemp("acl"))
    server.server.start()
    yield server
    server.server.stop()


def role_env(stack_env: dict[str, str], acl: AclRedis, user: str) -> dict[str, str]:
    """The stack's environment as compose gives a service of this role: REDIS_URL without a
    password, REDIS_USER, and the secrets folder holding the role's file."""
    return {**stack_env, "REDIS_URL": acl.url, "SECRETS_DIR": str(acl.secrets), "REDIS_USER": user}


def test_the_generated_users_are_loaded_with_their_own_passwords(acl):
    listed = {line.split()[1] for line in acl.client("default").acl_list()}
    assert listed == {"default", *USERS}
    for user in USERS:
        assert acl.client(user).ping()
        other = next(u for u in USERS if u != user)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=acl.server.port, username=user, password=acl.password(other)).ping()


@pytest.mark.parametrize(
    ("user", "command"), [(u, c) for u, commands in REFUSED.items() for c in commands]
)
def test_each_role_is_refused_what_it_must_not_do(acl, user, command):
    with pytest.raises(redis.exceptions.NoPermissionError):
        acl.client(user).execute_command(*command)


def test_the_read_only_roles_read_what_they_need(acl):
    admin = acl.client("default")
    admin.rpush("io", "a", "b")
    admin.hset("unacked", "tag", "x")
    try:
        keda = acl.client("keda")
        # KEDA's redis scaler: a key's type, then its length by that type.
        assert [keda.type(k) for k in ("io", "unacked", "none")] == [b"list", b"hash", b"none"]
        assert (keda.llen("io"), keda.hlen("unacked")) == (2, 1)
        exporter = acl.client("exporter")
        assert exporter.llen("io") == 2 and exporter.hlen("unacked") == 1
        assert exporter.info("memory")["maxmemory"] == 0
    finally:
        admin.delete("io", "unacked")


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path):
        self.log = logdir / f"{name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        if self.proc.poll() is not None:
            raise RuntimeError(f"exited ({self.proc.returncode}):\n{self.log.read_text()}")
        return self.log.read_text()


def get(url: str, auth: str | None = None) -> str:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def answers(url: str, auth: str | None = None) -> bool:
    try:
        get(url, auth)
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_every_roles_real_process_works_as_its_user(acl, stack_env, tmp_path):
    py = sys.executable
    acl.client("default").acl_log_reset()  # the refusals of the tests above
    started: list[subprocess.Popen] = []
    try:
        workers = {kind: Worker(kind, role_env(stack_env, acl, "worker"), tmp_path) for kind in ("cpu", "io")}  # fmt: skip
        started += [w.proc for w in workers.values()]
        flower_port, metrics_port = free_port(), free_port()
        flower_env = {**role_env(stack_env, acl, "flower"), "FLOWER_USER": "admin"}
        flower = Process("flower", [py, "-m", "{{ cookiecutter.package }}.flower", f"--port={flower_port}",
                                    "--address=127.0.0.1"], flower_env, tmp_path)  # fmt: skip
        started.append(flower.proc)
        for kind, worker in workers.items():
            wait_until(worker.ready, START, f"worker {kind}")
        # After the workers: its first `inspect stats` finds them (the next is a minute later).
        exporter = Process("exporter", [py, "-m", "{{ cookiecutter.package }}.metrics", "--port", str(metrics_port)],
                           role_env(stack_env, acl, "exporter"), tmp_path)  # fmt: skip
        started.append(exporter.proc)
        metrics: list[str] = []

        def exporter_reports(wanted: str) -> bool:
            exporter.text()
            if not answers(f"http://127.0.0.1:{metrics_port}/metrics"):
                return False
            metrics[:] = get(f"http://127.0.0.1:{metrics_port}/metrics").splitlines()
            return any(line.startswith(wanted) for line in metrics)

        # Each worker's pool size (its `inspect stats` went through both workers and back).
        wait_until(
            lambda: exporter_reports('celery_worker_concurrency{worker="io@'), 90, "exporter"
        )
        assert sum(line.startswith("celery_worker_concurrency{") for line in metrics) == 2

        # The producer enqueues on both queues and reads every result back.
        done = subprocess.run(
            [py, "-m", "{{ cookiecutter.package }}.producer", "--cpu", "4", "--io", "20", "--json"],
            env=role_env(stack_env, acl, "producer"), capture_output=True, text=True, timeout=START,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert summary["ok"] and summary["succeeded"] == 24

        # Flower's API (control broadcasts, as Flower's user) sees both workers.
        login = f"admin:{(acl.secrets / 'flower_password').read_text()}"
        base = f"http://127.0.0.1:{flower_port}"
        wait_until(lambda: bool(flower.text()) and answers(f"{base}/healthcheck"), START, "Flower")
        seen: dict = {}

        def flower_sees_both() -> bool:
            seen.update(json.loads(get(f"{base}/api/workers?refresh=true", login)))
            return {"cpu", "io"} <= {name.split("@")[0] for name in seen}

        wait_until(flower_sees_both, 60, "both workers in Flower's API")

        # The exporter received the task events and reads Redis.
        succeeded = 'celery_tasks_total{queue="io",state="succeeded"}'
        wait_until(lambda: exporter_reports(succeeded), 30, "the exporter's task events")
        assert "celery_broker_up 1.0" in metrics
        assert any(line.startswith('celery_queue_waiting{queue="cpu"}') for line in metrics)
        # Every command of every process was allowed: the lists in acl.sh are complete for
        # what these processes did.
        assert [(e["username"], e["reason"], e["object"]) for e in acl.refused()] == []
    finally:
        stop(*started)
