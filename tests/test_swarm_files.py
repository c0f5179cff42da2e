"""The Swarm stack file against compose.yaml: they cannot drift, and `docker stack config`
accepts it (no engine or swarm needed)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import generate, run

# Variables only the stack reads (compose builds its image and runs one replica of each).
SWARM_ONLY = {"IMAGE", "CPU_REPLICAS", "IO_REPLICAS", "CPU_WORKER_CPUS"}
ROLES = ("worker", "producer", "flower", "exporter", "keda")  # Redis ACL users (acl.sh)
SECRETS = (
    "redis_password",
    *(f"redis_{r}_password" for r in ROLES),
    "flower_password",
    "api_key",
)  # api_key with the web API only
SAME = ("command", "entrypoint", "healthcheck", "stop_grace_period", "user", "read_only", "init")
CASES = {
    "default": {},
    "solo": {
        "cpu_pool": "solo",
        "io_pool": "threads",
        "project_name": "Beta Jobs",
        "web_api": "none",
    },
}


@pytest.fixture(scope="module", params=sorted(CASES))
def project(request, tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp(request.param), **CASES[request.param])


def secrets_of(project: Path) -> set[str]:
    """The secret files the generator wrote: the web API's key only with the API."""
    return {p.name for p in (project / "secrets").iterdir()}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def always_on(services: dict) -> dict:
    """The services compose starts by default (profiled ones, e.g. the producer, are opt-in)."""
    return {n: s for n, s in services.items() if not s.get("profiles")}


def variables(path: Path) -> set[str]:
    """Variables the long-running services read (anchors resolved; compose's one-shot
    producer is not part of the stack)."""
    services = always_on(load(path)["services"])
    return set(re.findall(r"\$\{([A-Z_]+)", yaml.safe_dump(services)))


def variables_of_override(path: Path) -> set[str]:
    return set(re.findall(r"\$\{([A-Z_]+)", path.read_text()))


def with_demo(stack: dict, demo: dict) -> dict:
    """stack.yaml's services with stack.demo.yaml's merged in (environments key by key)."""
    merged = {name: dict(service) for name, service in stack.items()}
    for name, service in demo.items():
        base = merged.setdefault(name, {})
        env = {**base.get("environment", {}), **service.get("environment", {})}
        merged[name] = {**base, **service, "environment": env}
    return merged


def test_stack_runs_what_compose_runs(project):
    compose = always_on(load(project / "compose.yaml")["services"])
    plain = load(project / "deploy" / "swarm" / "stack.yaml")["services"]
    # The production default carries no demo; the demo file adds the demo API and DEMO=true.
    assert "demo-api" not in plain and "DEMO" not in plain["beat"]["environment"]
    stack = with_demo(plain, load(project / "deploy" / "swarm" / "stack.demo.yaml")["services"])
    assert set(stack) == set(compose) and stack["beat"]["environment"]["DEMO"] == "true"
    for name, service in stack.items():
        for key in SAME:
            assert service.get(key) == compose[name].get(key), f"{name}.{key} differs"
        assert set(service.get("environment", {})) == set(compose[name].get("environment", {}))
        assert service.get("secrets") == compose[name].get("secrets"), name
        user = (service.get("environment") or {}).get("REDIS_USER")
        assert user == (compose[name].get("environment") or {}).get("REDIS_USER"), name
    assert stack["redis"]["configs"] == compose["redis"]["configs"]
    # Non-root: the Python services run as the image's user, Redis as its own.
    assert stack["redis"]["user"] == "redis"
    assert all(s.get("read_only") for n, s in stack.items() if n != "redis")


def test_stack_and_compose_read_the_same_variables(project):
    compose = variables(project / "compose.yaml")
    stack = variables(project / "deploy" / "swarm" / "stack.yaml")
    assert stack - compose == SWARM_ONLY
    # Compose tags what it builds (Swarm runs IMAGE); DEMO is on in stack.demo.yaml only;
    # Swarm publishes Flower only through stack.flower-host.yaml, which reads FLOWER_PORT.
    assert compose - stack == {"IMAGE_TAG", "DEMO", "FLOWER_PORT"}
    assert "FLOWER_PORT" in variables_of_override(
        project / "deploy" / "swarm" / "stack.flower-host.yaml"
    )
    example = (project / ".env.example").read_text()
    for name in stack:
        assert re.search(rf"(?m)^(# )?{name}=", example), f"{name} is not in .env.example"


def test_secrets_come_from_the_generated_files(project):
    for path in ("compose.yaml", "deploy/swarm/stack.yaml"):
        text = (project / path).read_text()
        secrets = load(project / path)["secrets"]
        assert {
            n: (project / path).parent.joinpath(s["file"]).resolve() for n, s in secrets.items()
        } == {n: (project / "secrets" / n).resolve() for n in SECRETS if n in secrets_of(project)}
        for value in (project / "secrets").iterdir():
            assert value.read_text() not in text


def test_ipvs_override_covers_every_service(project):
    stack = load(project / "deploy" / "swarm" / "stack.yaml")["services"]
    override = load(project / "deploy" / "swarm" / "stack.dnsrr.yaml")["services"]
    assert set(override) == set(stack)
    assert all(s["deploy"] == {"endpoint_mode": "dnsrr"} for s in override.values())
    for published in {"api"} & set(stack):
        assert [p["mode"] for p in override[published]["ports"]] == ["host"]
    # Flower stays unpublished with this override too (stack.flower-host.yaml publishes it).
    assert "ports" not in override["flower"] and "ports" not in stack["flower"]
    # The shipped default keeps Swarm's VIPs and routing mesh for normal clusters.
    assert all("endpoint_mode" not in s.get("deploy", {}) for s in stack.values())


def test_encryption_override_encrypts_the_stacks_network_only(project):
    if shutil.which("docker") is None:
        pytest.fail("the docker client is needed (.ci/docker-engine.sh installs it)")
    swarm = project / "deploy" / "swarm"
    plain = load(swarm / "stack.yaml")["networks"]["default"]
    assert "driver_opts" not in plain
    # Only the network, and all of it: docker stack replaces a network whole when merging.
    assert load(swarm / "stack.encrypted.yaml") == {
        "networks": {"default": {**plain, "driver_opts": {"encrypted": "true"}}}
    }
    files = ["-c", "deploy/swarm/stack.yaml", "-c", "deploy/swarm/stack.encrypted.yaml"]
    env = {**os.environ, "IMAGE": "registry.example/app:1.2", "FLOWER_USER": "ops"}
    out = yaml.safe_load(run(["docker", "stack", "config", *files], cwd=project, env=env).stdout)
    network = out["networks"]["default"]
    assert network["driver"] == "overlay" and network["driver_opts"] == {"encrypted": "true"}
    assert network["attachable"] is True


@pytest.mark.parametrize("demo", [False, True])
@pytest.mark.parametrize("override", [False, True])
def test_docker_stack_config_accepts_the_stack(project, override, demo):
    if shutil.which("docker") is None:
        pytest.fail("the docker client is needed (.ci/docker-engine.sh installs it)")
    files = ["-c", "deploy/swarm/stack.yaml"]
    if demo:
        files += ["-c", "deploy/swarm/stack.demo.yaml"]
    if override:
        files += ["-c", "deploy/swarm/stack.dnsrr.yaml"]
    env = {**os.environ, "IMAGE": "registry.example/app:1.2", "FLOWER_USER": "ops"}
    # With the demo, also two io processes: the CPU limit must follow them.
    env.update(IO_PROCESSES="2" if demo else "")
    out = yaml.safe_load(run(["docker", "stack", "config", *files], cwd=project, env=env).stdout)
    services = out["services"]
    assert {s["image"] for n, s in services.items() if n != "redis"} == {"registry.example/app:1.2"}
    solo = "solo" in (project / ".env.example").read_text().split("CPU_POOL=")[1].split()[0]
    assert services["worker-cpu"]["deploy"]["replicas"] == (2 if solo else 1)
    assert services["worker-cpu"]["deploy"]["update_config"]["order"] == "start-first"
    io_processes = "2" if demo else "1"
    assert services["worker-io"]["deploy"]["resources"]["limits"]["cpus"] == io_processes
    assert services["worker-io"]["environment"]["IO_PROCESSES"] == io_processes
    assert ("demo-api" in services) == demo
    assert (services["beat"]["environment"].get("DEMO") == "true") == demo
    modes = {n: s.get("deploy", {}).get("endpoint_mode") for n, s in services.items()}
    # The demo API is found by name everywhere (one replica, no virtual IP needed).
    want = dict.fromkeys(services, "dnsrr" if override else None) | (
        {"demo-api": "dnsrr"} if demo else {}
    )
    assert modes == want
    assert "ports" not in services["flower"]  # published only by stack.flower-host.yaml
    for published in {"api"} & set(services):
        assert services[published]["ports"][0].get("mode", "ingress") == (
            "host" if override else "ingress"
        )
    missing = run(["docker", "stack", "config", *files], cwd=project, check=False,
                  env={**os.environ, "FLOWER_USER": "ops", "IMAGE": ""})  # fmt: skip
    assert missing.returncode != 0
    assert "set IMAGE to the image pushed to your registry" in missing.stderr


def test_each_python_service_logs_in_as_its_role_with_only_its_secret(project):
    """REDIS_USER names a user acl.sh defines, and the service mounts that user's password
    and no other Redis password; the same in compose and Swarm (compared above)."""
    acl = (project / "deploy" / "redis" / "acl.sh").read_text()
    defined = set(re.findall(r"^user (\w+) ", acl, flags=re.M))
    assert defined == set(ROLES)
    services = load(project / "compose.yaml")["services"]
    roles = {}
    for name, service in services.items():
        mounted = {s for s in service.get("secrets", []) if s.startswith("redis_")}
        if name == "redis":
            assert mounted == {"redis_password", *(f"redis_{r}_password" for r in ROLES)}
            continue
        user = (service.get("environment") or {}).get("REDIS_USER")
        assert (user is None) == (not mounted), name  # no Redis client, no Redis secret
        if user:
            assert user in defined and mounted == {f"redis_{user}_password"}, name
            roles[name] = user
    assert roles["worker-cpu"] == roles["worker-io"] == roles["beat"] == "worker"
    assert roles["flower"] == "flower" and roles["producer"] == "producer"
    assert roles["metrics"] == "exporter"
    assert roles.get("api", "producer") == "producer"


def test_flower_is_published_only_by_its_override_on_the_labelled_node(project):
    if shutil.which("docker") is None:
        pytest.fail("the docker client is needed (.ci/docker-engine.sh installs it)")
    env = {
        **os.environ,
        "IMAGE": "registry.example/app:1.2",
        "FLOWER_USER": "ops",
        "FLOWER_PORT": "5601",
    }
    base = ["-c", "deploy/swarm/stack.yaml"]
    plain = yaml.safe_load(run(["docker", "stack", "config", *base], cwd=project, env=env).stdout)
    assert "ports" not in plain["services"]["flower"]
    files = [*base, "-c", "deploy/swarm/stack.flower-host.yaml"]
    out = yaml.safe_load(run(["docker", "stack", "config", *files], cwd=project, env=env).stdout)
    flower = out["services"]["flower"]
    # Host mode: only the node running the task listens; no ingress on every node.
    assert [(p["mode"], p["published"], p["target"]) for p in flower["ports"]] in (
        [("host", 5601, 5555)],
        [("host", "5601", 5555)],
    )
    package = next(p.name for p in (project / "src").iterdir() if p.is_dir())
    assert flower["deploy"]["placement"]["constraints"] == [f"node.labels.{package}.flower == true"]
    # The override changes Flower only.
    others = {n: s for n, s in out["services"].items() if n != "flower"}
    assert others == {n: s for n, s in plain["services"].items() if n != "flower"}
