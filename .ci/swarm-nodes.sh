#!/usr/bin/env bash
# A multi-node Docker Swarm on one machine, for tests: each node is a docker-in-docker
# container running its own dockerd, built locally (no registry needed).
#
#   swarm-nodes.sh up NAME N SOCKDIR   N nodes NAME-1..N (NAME-1 manager), swarm formed;
#                                      node i's engine answers on SOCKDIR/NAME-i.sock
#                                      (this script drives every node through it)
#   swarm-nodes.sh load NAME SOCKDIR IMAGE...  copy local images into every node
#   swarm-nodes.sh down NAME           remove the nodes, their volumes and network
#
# Why it looks like this (all found on the CI machine kind):
# - `--privileged` fails there (CAP_SYS_RESOURCE is outside the bounding set): every other
#   capability, unconfined seccomp/apparmor/system paths and all devices instead.
# - cgroup v1 comes read-only into the container: the node remounts each hierarchy read-write
#   and gives its dockerd a cgroup parent of its own, apart from the outer engine's.
# - /var/lib/docker must be a volume (overlay2 cannot sit on overlay2).
# - The kernel may lack IPVS: stacks then need `endpoint_mode: dnsrr` and host-mode ports.
set -euo pipefail

IMAGE=${SWARM_NODE_IMAGE:-celery-template-swarm-node:trixie}
STATE=${DOCKER_SETUP_DIR:-/var/tmp/docker-setup}
log() { printf '[swarm-nodes] %s\n' "$*" >&2; }

node_entry() {
  cat <<'EOF'
#!/bin/sh
set -e
for d in /sys/fs/cgroup/*/; do
  sub=$(basename "$d")
  umount "$d" 2>/dev/null || true
  if [ "$sub" = systemd ]; then mount -t cgroup -o none,name=systemd cgroup "$d"
  else mount -t cgroup -o "$sub" cgroup "$d"; fi
done
exec dockerd --host=unix:///var/run/docker.sock --host="unix:///hostsock/$(hostname).sock" \
  --cgroup-parent="/$(hostname)"
EOF
}

# A Debian root with dockerd: the stand-in root of docker-engine.sh when it is there.
build_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 && return
  local root packages=docker.io,iptables,iproute2,procps,ca-certificates
  root=$(mktemp -d)
  # shellcheck disable=SC2064 # expand now: the trap must remove this very folder
  trap "rm -rf '$root'" RETURN
  if [ -x "$STATE/rootfs/usr/bin/python3" ]; then
    log "building $IMAGE from $STATE/rootfs"
    cp -a "$STATE/rootfs/." "$root/"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" sh -c "DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $(echo "$packages" | tr , ' ') >/dev/null"
  else
    log "building $IMAGE with debootstrap"
    debootstrap --variant=minbase --include="$packages" trixie "$root" >/dev/null
  fi
  node_entry > "$root/usr/local/bin/node-entry"
  chmod 755 "$root/usr/local/bin/node-entry"
  tar -C "$root" -c . | docker import -c 'CMD ["/usr/local/bin/node-entry"]' - "$IMAGE" >/dev/null
}

nodes() { docker ps -a --filter "label=swarm-nodes=$1" --format '{{.Names}}' | sort; }
# The docker client of this machine, talking to node $2 of swarm $1.
on() { local name=$1 node=$2; shift 2; docker -H "unix://$SOCKDIR/$name-$node.sock" "$@"; }

up() {
  local name=$1 n=$2 sockdir=$3 i ip token
  build_image
  mkdir -p "$sockdir"
  SOCKDIR=$sockdir
  docker network create --label "swarm-nodes=$name" "$name" >/dev/null
  for i in $(seq 1 "$n"); do
    docker run -d --name "$name-$i" --hostname "$name-$i" --network "$name" \
      --label "swarm-nodes=$name" --cap-add ALL --cap-drop SYS_RESOURCE \
      --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm' \
      --tmpfs /run -v /var/lib/docker -v "$sockdir:/hostsock" "$IMAGE" >/dev/null
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 90); do on "$name" "$i" info >/dev/null 2>&1 && break; sleep 1; done
    on "$name" "$i" info >/dev/null
  done
  ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$name\").IPAddress}}" "$name-1")
  on "$name" 1 swarm init --advertise-addr "$ip" >/dev/null
  token=$(on "$name" 1 swarm join-token -q worker)
  for i in $(seq 2 "$n"); do
    on "$name" "$i" swarm join --token "$token" "$ip:2377" >/dev/null
  done
  on "$name" 1 node ls
}

load() {
  local name=$1 sockdir=$2 node pid pids=()
  shift 2
  SOCKDIR=$sockdir
  for node in $(nodes "$name"); do
    docker save "$@" | on "$name" "${node##*-}" load -q >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
}

down() {
  local name=$1 node
  for node in $(nodes "$name"); do docker rm -f -v "$node" >/dev/null; done
  docker network rm "$name" >/dev/null 2>&1 || true
}

"$@"
