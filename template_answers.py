"""The template's answers: derived names and validation, importable and unit-tested.

Cookiecutter loads ``NamesExtension`` (``_extensions`` in cookiecutter.json) to derive the default
``project`` and ``package`` from ``project_name``; ``hooks/pre_gen_project.py`` calls ``main`` to
validate every answer, derived or typed, before anything is written.
"""

from __future__ import annotations

import functools
import json
import keyword
import re
import sys
import tomllib
from pathlib import Path

from jinja2.ext import Extension
from slugify import slugify

TEMPLATE = Path(__file__).resolve().parent
LOCK = TEMPLATE / "{{cookiecutter.project}}" / "uv.lock"
MAX_NAME = 50
# Room for the suffix or prefix a derived name may get.
MAX_SLUG = MAX_NAME - len("-tasks")
FALLBACK_PROJECT = "task-queue"  # when a name has no letter or digit to keep (emoji, punctuation)
CLASH_SUFFIX = "-tasks"  # "Celery" -> celery-tasks: a package named celery would shadow Celery
DIGIT_PREFIX = "app_"  # "3D Farm" -> app_3d_farm: an identifier cannot start with a digit
# Apostrophes join: "Zoë's Tasks" -> zoes-tasks, not zoe-s-tasks.
APOSTROPHES = [["'", ""], ["\N{RIGHT SINGLE QUOTATION MARK}", ""]]
CHOICES = {
    "python_version": ("3.11", "3.12", "3.13"),
    "cpu_pool": ("prefork", "solo"),
    "io_pool": ("gevent", "threads"),
    "github_actions": ("yes", "no"),
    "web_api": ("fastapi", "none"),
}
# (low, high) for integer answers.
RANGES = {"io_concurrency": (1, 10000), "flower_port": (1024, 65535)}
PROJECT_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@functools.cache
def reserved_packages(lock: Path = LOCK) -> frozenset[str]:
    """Names a package must not take: every package of the generated project's lock file
    (they share its virtualenv), plus the folders its tooling treats specially."""
    # Every option's packages: the lock's Jinja tags (web_api) dropped, both branches kept.
    packages = tomllib.loads(re.sub(r"\{%.*?%\}", "", lock.read_text()))["package"]
    names = {p["name"].replace("-", "_") for p in packages if "{" not in p["name"]}
    return frozenset(names | {"tests", "test", "src"})


def clashes(package: str) -> bool:
    """True if ``package`` would shadow a dependency or the standard library, or is a keyword."""
    return (
        package in reserved_packages()
        or package in sys.stdlib_module_names
        or keyword.iskeyword(package)
    )


def project_slug(project_name: str) -> str:
    """Folder and distribution name from a human name: transliterated, lowercase, hyphens."""
    slug = slugify(project_name, max_length=MAX_SLUG, word_boundary=True, replacements=APOSTROPHES)
    if not slug:
        return FALLBACK_PROJECT
    if clashes(slug.replace("-", "_")):
        return slug + CLASH_SUFFIX
    return slug


def package_name(project: str) -> str:
    """Import name from the project name: underscores, never a leading digit or a clash."""
    package = slugify(project, max_length=MAX_SLUG, word_boundary=True, separator="_")
    if not package:
        return FALLBACK_PROJECT.replace("-", "_")
    if package[0].isdigit():
        package = DIGIT_PREFIX + package
    if clashes(package):
        package += CLASH_SUFFIX.replace("-", "_")
    return package


class NamesExtension(Extension):
    """Jinja filters for cookiecutter.json: ``project_slug`` and ``package_name``."""

    def __init__(self, environment):
        super().__init__(environment)
        environment.filters["project_slug"] = project_slug
        environment.filters["package_name"] = package_name
        # The pre-generation hook imports this module from here.
        environment.globals["template_dir"] = str(TEMPLATE)


class InvalidAnswer(ValueError):
    """One bad answer: the message names the variable, the value and what is accepted."""

    def __init__(self, name: str, value: object, accepted: str):
        super().__init__(f"{name}={value!r} is invalid; accepted: {accepted}")


def check_text(name: str, value: str, max_len: int) -> None:
    accepted = f"1 to {max_len} printable characters, without quotes or backslashes"
    if not value.strip() or len(value) > max_len or not value.isprintable():
        raise InvalidAnswer(name, value, accepted)
    if any(c in value for c in '"\\`{}'):
        raise InvalidAnswer(name, value, accepted)


def check_project(value: str) -> None:
    # A distribution named like a dependency would make the project depend on itself.
    taken = value.replace("-", "_") in reserved_packages()
    if len(value) > MAX_NAME or not PROJECT_RE.match(value) or taken:
        raise InvalidAnswer(
            "project",
            value,
            "lowercase letters, digits and single hyphens, starting with a letter or digit, "
            f"at most {MAX_NAME} characters, not a dependency name (e.g. task-queue)",
        )


def check_package(value: str) -> None:
    accepted = (
        f"a lowercase Python identifier of at most {MAX_NAME} characters, not a keyword "
        "or a standard-library / dependency name (e.g. task_queue)"
    )
    if len(value) > MAX_NAME or not PACKAGE_RE.match(value) or clashes(value):
        raise InvalidAnswer("package", value, accepted)


def check_choice(name: str, value: str) -> None:
    if value not in CHOICES[name]:
        raise InvalidAnswer(name, value, " or ".join(CHOICES[name]))


def check_int(name: str, value: str) -> None:
    low, high = RANGES[name]
    if not re.fullmatch(r"[0-9]+", str(value)) or not low <= int(value) <= high:
        raise InvalidAnswer(name, value, f"an integer from {low} to {high}")


def check_cpu_concurrency(value: str) -> None:
    if value != "auto" and (not re.fullmatch(r"[0-9]+", value) or not 1 <= int(value) <= 1024):
        raise InvalidAnswer("cpu_concurrency", value, "'auto' or an integer from 1 to 1024")


def validate(answers: dict) -> None:
    """Raise InvalidAnswer for the first bad answer."""
    check_text("project_name", answers["project_name"], 80)
    check_project(answers["project"])
    check_package(answers["package"])
    check_text("description", answers["description"], 200)
    check_text("author", answers["author"], 100)
    for name in CHOICES:
        check_choice(name, answers[name])
    for name in RANGES:
        check_int(name, answers[name])
    check_cpu_concurrency(answers["cpu_concurrency"])


def main(raw: str) -> int:
    try:
        validate(json.loads(raw))
    except InvalidAnswer as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
