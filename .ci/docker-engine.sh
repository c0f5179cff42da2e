#!/usr/bin/env bash
# Make a Docker engine + Compose v2 available, and the base images the stack names.
#
# Where a registry is reachable the base images are simply pulled. Where none is (this
# project's CI machine), each gets a local stand-in: a Debian root file system with the same
# Python minor version (with pip) or Redis major version, and this machine's CA bundle (for pip
# behind its proxy).
# Safe to run again: every step is skipped when already done.
set -euo pipefail

# The stack's public base images. Tests build and run against private aliases of them
# (PREFIX/<tag>, see tests/conftest.py), so a stand-in never shadows a real image on a shared
# engine; users of the generated project still get the official images.
BASE_IMAGES=${BASE_IMAGES:-"python:3.13-slim python:3.11-slim redis:8"}
PREFIX=${BASE_IMAGE_PREFIX:-celery-template-base}
# The monitoring profile's Prometheus (Grafana has no stand-in: its dashboard's queries are
# tested against Prometheus instead).
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-prom/prometheus:v3.5.0}
STATE=${DOCKER_SETUP_DIR:-/var/tmp/docker-setup}
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$STATE"
log() { printf '[docker-engine] %s\n' "$*" >&2; }

install_engine() {
  command -v dockerd >/dev/null && command -v debootstrap >/dev/null && return
  log "installing docker.io and debootstrap"
  apt-get update -qq
  apt-get install -y -qq docker.io debootstrap >/dev/null
}

# Debian 12 ships Compose v1 only; the v2 plugin binaries come from Debian 13's packages,
# unpacked (not installed) into the CLI plugin folder.
install_compose_plugin() {
  docker compose version >/dev/null 2>&1 && return
  log "installing the Compose v2 and buildx CLI plugins"
  local mirror apt_opts
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  mkdir -p "$STATE/apt/lists/partial" "$STATE/apt/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main" \
    > "$STATE/apt/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$STATE/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$STATE/apt/lists")
  apt-get "${apt_opts[@]}" update -qq
  (cd "$STATE/apt/debs" && apt-get "${apt_opts[@]}" download docker-compose docker-buildx >/dev/null)
  rm -rf "$STATE/apt/unpacked"
  for deb in "$STATE"/apt/debs/*.deb; do dpkg -x "$deb" "$STATE/apt/unpacked"; done
  mkdir -p /usr/local/lib/docker/cli-plugins
  cp "$STATE"/apt/unpacked/usr/libexec/docker/cli-plugins/* /usr/local/lib/docker/cli-plugins/
}

start_daemon() {
  docker info >/dev/null 2>&1 && return
  log "starting dockerd"
  setsid dockerd >"$STATE/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && return
    sleep 1
  done
  log "dockerd did not start; its log:"
  tail -n 30 "$STATE/dockerd.log" >&2
  return 1
}

# Debian release of an honest Python stand-in: the same minor version as the tag names.
# No Debian release carries Python 3.12, so it has none.
python_suite() {
  case "$1" in
    python:3.13-slim) echo trixie ;;
    python:3.11-slim) echo bookworm ;;
    *) return 1 ;;
  esac
}

# Redis 8.0 from Debian trixie, on the trixie Python stand-in (saves a second bootstrap).
build_redis_standin() {
  provide_image python:3.13-slim
  docker build -q -t "$PREFIX/$1" - >/dev/null <<EOF
FROM $PREFIX/python:3.13-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
EOF
}

# Debian's prometheus package, unpacked (installing it would start a service): promtool for
# the alert rule tests, and the server for a Prometheus stand-in.
unpack_prometheus() {
  local dir="$STATE/prometheus"
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    log "unpacking Debian's prometheus package"
    mkdir -p "$dir"
    (cd "$dir" && { apt-get download prometheus 2>/dev/null \
      || { apt-get update -qq && apt-get download prometheus; }; } && dpkg -x prometheus_*.deb .)
  fi
  install -m 0755 "$dir/usr/bin/promtool" /usr/local/bin/promtool
}

# Debian's Prometheus build at the official image's paths, on the trixie Python stand-in.
build_prometheus_standin() {
  provide_image python:3.13-slim
  printf '%s\n' "FROM $PREFIX/python:3.13-slim" 'COPY usr/bin/prometheus usr/bin/promtool /bin/' \
    'RUN mkdir -p /prometheus /etc/prometheus' 'WORKDIR /prometheus' \
    | docker build -q -t "$PREFIX/$1" -f - "$STATE/prometheus" >/dev/null
}

build_standin() {
  local tag=$1 suite root
  if [ "$tag" = redis:8 ]; then
    build_redis_standin "$tag"
    return
  fi
  if [ "$tag" = "$PROMETHEUS_IMAGE" ]; then
    build_prometheus_standin "$tag"
    return
  fi
  suite=$(python_suite "$tag") || {
    log "no registry and no stand-in recipe for $tag"
    return 1
  }
  root="$STATE/rootfs-$suite-python"
  if [ ! -e "$root/.complete" ]; then
    log "bootstrapping Debian $suite for a stand-in of $tag (no registry reachable)"
    rm -rf "$root"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      "$suite" "$root" >/dev/null
    touch "$root/.complete"
  fi
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  tar -C "$root" --exclude=./.complete -c . | docker import \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    - "$PREFIX/$tag" >/dev/null
}

# PREFIX/<tag>: the real image where a registry answers, else a local stand-in.
provide_image() {
  local tag=$1
  docker image inspect "$PREFIX/$tag" >/dev/null 2>&1 && return
  if timeout 60 docker pull -q "$tag" >/dev/null 2>&1; then
    docker tag "$tag" "$PREFIX/$tag"
  else
    build_standin "$tag"
  fi
  log "$PREFIX/$tag ready"
}

main() {
  install_engine
  install_compose_plugin
  start_daemon
  local tag
  unpack_prometheus
  for tag in $BASE_IMAGES "$PROMETHEUS_IMAGE"; do provide_image "$tag"; done
  docker compose version
}

main "$@"
