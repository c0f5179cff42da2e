"""The generated project's README and docs/: short, linked, and every command they show exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import generate

README_MAX_LINES = 200  # "a few screens"
PAGES = (
    "api.md", "pools.md", "tasks.md", "delivery.md", "secrets.md", "troubleshooting.md", "swarm.md",
    "kubernetes.md", "monitoring.md", "benchmark.md", "development.md",
)  # fmt: skip


def pages(project: Path) -> dict[Path, str]:
    found = [project / "README.md", *sorted((project / "docs").glob("*.md"))]
    return {page: page.read_text() for page in found}


def code(text: str) -> list[str]:
    """Every line of a fenced block, and every inline code span: where commands are shown."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    lines = [ln for block in blocks for ln in block.splitlines()]
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return lines + re.findall(r"`([^`\n]+)`", prose)


def make_targets(project: Path) -> dict[str, str]:
    """Makefile target -> its recipe (the lines under it)."""
    targets, current = {}, None
    for line in (project / "Makefile").read_text().splitlines():
        if match := re.match(r"^([a-z][a-z-]*):", line):
            current = match.group(1)
            targets[current] = ""
        elif current and line.startswith("\t"):
            targets[current] += line + "\n"
        else:
            current = None
    return targets


def option_strings(project: Path, package: str) -> set[str]:
    """Every ``--flag`` the project's own command-line programs define."""
    sources = [*(project / "src" / package).rglob("*.py"), *(project / "bench").rglob("*.py")]
    return {
        f for src in sources for f in re.findall(r"[\"'](--[a-z][a-z-]*)[\"']", src.read_text())
    }


def problems(project: Path, package: str) -> list[str]:
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    services = set(compose["services"])
    profiles = {p for svc in compose["services"].values() for p in svc.get("profiles", [])}
    targets, flags = make_targets(project), option_strings(project, package)
    found = []
    for page, text in pages(project).items():
        where = page.relative_to(project)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                found.append(f"{where}: link to {target}, which does not exist")
        for line in code(text):
            for target in re.findall(r"\bmake ([a-z][a-z-]*[a-z])(?![\w*-])", line):
                if target not in targets:
                    found.append(f"{where}: `make {target}` is no Makefile target")
            for module in re.findall(r"python -m ([\w.]+)", line):
                parts = module.split(".")
                base = project / "src" if parts[0] == package else project
                path = base.joinpath(*parts)
                if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
                    found.append(f"{where}: `python -m {module}`: no such module")
            # Options given to the project's own programs: the producer service, python -m
            # <package>.<module>, and ARGS of make targets that run them.
            own = re.findall(
                rf"(?:run --rm producer|python -m (?:{package}|bench)\S*|ARGS=)(.*)", line
            )
            for arguments in own:
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", arguments):
                    if flag not in flags and flag not in ("--rm", "--entrypoint"):
                        found.append(f"{where}: `{flag}` is an option of none of our programs")
            for service in re.findall(
                r"(?:--scale |\bS=|run --rm |\blogs |\brestart )([a-z][a-z-]*)", line
            ):
                if service not in services and service not in ("--entrypoint",):
                    found.append(f"{where}: service {service} is not in compose.yaml")
            for file in re.findall(r"(?:^|\s)-[fc] (\S+\.ya?ml)", line):
                if not (project / file).is_file():
                    found.append(f"{where}: {file} does not exist")
            for profile in re.findall(r"--profile (\S+)", line):
                if profile not in profiles:
                    found.append(f"{where}: compose has no profile {profile}")
    return found


@pytest.fixture(scope="module", params=[{}, {"cpu_pool": "solo", "github_actions": "no"}])
def project(request, tmp_path_factory):
    return generate(tmp_path_factory.mktemp("docs"), **request.param)


def test_every_command_and_link_in_the_readme_and_docs_exists(project):
    assert problems(project, "task_queue") == []


def test_the_check_finds_a_missing_target_flag_service_and_link(default_project, tmp_path):
    broken = generate(tmp_path)
    readme = broken / "README.md"
    readme.write_text(
        readme.read_text()
        + '\n```bash\nmake deploy-everything\nmake producer ARGS="--cpus 4"\n'
        + "docker compose up -d --scale worker-gpu=2\n```\n[gone](docs/nowhere.md)\n"
    )
    assert sorted(problems(broken, "task_queue")) == [
        "README.md: `--cpus` is an option of none of our programs",
        "README.md: `make deploy-everything` is no Makefile target",
        "README.md: link to docs/nowhere.md, which does not exist",
        "README.md: service worker-gpu is not in compose.yaml",
    ]
    assert problems(default_project, "task_queue") == []


def test_readme_is_a_few_screens_and_links_every_page(default_project):
    readme = (default_project / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert sorted(p.name for p in (default_project / "docs").glob("*.md")) == sorted(PAGES)
    for page in PAGES:
        assert f"](docs/{page})" in readme, page
        # Each page starts with what a reader wants from it.
        lead = (default_project / "docs" / page).read_text().split("\n\n")[1]
        assert lead.startswith("Read this"), (page, lead)
