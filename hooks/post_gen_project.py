"""Finish the generated project: fresh secrets in secrets/, .env, unchosen files removed.

Runs inside the new project folder. Functions are unit-tested in tests/test_hooks.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

# One file per secret in secrets/, named as settings.py reads them from SECRETS_DIR. Redis has
# one ACL user per role (deploy/redis/acl.sh), each with its own password; redis_password is
# the default user's, for the health check and admins.
REDIS_USERS = ("worker", "producer", "flower", "exporter", "keda")
SECRET_FILES = (
    "redis_password",
    *(f"redis_{user}_password" for user in REDIS_USERS),
    "flower_password",
    "api_key",
)
K8S_SECRETS = "deploy/k8s/base/secrets"


def new_secret() -> str:
    # URL-safe, so it can sit in redis://:<password>@host without escaping.
    return secrets.token_urlsafe(32)


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write atomically with ``mode``: a crash leaves no half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # O_CREAT keeps the mode of a leftover
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, mode)  # the mode above is masked by the umask; this is not
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def secret_files(answers: dict) -> tuple[str, ...]:
    """The secrets the chosen options need: the web API's key only with the API."""
    return tuple(n for n in SECRET_FILES if n != "api_key" or answers["web_api"] != "none")


def write_secrets(folder: Path, names: tuple[str, ...] = SECRET_FILES) -> None:
    """A fresh value per secret file. The folder is owner-only; the files are world-readable
    so that compose's bind mounts (host owner and mode kept) can be read by uid 10001."""
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)
    for name in names:
        write_private(folder / name, new_secret(), mode=0o444)


def remove_unchosen(root: Path, answers: dict) -> list[str]:
    """Delete files that belong to options not chosen; returns what was removed."""
    unwanted = []
    if answers["github_actions"] != "yes":
        unwanted.append(".github")
    if answers["web_api"] == "none":
        package = answers["package"]
        unwanted += [f"src/{package}/api.py", "tests/test_api.py", "docs/api.md",
                     "deploy/k8s/base/api.yaml", "bench/enqueue.py"]  # fmt: skip
    for rel in unwanted:
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return unwanted


def next_steps(answers: dict) -> str:
    api = "  API: http://127.0.0.1:8000/docs (key in secrets/api_key)\n"
    return (
        f"\nGenerated {answers['project']} with fresh secrets in secrets/ (git- and docker-ignored).\n"
        f"  cd {answers['project']}\n"
        "  docker compose up -d --build --wait          # redis, workers, Flower, demo API\n"
        "  docker compose run --rm producer --cpu 20 --io 200\n"
        f"  Flower: http://127.0.0.1:{answers['flower_port']} (user in .env, password in secrets/)\n"
        f"{api if answers['web_api'] != 'none' else ''}"
        "  uv sync && uv run pytest                      # tests: needs redis-server\n"
    )


def main(raw: str, root: Path) -> int:
    answers = json.loads(raw)
    write_private(root / ".env", (root / ".env.example").read_text())
    names = secret_files(answers)
    write_secrets(root / "secrets", names)
    # The cluster's own values, for deploy/k8s's secretGenerator (git-ignored there too).
    write_secrets(root / K8S_SECRETS, names)
    remove_unchosen(root, answers)
    print(next_steps(answers))
    return 0


if __name__ == "__main__":
    sys.exit(main(r"""{{ cookiecutter | jsonify }}""", Path.cwd()))
