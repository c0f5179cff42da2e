"""quickstart.sh, the template README's first command: generate, start, produce, point at Flower.

On the CI machine the engine, Compose and uv are already there (.ci/setup), so the script's
install steps are skipped; the rest is a newcomer's run: the script generates, builds the image
under a tag of its own (nothing borrowed from another test), on the stand-in base images where
no registry is reachable (CI's engine has no public image at all), starts and produces.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from conftest import TEMPLATE, Stack, free_port, run

SCRIPT = TEMPLATE / "quickstart.sh"


def quickstart(cwd, env, *args: str) -> subprocess.CompletedProcess:
    return run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, timeout=1800, check=False)


# What the stack's beat sends meanwhile (celery_app.BEAT_SCHEDULE): not the producer's.
# Flower keeps args as Celery's repr: "[0]" or "(0,)", so compared without brackets.
BEAT_SENT = {("count_primes", "100000"), ("wait_on_api", "0")}


def succeeded_tasks(stack: Stack, want: int = 220, timeout: float = 600) -> int:
    """The producer's tasks Flower lists as SUCCESS, once all are there (or at the deadline,
    a safety net); the beat's ticks are left out."""
    deadline = time.monotonic() + timeout
    while True:
        status, tasks = stack.flower("/api/tasks?state=SUCCESS")
        assert status == 200, tasks
        mine = [
            t for t in tasks.values()
            if (t["name"].rsplit(".", 1)[-1], re.sub(r"[][(), ]", "", str(t.get("args"))))
            not in BEAT_SENT
        ]  # fmt: skip
        if len(mine) >= want or time.monotonic() > deadline:
            return len(mine)
        time.sleep(1)


def test_quickstart_brings_the_stack_up_and_points_at_flower(require_docker, tmp_path):
    port, name = free_port(), f"quickstart-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    # The shell environment wins over .env: a compose project and image tag of this test.
    env.update(COMPOSE_PROJECT_NAME=name, IMAGE_TAG=name, API_PORT=str(free_port()))
    stack = Stack(tmp_path / "task-queue", name)
    try:
        first = quickstart(tmp_path, env, f"flower_port={port}")
        assert first.returncode == 0, first.stderr[-3000:]
        # Stand-ins are used exactly where the engine setup had to make them, and said so.
        override = stack.path / "compose.override.yaml"
        assert override.exists() == ("from local stand-ins" in first.stderr), first.stderr[-2000:]
        assert f"Flower: http://127.0.0.1:{port}\n" in first.stdout
        login = f"user FLOWER_USER in {stack.path}/.env, password in {stack.path}/secrets/flower_password"
        assert f"Login:  {login}\n" in first.stdout
        workers = stack.workers()
        assert {w.split("@")[0] for w in workers} == {"cpu", "io"}
        # The producer's 20 CPU + 200 I/O tasks, as Flower saw them (events trail the results).
        assert succeeded_tasks(stack) == 220
        secrets = stack.secret("flower_password"), (stack.path / ".env").read_text()

        # Reuses the project, its secrets and its volume; an option that differs is named.
        again = quickstart(tmp_path, env, f"flower_port={port}", "io_pool=threads")
        assert again.returncode == 0, again.stderr[-3000:]
        assert (
            "[quickstart] task-queue/ exists with other options, kept as it is: "
            "io_pool='threads' (it has 'gevent'); to apply them, docker compose down -v in it, "
            "remove it, and run again\n"
        ) in again.stderr
        assert (stack.secret("flower_password"), (stack.path / ".env").read_text()) == secrets
        assert f"Flower: http://127.0.0.1:{port}\n" in again.stdout
    finally:
        stack.compose("down", "-v", "--timeout", "30", check=False)
        subprocess.run(["docker", "image", "rm", "-f", f"task-queue:{name}"], capture_output=True)


def test_quickstart_refuses_a_bad_argument_in_one_line(tmp_path):
    proc = quickstart(tmp_path, dict(os.environ), "Billing Jobs")
    assert proc.returncode == 1
    assert proc.stderr == (
        "[quickstart] error: 'Billing Jobs' is not an option=value pair"
        ' (e.g. project_name="Billing Jobs")\n'
    )
    assert list(tmp_path.iterdir()) == []


def generate_only(cwd, *args: str) -> subprocess.CompletedProcess:
    """quickstart.sh's generate step alone (no engine needed): the folder on stdout."""
    script = SCRIPT.read_text().rsplit('main "$@"', 1)[0]
    words = " ".join(f"'{a}'" for a in args)
    body = f"{script}\nTEMPLATE='{TEMPLATE}'; ARGS=({words}); generate"
    return run(["bash", "-c", body], cwd=cwd, timeout=300, check=False)


def test_a_rerun_names_the_options_it_does_not_apply(tmp_path):
    first = generate_only(tmp_path, "flower_port=5601")
    assert first.returncode == 0 and first.stdout.strip() == str(tmp_path / "task-queue")
    env = (tmp_path / "task-queue" / ".env").read_text()
    same = generate_only(tmp_path, "flower_port=5601")
    assert "[quickstart]" not in same.stderr, same.stderr
    other = generate_only(tmp_path, "io_pool=threads", "flower_port=5601")
    lines = [ln for ln in other.stderr.splitlines() if ln.startswith("[quickstart]")]
    assert lines == [
        "[quickstart] task-queue/ exists with other options, kept as it is: io_pool='threads' "
        "(it has 'gevent'); to apply them, docker compose down -v in it, remove it, and run again"
    ]
    assert (tmp_path / "task-queue" / ".env").read_text() == env  # nothing rewritten
    # Back to the defaults: the option given the first time is the one that now differs.
    default = generate_only(tmp_path)
    assert "flower_port='5555' (it has '5601')" in default.stderr
    # A project not made by quickstart: options given are not applied, and it says so.
    (tmp_path / "task-queue" / ".quickstart.json").unlink()
    plain = generate_only(tmp_path, "io_pool=threads")
    assert "exists (not made by quickstart), kept as it is" in plain.stderr
