"""`docker compose up` for real: the generated stack on a real Docker engine, end to end.

Runs for the default options and for one non-default set (solo + threads, Python 3.11).
Tests within a stack run in file order; the last one stops it. Images are built
FROM private base images (conftest.py: the real ones where a registry answers, else stand-ins
with the same Python minor version); each stack checks the Python inside its containers.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from conftest import Stack, run, running_stack

pytestmark = pytest.mark.docker

# Python 3.11, not 3.12: where no registry answers, the local base stand-ins are Debian's
# Pythons (3.13 trixie, 3.11 bookworm); no Debian release has 3.12.
ALT_ANSWERS = {
    "project_name": "Beta Jobs",
    "python_version": "3.11",
    "cpu_pool": "solo",
    "io_pool": "threads",
    "io_concurrency": "300",
    "web_api": "none",
}
EXPECTED = {
    "default": {
        "cpu_pool": "prefork",
        "io_pool": "gevent",
        "io_concurrency": 200,
        "python": "3.13",
        "api": ("api",),
    },
    "alt": {
        "cpu_pool": "solo",
        "io_pool": "threads",
        "io_concurrency": 300,
        "python": "3.11",
        "api": (),  # web_api=none
    },
}
WORKLOADS = ("demo-api", "worker-cpu", "worker-io", "flower", "beat")


def python_services(case: str) -> tuple[str, ...]:
    return (*WORKLOADS, *EXPECTED[case]["api"])


def services_of(case: str) -> tuple[str, ...]:
    return ("redis", *python_services(case))


@pytest.fixture(scope="module")
def alt_stack(require_docker, tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("alt"), "e2e-alt", **ALT_ANSWERS) as stack:
        yield stack


@pytest.fixture(scope="module", params=["default", "alt"])
def stack(request) -> tuple[str, Stack]:
    fixture = "compose_stack" if request.param == "default" else "alt_stack"
    return request.param, request.getfixturevalue(fixture)


def pool_of(worker: dict) -> str:
    # e.g. celery.concurrency.gevent:TaskPool -> gevent; ...thread:TaskPool -> threads
    name = worker["stats"]["pool"]["implementation"].split(":")[0].rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(name, name)


def test_every_service_is_healthy(stack):
    case, s = stack
    states = {svc["Service"]: (svc["State"], svc["Health"]) for svc in s.services()}
    expected = services_of(case)
    assert {name: states.get(name) for name in expected} == dict.fromkeys(
        expected, ("running", "healthy")
    )
    assert ("api" in states) == bool(EXPECTED[case]["api"])  # web_api=none: no api service


PYTHON_AND_OS = (
    "import platform, sys; print(*sys.version_info[:2], sep='.', end=' ');"
    "print(platform.freedesktop_os_release()['PRETTY_NAME'])"
)


def test_containers_run_the_python_the_project_names(stack):
    case, s = stack
    for service in python_services(case):
        found = s.compose("exec", "-T", service, "python", "-c", PYTHON_AND_OS).stdout.strip()
        print(f"[{case}] {service}: Python {found}")  # the OS says if it was a stand-in
        assert found.split()[0] == EXPECTED[case]["python"], (service, found)


def test_producer_routes_each_task_to_its_pool(stack):
    case, s = stack
    proc = s.compose("run", "--rm", "producer", "--cpu", "20", "--io", "200", "--json", timeout=600)
    summary = json.loads(proc.stdout)
    cpu, io = summary["queues"]["cpu"], summary["queues"]["io"]
    print(
        f"[{case}] producer: cpu makespan {cpu['makespan_s']} s, io makespan {io['makespan_s']} s, io peak {io['peak_in_flight']}"
    )
    assert summary["ok"] and summary["succeeded"] == 220
    assert cpu["pools"] == {EXPECTED[case]["cpu_pool"]: 20}
    assert io["pools"] == {EXPECTED[case]["io_pool"]: 200}
    assert all(name.startswith("cpu@") for name in cpu["workers"])
    assert all(name.startswith("io@") for name in io["workers"])


def api_call(s: Stack, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{s.env['API_PORT']}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {s.secret('api_key')}",
            "Content-Type": "application/json",
        },
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_api_enqueues_by_route_and_reports_the_pool_that_ran_it(compose_stack):
    """Through HTTP from the host, as a client would: each task on its queue's pool (the
    default project; the alt one has web_api=none, and no api service, checked above)."""
    case, s = "default", compose_stack
    sent = {
        "cpu": api_call(s, "POST", "/tasks/count-primes", {"limit": 20000}),
        "io": api_call(s, "POST", "/tasks/wait-on-api", {"seconds": 0.2}),
    }
    assert {q: (status, body["queue"]) for q, (status, body) in sent.items()} == {
        "cpu": (202, "cpu"), "io": (202, "io")
    }  # fmt: skip
    for queue, (_, enqueued) in sent.items():
        deadline = time.monotonic() + 120  # a safety net against a hang
        while (state := api_call(s, "GET", enqueued["state_url"])[1])["state"] == "PENDING":
            assert time.monotonic() < deadline, f"hang: {queue} task never finished"
            time.sleep(0.5)
        assert state["state"] == "SUCCESS", state
        assert state["worker"].startswith(f"{queue}@") and state["queue"] == queue, state
        assert state["result"]["pool"] == EXPECTED[case][f"{queue}_pool"], state
    assert api_call(s, "GET", "/readyz")[0] == 200
    request = urllib.request.Request(f"http://127.0.0.1:{s.env['API_PORT']}/tasks/x")
    with pytest.raises(urllib.error.HTTPError) as refused:  # no key
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 401


def test_flower_health_and_auth(stack):
    case, s = stack
    assert s.flower("/healthcheck", auth=False) == (200, "OK")
    status, _ = s.flower("/api/workers", auth=False)
    assert status == 401
    workers = s.workers()
    seen = {
        name.split("@")[0]: (pool_of(w), [q["name"] for q in w["active_queues"]])
        for name, w in workers.items()
    }
    assert seen == {
        "cpu": (EXPECTED[case]["cpu_pool"], ["cpu"]),
        "io": (EXPECTED[case]["io_pool"], ["io"]),
    }


def test_containers_do_not_run_as_root(stack):
    case, s = stack
    for service in services_of(case):
        uid = s.compose("exec", "-T", service, "id", "-u").stdout.strip()
        assert uid != "0", f"{service} runs as root"


def test_redis_refuses_commands_without_the_password(stack):
    _, s = stack
    denied = s.redis_cli("ping", auth=False, check=False)
    assert "NOAUTH" in denied.stdout + denied.stderr
    assert s.redis_cli("ping").stdout.strip() == "PONG"


def test_each_service_logs_in_as_its_redis_user(stack):
    _, s = stack
    listed = s.redis_cli("client", "list").stdout.splitlines()
    users = {line.split(" user=")[1].split()[0] for line in listed}
    # Workers and beat, Flower; redis-cli and the health check are the default user. The API
    # (producer) connects at its first request.
    assert {"default", "worker", "flower"} <= users <= {"default", "worker", "flower", "producer"}
    # A role's password opens its user only, with its commands only: the workers' cannot
    # flush Redis nor read the ACL; the password goes in on stdin, never on a command line.
    script = 'printf "AUTH worker %s\\nFLUSHALL\\nACL LIST\\nPING\\n" "$(cat /run/secrets/redis_worker_password)" | redis-cli'
    out = s.compose("exec", "-T", "redis", "sh", "-c", script).stdout
    assert out.split()[:1] == ["OK"] and out.count("NOPERM") == 2 and out.strip().endswith("PONG")


def test_secrets_are_in_no_environment_or_command_line(stack):
    case, s = stack
    roles = ("worker", "producer", "flower", "exporter", "keda")
    names = ("redis_password", *(f"redis_{r}_password" for r in roles), "flower_password",
             *("api_key" for _ in EXPECTED[case]["api"]))  # fmt: skip
    secrets = [s.secret(name) for name in names]
    assert {svc["Service"] for svc in s.services()} == set(services_of(case))
    ids = s.compose("ps", "-q").stdout.split()
    inspect = run(["docker", "inspect", *ids], cwd=s.path).stdout
    assert "/run/secrets/redis_password" in inspect  # mounted, as file secrets are
    for service in services_of(case):
        # Every process's environment and command line, as the container's user sees them.
        seen = s.compose(
            "exec", "-T", service, "sh", "-c",
            "cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n'",
        ).stdout  # fmt: skip
        assert "REDIS_URL=redis://redis:6379/0" in seen or service in ("redis", "demo-api")
        for secret in secrets:
            assert secret not in seen, f"a secret is visible in {service}'s processes"
    for secret in secrets:
        assert secret not in inspect, "a secret is in docker inspect"


def test_only_flower_and_the_api_are_published_on_loopback(stack):
    case, s = stack
    published = {
        svc["Service"]: [
            (p["URL"], p["PublishedPort"])
            for p in svc.get("Publishers") or []
            if p["PublishedPort"]
        ]
        for svc in s.services()
    }
    assert published == {
        "redis": [],
        "demo-api": [],
        "worker-cpu": [],
        "worker-io": [],
        "flower": [("127.0.0.1", int(s.env["FLOWER_PORT"]))],
        **{api: [("127.0.0.1", int(s.env["API_PORT"]))] for api in EXPECTED[case]["api"]},
        "beat": [],
    }


def test_scaled_io_workers_all_take_work(stack):
    case, s = stack
    s.up("--scale", "worker-io=3")
    try:
        proc = s.compose(
            "run", "--rm", "producer", "--cpu", "0", "--io", "900", "--io-delay", "0.3", "--json"
        )
        io = json.loads(proc.stdout)["queues"]["io"]
        print(f"[{case}] 3 io workers: {io['workers']}")
        assert io["succeeded"] == 900
        assert len(io["workers"]) == 3 and all(n > 0 for n in io["workers"].values())
    finally:
        s.up("--scale", "worker-io=1")


def test_concurrency_follows_env(stack):
    case, s = stack
    original = {k: s.env[k] for k in ("IO_CONCURRENCY", "CPU_CONCURRENCY")}
    s.set_env(IO_CONCURRENCY="37", CPU_CONCURRENCY="3")
    try:
        s.up()
        sizes = {
            name.split("@")[0]: w["stats"]["pool"]["max-concurrency"]
            for name, w in s.workers().items()
        }
        # solo runs one task at a time whatever CPU_CONCURRENCY says
        assert sizes == {"cpu": 1 if case == "alt" else 3, "io": 37}
    finally:
        s.set_env(**original)
        s.up()
    sizes = {
        name.split("@")[0]: w["stats"]["pool"]["max-concurrency"] for name, w in s.workers().items()
    }
    assert sizes["io"] == EXPECTED[case]["io_concurrency"]


NOOP_CALL = "from {pkg}.tasks import io; print(io.noop.delay().get(timeout=30))"


def test_dev_mode_reloads_code_and_keeps_gevent(stack):
    case, s = stack
    if case != "default":
        pytest.skip("the dev override is one file for every option set; gevent is the default's")
    dev = ("-f", "compose.yaml", "-f", "compose.dev.yaml", "-f", "compose.override.yaml")
    s.compose(*dev, "up", "-d", "--wait", timeout=600)
    source = s.path / "src" / s.package / "tasks" / "io.py"
    original = source.read_text()
    call = ["exec", "-T", "worker-io", "python", "-c", NOOP_CALL.format(pkg=s.package)]
    try:
        assert "reloaded" not in s.compose(*call).stdout
        returned = "run_info(self, time.time(), cpu_clock())"
        assert f"    return {returned}\n" in original, "noop's return changed: update this test"
        source.write_text(
            original.replace(
                f"    return {returned}\n", f'    return {{"reloaded": True, **{returned}}}\n'
            )
        )
        assert "reloaded" in source.read_text()
        started, reply = time.monotonic(), ""
        while time.monotonic() - started < 60 and "'reloaded': True" not in reply:
            time.sleep(1)
            reply = s.compose(*call, check=False).stdout
        print(
            f"[dev] new return value after {time.monotonic() - started:.1f} s: {reply.strip()[:80]}"
        )
        assert "'reloaded': True" in reply and "'pool': 'gevent'" in reply
    finally:
        source.write_text(original)
        s.up()  # back to the plain compose file


def test_beat_replicas_are_healthy_and_send_their_entries(stack):
    """Two beat replicas, both healthy (one sends, one waits); the schedule's tasks run."""
    case, s = stack
    beats = [(b["State"], b["Health"]) for b in s.services() if b["Service"] == "beat"]
    assert beats == [("running", "healthy")] * 2

    def runs(entry: str) -> int:
        meta = s.redis_cli("HGET", f"redbeat:{entry}", "meta").stdout.strip()
        return json.loads(meta).get("total_run_count", 0) if meta else 0

    def primes_seen() -> bool:  # count_primes(100_000) of the cpu entry: 9592 primes
        return "'result': 9592" in s.compose("logs", "worker-cpu").stdout

    deadline = time.monotonic() + 240  # entries first run one interval (30 s, 60 s) after start
    while time.monotonic() < deadline and not (
        runs("ping-api-every-30s") and runs("count-primes-every-minute") and primes_seen()
    ):
        time.sleep(5)
    counts = {e: runs(e) for e in ("ping-api-every-30s", "count-primes-every-minute")}
    print(f"[{case}] beat runs so far: {counts}")
    assert all(counts.values()) and primes_seen()


def test_down_stops_within_grace_period_without_sigkill(stack):
    case, s = stack
    since = int(time.time()) - 1
    started = time.monotonic()
    s.compose("down", "-v", timeout=300)
    took = time.monotonic() - started
    events = json_lines(run_docker_events(s.name, since))
    kills = [e for e in events if e.get("Action") == "kill"]
    signals = sorted(
        {
            (
                e["Actor"]["Attributes"]["com.docker.compose.service"],
                e["Actor"]["Attributes"]["signal"],
            )
            for e in kills
        }
    )
    print(f"[{case}] down -v took {took:.1f} s; signals sent: {signals}")
    assert signals, "no kill events recorded: the check would prove nothing"
    # No SIGKILL: every service stopped within its own stop_grace_period (Docker kills at it).
    assert all(sig != "9" for _, sig in signals), signals
    if case == "default":
        s.up()  # other suites share this stack


def run_docker_events(project: str, since: int) -> str:
    from conftest import run

    cmd = [
        "docker",
        "events",
        "--since",
        str(since),
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        f"label=com.docker.compose.project={project}",
        "--format",
        "{{json .}}",
    ]
    return run(cmd, cwd=None, timeout=60).stdout


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
