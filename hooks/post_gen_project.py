"""Finish the generated project: fresh secrets in .env, unchosen files removed, next steps.

Runs inside the new project folder. Functions are unit-tested in tests/test_hooks.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

SECRET_KEYS = ("REDIS_PASSWORD", "FLOWER_PASSWORD")


def new_secret() -> str:
    # URL-safe, so it can sit in redis://:<password>@host without escaping.
    return secrets.token_urlsafe(32)


def render_env(example: str, secrets_by_key: dict[str, str]) -> str:
    """.env.example with every secret filled in; fails if a secret has no line to fill."""
    lines, filled = [], set()
    for line in example.splitlines():
        key = line.split("=", 1)[0]
        if key in secrets_by_key and not line.startswith("#"):
            line = f"{key}={secrets_by_key[key]}"
            filled.add(key)
        lines.append(line)
    missing = set(secrets_by_key) - filled
    if missing:
        raise ValueError(f".env.example has no line for {', '.join(sorted(missing))}")
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600: a crash leaves no half-written .env."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # O_CREAT keeps the mode of a leftover file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, 0o600)  # the mode above is masked by the umask; this is not
        handle.write(text)
        handle.flush()
        os.fsync(fd)  # on disk before the rename makes it the .env
    os.replace(tmp, path)


def remove_unchosen(root: Path, answers: dict) -> list[str]:
    """Delete files that belong to options not chosen; returns what was removed."""
    unwanted = []
    if answers["github_actions"] != "yes":
        unwanted.append(".github")
    for rel in unwanted:
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return unwanted


def next_steps(answers: dict) -> str:
    return (
        f"\nGenerated {answers['project']} with fresh secrets in .env (git- and docker-ignored).\n"
        f"  cd {answers['project']}\n"
        "  docker compose up -d --build --wait          # redis, workers, Flower, demo API\n"
        "  docker compose run --rm producer --cpu 20 --io 200\n"
        f"  Flower: http://127.0.0.1:{answers['flower_port']} (login in .env)\n"
        "  uv sync && uv run pytest                      # tests: needs redis-server\n"
    )


def main(raw: str, root: Path) -> int:
    answers = json.loads(raw)
    example = (root / ".env.example").read_text()
    write_private(root / ".env", render_env(example, {k: new_secret() for k in SECRET_KEYS}))
    remove_unchosen(root, answers)
    print(next_steps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(r"""{{ cookiecutter | jsonify }}""", Path.cwd()))
