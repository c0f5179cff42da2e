"""The managed-Redis configuration run for real: a redis-server that speaks TLS only (certificates
made here by a CA of the test's own), a ``rediss://`` URL as deploy/k8s/components/managed-redis
sets it, and every Python process of the stack on it: both workers, beat, the producer, Flower,
the metrics exporter and the readiness probe."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import urllib3

from bench.procs import free_port
from conftest import RedisServer, Worker, stop, wait_until, with_redis

pytestmark = pytest.mark.slow  # seven processes, each connecting over TLS

PACKAGE = "{{ cookiecutter.package }}"
START = 180  # safety net for a start on a loaded machine


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it, with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl not found: install it (apt-get install openssl)")
    files = {name: folder / name for name in ("ca.key", "ca.crt", "server.key", "server.csr",
                                              "server.crt", "san.ext")}  # fmt: skip
    # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a CA and a leaf with every extension
    # a real one has, or the handshake fails.
    files["san.ext"].write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", files["ca.key"],
         "-out", files["ca.crt"], "-subj", "/CN=test CA", "-days", "1",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["server.key"],
         "-out", files["server.csr"], "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", files["server.csr"], "-CA", files["ca.crt"], "-CAkey",
         files["ca.key"], "-CAcreateserial", "-out", files["server.crt"], "-days", "1",
         "-extfile", files["san.ext"]],
    ):  # fmt: skip
        subprocess.run([openssl, *command], check=True, capture_output=True, timeout=60)
    return files


@pytest.fixture
def tls_redis(tmp_path) -> Iterator[RedisServer]:
    certs = make_certs(tmp_path)
    server = RedisServer(tmp_path)
    # No plain port at all: a process that ignores TLS cannot reach this Redis.
    server.options = ["--port", "0", "--tls-port", str(server.port),
                      "--tls-cert-file", str(certs["server.crt"]),
                      "--tls-key-file", str(certs["server.key"]),
                      "--tls-ca-cert-file", str(certs["ca.crt"]), "--tls-auth-clients", "no"]  # fmt: skip
    server.url = (
        f"rediss://:{server.password}@127.0.0.1:{server.port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={certs['ca.crt']}"
    )
    yield server.start()
    server.stop()


def run(env: dict[str, str], *args: str, timeout: float = START) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def serves(url: str, log: Path, proc: subprocess.Popen, **headers: str) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"{url} server exited:\n{log.read_text()}")
    try:
        return urllib3.request("GET", url, headers=headers, timeout=5, retries=False).status == 200
    except urllib3.exceptions.HTTPError:
        return False


def test_every_process_of_the_stack_runs_on_a_tls_only_redis(tls_redis, stack_env, tmp_path):
    secrets = tmp_path / "no-secrets"
    secrets.mkdir()
    env = with_redis(stack_env, tls_redis.url, secrets)
    plain = tls_redis.url.replace("rediss://", "redis://", 1).partition("?")[0]
    with pytest.raises(redis.ConnectionError):  # the server really refuses plain connections
        redis.Redis.from_url(plain, socket_timeout=5).ping()

    workers = {kind: Worker(kind, env, tmp_path) for kind in ("cpu", "io")}
    flower_port, metrics_port = free_port(), free_port()
    auth = urllib3.make_headers(basic_auth="admin:tls-test")
    others = {
        "beat": start(env, tmp_path / "beat.log", f"{PACKAGE}.beat"),
        "flower": start({**env, "FLOWER_PASSWORD": "tls-test"}, tmp_path / "flower.log",
                        f"{PACKAGE}.flower", f"--port={flower_port}", "--address=127.0.0.1"),
        "metrics": start(env, tmp_path / "metrics.log", f"{PACKAGE}.metrics",
                         "--port", str(metrics_port)),
    }  # fmt: skip
    try:
        for kind, worker in workers.items():
            wait_until(worker.ready, START, f"worker {kind} on TLS")
        beat_log = tmp_path / "beat.log"
        wait_until(lambda: "acquired the lock" in beat_log.read_text(), START, "beat's lock")

        done = run(env, f"{PACKAGE}.producer", "--cpu", "4", "--io", "20", "--io-delay", "0.1",
                   "--json")  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        summary = json.loads(done.stdout)
        assert (summary["submitted"], summary["succeeded"]) == (24, 24), summary
        assert summary["queues"]["io"]["pools"] == {"{{ cookiecutter.io_pool }}": 20}, summary
        ready = run(env, f"{PACKAGE}.health", "ready")
        assert ready.returncode == 0, ready.stdout + ready.stderr

        # Flower's broker page reads the queues over its own connection, not Celery's.
        queues = f"http://127.0.0.1:{flower_port}/api/queues/length"
        flower_log = tmp_path / "flower.log"
        wait_until(lambda: serves(queues, flower_log, others["flower"], **auth), START,
                   "Flower's queue lengths over TLS")  # fmt: skip

        def both_queues() -> bool:
            # Flower lists the queues of the workers it has heard of: both, once both answered.
            # refresh=1 has it inspect the workers now (it may not have since start-up).
            workers = f"http://127.0.0.1:{flower_port}/api/workers?refresh=1"
            urllib3.request("GET", workers, headers=auth, timeout=30)
            body = urllib3.request("GET", queues, headers=auth, timeout=10).json()
            return {q["name"] for q in body["active_queues"]} >= {"cpu", "io"}

        wait_until(both_queues, START, "Flower listing both queues' lengths")

        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        metrics_log = tmp_path / "metrics.log"
        wait_until(lambda: serves(metrics, metrics_log, others["metrics"]), START, "exporter")
        text = urllib3.request("GET", metrics, timeout=10).data.decode()
        assert 'celery_queue_waiting{queue="cpu"}' in text and "celery_broker_up 1.0" in text
        for name, proc in others.items():
            assert proc.poll() is None, f"{name} exited"
    finally:
        stop(*(w.proc for w in workers.values()), *others.values())
