#!/usr/bin/env bash
# From a fresh Debian 12 machine to a running stack, in one command (as root):
#   bash quickstart.sh [option=value ...]      e.g. bash quickstart.sh project_name="Billing Jobs"
# Installs what is missing (Docker engine + Compose v2 through .ci/docker-engine.sh, uv), generates
# a project into the current folder with the template's defaults (or the options given), brings
# its stack up, runs the producer once and prints where Flower is and where its login is.
# Run it again to reuse the generated project: its .env, secrets/ and Redis volume are kept;
# options that differ from the ones it was made with are named in one line, not applied.
set -euo pipefail
TEMPLATE=$(cd "$(dirname "$0")" && pwd)
log() { printf '[quickstart] %s\n' "$*" >&2; }
fail() {
  log "error: $*"
  exit 1
}

need_root() {
  [ "$(id -u)" = 0 ] || fail "$1 is missing and installing it needs root: run sudo bash $0"
}

docker_ready() {
  docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1
}

option() {
  # The value of option $1 among the key=value arguments, or $2.
  local name=$1 value=$2 arg
  for arg in "${ARGS[@]}"; do
    [ "${arg%%=*}" = "$name" ] && value=${arg#*=}
  done
  printf '%s' "$value"
}

install_docker() {
  docker_ready && return
  need_root "Docker with Compose v2"
  log "installing Docker engine and Compose v2 (.ci/docker-engine.sh)"
  # Only the base images this project builds from.
  BASE_IMAGES="python:$(option python_version 3.13)-slim redis:8" bash "$TEMPLATE/.ci/docker-engine.sh" >&2
}

install_uv() {
  command -v uv >/dev/null && return
  need_root "uv"
  log "installing uv (pipx, Debian's way to install a Python application)"
  export DEBIAN_FRONTEND=noninteractive
  command -v pipx >/dev/null || { apt-get update -qq && apt-get install -y -qq pipx >/dev/null; }
  PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx install uv >&2
}

generate() {
  # Prints the project folder: generated now, or already there from an earlier run.
  uv run --quiet --no-project --with "cookiecutter>=2.6" python - "$TEMPLATE" "${ARGS[@]}" <<'EOF'
import json
import os
import sys
from pathlib import Path

from cookiecutter.exceptions import FailedHookException
from cookiecutter.main import cookiecutter

# Only the folder goes to stdout; the hooks' messages go to the terminal through stderr.
result = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
template, *pairs = sys.argv[1:]
answers = dict(pair.split("=", 1) for pair in pairs)
sys.path.insert(0, template)
from template_answers import project_slug  # noqa: E402

defaults = json.loads(Path(template, "cookiecutter.json").read_text())
project = answers.get("project") or project_slug(answers.get("project_name", defaults["project_name"]))
folder = Path.cwd() / project
record = folder / ".quickstart.json"  # the options this script generated the project with


def effective(given: dict, key: str) -> str:
    if key in given:
        return repr(given[key])
    default = defaults.get(key)
    default = default[0] if isinstance(default, list) else default
    return "its default" if "{{" in str(default) else repr(default)


if not (folder / ".env").is_file():
    try:
        folder = Path(cookiecutter(template, no_input=True, extra_context=answers))
    except FailedHookException:
        sys.exit(1)  # the hook has printed the one-line reason
    (folder / ".quickstart.json").write_text(json.dumps(answers, indent=2) + "\n")
elif record.is_file():
    before = json.loads(record.read_text())
    differ = [
        f"{key}={effective(answers, key)} (it has {effective(before, key)})"
        for key in sorted(set(answers) | set(before))
        if effective(answers, key) != effective(before, key)
    ]
    if differ:
        print(f"[quickstart] {project}/ exists with other options, kept as it is: "
              f"{', '.join(differ)}; to apply them, docker compose down -v in it, remove it, "
              "and run again", file=sys.stderr)
elif answers:
    print(f"[quickstart] {project}/ exists (not made by quickstart), kept as it is: the options "
          "given are not applied; to apply them, docker compose down -v in it, remove it, and "
          "run again", file=sys.stderr)
print(folder, file=result)
EOF
}

main() {
  ARGS=("$@")
  for arg in "${ARGS[@]}"; do
    [[ $arg == *=* ]] || fail "'$arg' is not an option=value pair (e.g. project_name=\"Billing Jobs\")"
  done
  install_docker
  install_uv
  local project
  project=$(generate) || fail "generation failed (the message above says which answer)"
  cd "$project"
  # Without a registry the engine setup made stand-ins: say so, and build and run on them.
  uv run --quiet --no-project --with pyyaml python "$TEMPLATE/.ci/stand_ins.py" "$project"
  log "starting the stack in $project (first build takes a few minutes)"
  docker compose up -d --build --wait
  log "running the producer: 20 CPU tasks and 200 I/O tasks"
  docker compose run --rm producer
  local flower
  flower=$(docker compose port flower 5555)
  cat <<EOF

Flower: http://$flower
Login:  user FLOWER_USER in $project/.env, password in $project/secrets/flower_password
Next:   cd $project && make      (lists everyday commands; the README explains the stack)
EOF
}

main "$@"
