"""Point a generated project at the base-image stand-ins .ci/docker-engine.sh made.

    python .ci/stand_ins.py <project folder>

Where the engine has no public base image (no registry) but has its private stand-in
(`celery-template-base/...`), writes compose.override.yaml, which compose reads beside
compose.yaml: built services build FROM the stand-in, redis and prometheus run theirs. Prints one
line saying what it did. The template's tests call `override(..., always=True)`: they never use
public tags, which a stand-in would shadow on a shared engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

PREFIX = os.environ.get("BASE_IMAGE_PREFIX", "celery-template-base")
HEADER = "# Base images: the local stand-ins made without a registry (.ci/stand_ins.py).\n"


def present(image: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
    )


def override(project: Path, always: bool = False) -> list[str]:
    """Write compose.override.yaml for the base images that need a stand-in; their names."""
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    services, used = {}, set()

    def stand_in(public: str) -> str | None:
        private = f"{PREFIX}/{public}"
        if always or (not present(public) and present(private)):
            used.add(public)
            return private
        return None

    for name, service in compose["services"].items():
        if "build" in service:
            python = stand_in(f"python:{service['build']['args']['PYTHON_VERSION']}-slim")
            if python:
                services[name] = {"build": {"args": {"PYTHON_IMAGE": python}}}
        elif str(service.get("image", "")).startswith(("redis:", "prom/prometheus:")):
            image = stand_in(service["image"])
            if image:
                services[name] = {"image": image}
    if services:
        (project / "compose.override.yaml").write_text(
            HEADER + yaml.safe_dump({"services": services})
        )
    return sorted(used)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    if (folder / "compose.override.yaml").exists():
        print(f"{folder}/compose.override.yaml exists: base images as it says", file=sys.stderr)
    else:
        used = override(folder)
        if used:
            print(
                f"no registry: {', '.join(used)} from local stand-ins "
                f"({folder}/compose.override.yaml)",
                file=sys.stderr,
            )
