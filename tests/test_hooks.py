"""The hooks: every bad answer is refused with one clear line and leaves nothing on disk."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

import pytest
from conftest import TEMPLATE, generate, run
from cookiecutter.exceptions import FailedHookException

import template_answers as answers


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(name, TEMPLATE / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


post = load_hook("post_gen_project")

DEFAULTS = {
    "project_name": "Task Queue",
    "project": "task-queue",
    "package": "task_queue",
    "description": "A description",
    "author": "Ada",
    "python_version": "3.13",
    "cpu_pool": "prefork",
    "io_pool": "gevent",
    "cpu_concurrency": "auto",
    "io_concurrency": "200",
    "flower_port": "5555",
    "github_actions": "yes",
    "web_api": "fastapi",
}

# (variable, bad value, text the message must contain about what is accepted)
BAD_ANSWERS = [
    ("project_name", "", "printable characters"),
    ("project_name", "x" * 81, "1 to 80"),
    ("project_name", 'Say "hi"', "without quotes"),
    ("project", "My Project", "lowercase letters"),
    ("project", "-leading", "starting with a letter"),
    ("project", "double--hyphen", "single hyphens"),
    ("project", "a" * 51, "at most 50"),
    ("package", "1abc", "Python identifier"),
    ("package", "my-pkg", "Python identifier"),
    ("package", "class", "not a keyword"),
    ("package", "celery", "dependency name"),
    ("package", "json", "standard-library"),
    ("package", "Upper", "lowercase"),
    ("description", "line one\nline two", "printable"),
    ("author", "back\\slash", "without quotes or backslashes"),
    ("python_version", "3.10", "3.11 or 3.12 or 3.13"),
    ("cpu_pool", "eventlet", "prefork or solo"),
    ("io_pool", "eventlet", "gevent or threads"),
    ("cpu_concurrency", "0", "'auto' or an integer from 1 to 1024"),
    ("cpu_concurrency", "lots", "'auto' or an integer"),
    ("io_concurrency", "abc", "an integer from 1 to 10000"),
    ("io_concurrency", "0", "an integer from 1 to 10000"),
    ("io_concurrency", "-5", "an integer from 1 to 10000"),
    ("io_concurrency", "20000", "an integer from 1 to 10000"),
    ("flower_port", "80", "an integer from 1024 to 65535"),
    ("flower_port", "70000", "an integer from 1024 to 65535"),
    ("github_actions", "maybe", "yes or no"),
    # Dependencies of the generated project (from its uv.lock), not only the famous ones.
    ("package", "urllib3", "dependency name"),
    ("package", "tornado", "dependency name"),
    ("project", "celery", "not a dependency name"),
    ("project", "3d--farm", "single hyphens"),
    ("web_api", "flask", "fastapi or none"),
]


@pytest.mark.parametrize(("name", "value", "accepted"), BAD_ANSWERS)
def test_validate_names_variable_value_and_accepted(name, value, accepted):
    with pytest.raises(answers.InvalidAnswer) as caught:
        answers.validate({**DEFAULTS, name: value})
    message = str(caught.value)
    assert message.startswith(f"{name}={value!r} is invalid; accepted: ")
    assert accepted in message
    assert "\n" not in message


def test_defaults_are_valid():
    answers.validate(DEFAULTS)
    assert answers.main(json.dumps(DEFAULTS)) == 0


def test_main_prints_one_line_and_fails(capsys):
    assert answers.main(json.dumps({**DEFAULTS, "io_concurrency": "abc"})) == 1
    err = capsys.readouterr().err
    assert err == "error: io_concurrency='abc' is invalid; accepted: an integer from 1 to 10000\n"


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [BAD_ANSWERS[i] for i in (3, 7, 10, 14, 20, 24, 27, 29)],
)
def test_cookiecutter_refuses_bad_input_and_leaves_nothing(tmp_path, capfd, name, value, accepted):
    overrides = {name: value}
    if name == "project":  # keep the derived package valid so the project check is the one hit
        overrides["package"] = "ok_pkg"
    with pytest.raises(FailedHookException):
        generate(tmp_path, **overrides)
    assert list(tmp_path.iterdir()) == []
    err = capfd.readouterr().err
    assert f"error: {name}={value!r} is invalid; accepted: " in err
    assert accepted in err


def test_secrets_are_fresh_and_url_safe():
    values = {post.new_secret() for _ in range(50)}
    assert len(values) == 50
    for value in values:
        assert len(value) >= 40
        assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_write_private_is_owner_only(tmp_path):
    target = tmp_path / ".env"
    leftover = tmp_path / ".env.tmp"  # of a crashed run, with a wider mode
    leftover.write_text("old")
    leftover.chmod(0o666)
    post.write_private(target, "A=1\n")
    assert target.read_text() == "A=1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [".env"]


def test_write_private_replaces_a_world_readable_leftover(tmp_path):
    # A .env.tmp left by a crash, readable by all: O_CREAT alone would keep its mode.
    leftover = tmp_path / ".env.tmp"
    leftover.write_text("old")
    leftover.chmod(0o644)
    post.write_private(tmp_path / ".env", "A=1\n")
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600
    assert (tmp_path / ".env").read_text() == "A=1\n"


def test_remove_unchosen(tmp_path):
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    answers = {"github_actions": "no", "web_api": "fastapi", "package": "x"}
    assert post.remove_unchosen(tmp_path, answers) == [".github"]
    assert not (tmp_path / ".github").exists()


def test_no_web_api_leaves_no_trace_of_it(tmp_path):
    project = generate(tmp_path, web_api="none")
    roles = tuple(
        f"redis_{u}_password" for u in ("worker", "producer", "flower", "exporter", "keda")
    )
    assert post.secret_files({"web_api": "none"}) == ("redis_password", *roles, "flower_password")
    assert sorted(p.name for p in (project / "secrets").iterdir()) == sorted(
        post.secret_files({"web_api": "none"})
    )
    assert not (project / "src" / "task_queue" / "api.py").exists()
    texts = [p.read_text() for p in project.rglob("*") if p.is_file() and p.suffix != ".png"]
    found = [t for t in texts if "fastapi" in t.lower() or "api_key" in t]
    assert found == [], "the none option still mentions the web API"


def secret_values(project: Path) -> dict[str, str]:
    return {name: (project / "secrets" / name).read_text() for name in post.SECRET_FILES}


def test_generated_secrets_are_fresh_files_only_the_owner_can_reach(tmp_path):
    project = generate(tmp_path / "a")
    first, second = secret_values(project), secret_values(generate(tmp_path / "b"))
    for name in post.SECRET_FILES:
        assert len(first[name]) >= 40
        assert first[name] != second[name]
        # Readable by the containers' users through compose's bind mount ...
        assert stat.S_IMODE((project / "secrets" / name).stat().st_mode) == 0o444
    # ... while the folder keeps other host users out.
    assert stat.S_IMODE((project / "secrets").stat().st_mode) == 0o700
    assert sorted(p.name for p in (project / "secrets").iterdir()) == sorted(post.SECRET_FILES)
    # Every secret its own value: one role's password opens no other role's user.
    assert len(set(first.values())) == len(first)
    env = (project / ".env").read_text()
    assert not any(value in env for value in first.values())
    assert stat.S_IMODE((project / ".env").stat().st_mode) == 0o600


def test_kubernetes_gets_its_own_fresh_secrets_kept_out_of_git(tmp_path):
    project = generate(tmp_path / "a")
    cluster = {n: (project / post.K8S_SECRETS / n).read_text() for n in post.SECRET_FILES}
    for name, value in cluster.items():
        assert len(value) >= 40 and value not in secret_values(project).values(), name
    run(["git", "init", "-q"], cwd=project)
    run(["git", "add", "-A"], cwd=project)
    tracked = run(["git", "ls-files"], cwd=project).stdout
    assert "deploy/k8s/base/kustomization.yaml" in tracked and "secrets/" not in tracked


def test_env_example_has_no_secret_lines(default_project):
    example = (default_project / ".env.example").read_text().splitlines()
    assert not [line for line in example if line.split("=")[0].endswith("_PASSWORD")]
