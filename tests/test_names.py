"""Folder and package names derived from the names people type, checked by the same hooks."""

from __future__ import annotations

import re
import tomllib

import pytest
from conftest import TEMPLATE, generate

import template_answers as answers

# (what a user types as project_name, expected project, expected package)
NAMES = [
    ("Task Queue", "task-queue", "task_queue"),
    ("Über Café Orders", "uber-cafe-orders", "uber_cafe_orders"),
    ("任务队列", "ren-wu-dui-lie", "ren_wu_dui_lie"),
    ("Москва задачи", "moskva-zadachi", "moskva_zadachi"),
    ("Zoë's  Tasks", "zoes-tasks", "zoes_tasks"),
    ("3D Printer Farm", "3d-printer-farm", "app_3d_printer_farm"),
    ("my.app v2.0", "my-app-v2-0", "my_app_v2_0"),
    ("  Billing -- Jobs__2 ", "billing-jobs-2", "billing_jobs_2"),
    ("🚀 Rocket Launch", "rocket-launch", "rocket_launch"),
    ("🚀🚀", "task-queue", "task_queue"),
    ("!!!", "task-queue", "task_queue"),
    ("Celery", "celery-tasks", "celery_tasks"),
    ("Queue", "queue-tasks", "queue_tasks"),
    ("Class", "class-tasks", "class_tasks"),
    ("Tests", "tests-tasks", "tests_tasks"),
    ("Straße & Ærø: naïve—résumé", "strasse-aero-naive-resume", "strasse_aero_naive_resume"),
    ("Word " * 16, "-".join(["word"] * 9), "_".join(["word"] * 9)),
]


@pytest.mark.parametrize(("typed", "project", "package"), NAMES)
def test_derived_names(typed, project, package):
    assert answers.project_slug(typed) == project
    assert answers.package_name(project) == package


@pytest.mark.parametrize("typed", [typed for typed, _, _ in NAMES])
def test_derived_names_pass_the_hooks(typed):
    project = answers.project_slug(typed)
    answers.check_project(project)
    answers.check_package(answers.package_name(project))


@pytest.mark.parametrize("project", ["celery", "my--app", "-x", "ab" * 40, "Über", "3d"])
def test_package_from_any_typed_project_is_valid(project):
    # A typed project the hooks refuse still yields a valid package default, so the one error
    # shown is about the project.
    answers.check_package(answers.package_name(project))


def test_reserved_packages_come_from_the_generated_projects_lock():
    text = (TEMPLATE / "{{cookiecutter.project}}" / "uv.lock").read_text()
    lock = tomllib.loads(re.sub(r"\{%.*?%\}", "", text))  # both web_api branches
    locked = {p["name"].replace("-", "_") for p in lock["package"] if "{" not in p["name"]}
    assert {"urllib3", "tornado", "click", "amqp", "greenlet", "matplotlib", "pytest"} <= locked
    assert {"fastapi", "uvicorn", "starlette"} <= locked  # the web API's, reserved in any case
    assert answers.reserved_packages() == locked | {"tests", "test", "src"}
    assert "requests" not in answers.reserved_packages()  # not a dependency any more


def test_reserved_packages_follow_the_lock_given(tmp_path):
    lock = tmp_path / "uv.lock"
    lock.write_text('[[package]]\nname = "some-lib"\n\n[[package]]\nname = "{{ x }}"\n')
    assert answers.reserved_packages(lock) == {"some_lib", "tests", "test", "src"}


@pytest.mark.parametrize(("typed", "project", "package"), NAMES[1:12])
def test_generation_with_a_human_name(tmp_path, typed, project, package):
    folder = generate(tmp_path, project_name=typed)
    assert folder.name == project
    assert (folder / "src" / package / "celery_app.py").is_file()
    pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == project
    assert typed in (folder / "README.md").read_text()


def test_typed_names_are_kept(tmp_path):
    folder = generate(tmp_path, project_name="Über Café", project="cafe", package="orders")
    assert folder.name == "cafe"
    assert (folder / "src" / "orders").is_dir()
