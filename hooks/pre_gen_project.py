"""Validate every answer before anything is generated.

Cookiecutter renders this file first, so the answers arrive as one JSON string; the
functions below are plain Python and unit-tested in tests/test_hooks.py.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

# Names a package must not take: they would shadow the stack's own imports.
RESERVED_PACKAGES = {
    "celery",
    "kombu",
    "gevent",
    "flower",
    "redis",
    "requests",
    "rich",
    "pydantic",
    "pydantic_settings",
    "watchfiles",
    "billiard",
    "vine",
    "tests",
    "test",
    "src",
}
CHOICES = {
    "python_version": ("3.11", "3.12", "3.13"),
    "cpu_pool": ("prefork", "solo"),
    "io_pool": ("gevent", "threads"),
    "github_actions": ("yes", "no"),
}
# (low, high) for integer answers.
RANGES = {"io_concurrency": (1, 10000), "flower_port": (1024, 65535)}
PROJECT_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


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
    if len(value) > 50 or not PROJECT_RE.match(value):
        raise InvalidAnswer(
            "project",
            value,
            "lowercase letters, digits and single hyphens, starting with a letter, "
            "at most 50 characters (e.g. task-queue)",
        )


def check_package(value: str) -> None:
    accepted = (
        "a lowercase Python identifier of at most 50 characters, not a keyword "
        "or a standard-library / dependency name (e.g. task_queue)"
    )
    if len(value) > 50 or not PACKAGE_RE.match(value) or keyword.iskeyword(value):
        raise InvalidAnswer("package", value, accepted)
    if value in RESERVED_PACKAGES or value in sys.stdlib_module_names:
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


if __name__ == "__main__":
    sys.exit(main(r"""{{ cookiecutter | jsonify }}"""))
