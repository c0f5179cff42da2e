#!/usr/bin/env bash
# Make a Docker engine + Compose v2 available, and the base images the stack names.
#
# Where a registry is reachable the base images are simply pulled. Where none is (this
# project's CI machine), each missing tag gets a local stand-in: a Debian root file system
# with Python, pip, redis-server and this machine's CA bundle (for pip behind its proxy).
# Safe to run again: every step is skipped when already done.
set -euo pipefail

BASE_IMAGES=${BASE_IMAGES:-"python:3.13-slim python:3.12-slim python:3.11-slim redis:8"}
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

missing_images() {
  local tag
  for tag in $BASE_IMAGES; do
    docker image inspect "$tag" >/dev/null 2>&1 && continue
    timeout 60 docker pull -q "$tag" >/dev/null 2>&1 && continue
    echo "$tag"
  done
}

build_standin() {
  local root="$STATE/rootfs"
  if [ ! -x "$root/usr/bin/redis-server" ]; then
    log "bootstrapping a Debian root for stand-in images (no registry reachable)"
    rm -rf "$root"
    debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates,redis-server,curl \
      trixie "$root" >/dev/null
  fi
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  # As in the official redis image: /data exists and belongs to the redis user.
  mkdir -p "$root/data"
  chroot "$root" chown redis:redis /data
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  tar -C "$root" -c . | docker import \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    -c 'WORKDIR /data' - standin:trixie >/dev/null
}

# Debian's prometheus package, unpacked (installing it would start a service): promtool for
# the alert rule tests, and where no registry is reachable, a stand-in image with its server
# at the official image's path.
prometheus() {
  local dir="$STATE/prometheus"
  if [ ! -x "$dir/usr/bin/promtool" ]; then
    log "unpacking Debian's prometheus package"
    mkdir -p "$dir"
    (cd "$dir" && { apt-get download prometheus 2>/dev/null \
      || { apt-get update -qq && apt-get download prometheus; }; } && dpkg -x prometheus_*.deb .)
  fi
  install -m 0755 "$dir/usr/bin/promtool" /usr/local/bin/promtool
  docker image inspect "$PROMETHEUS_IMAGE" >/dev/null 2>&1 && return
  timeout 60 docker pull -q "$PROMETHEUS_IMAGE" >/dev/null 2>&1 && return
  docker image inspect standin:trixie >/dev/null 2>&1 || build_standin
  log "building a stand-in for $PROMETHEUS_IMAGE from Debian's prometheus"
  printf '%s\n' 'FROM standin:trixie' 'COPY usr/bin/prometheus usr/bin/promtool /bin/' \
    'RUN mkdir -p /prometheus /etc/prometheus' 'WORKDIR /prometheus' \
    | docker build -q -t "$PROMETHEUS_IMAGE" -f - "$dir" >/dev/null
}

main() {
  install_engine
  install_compose_plugin
  start_daemon
  local need
  need=$(missing_images)
  if [ -n "$need" ]; then
    build_standin
    for tag in $need; do
      log "tagging stand-in as $tag"
      docker tag standin:trixie "$tag"
    done
  fi
  prometheus
  docker compose version
}

main "$@"
