#!/usr/bin/env bash
# Make this machine able to build and run the lorascope images with rootful podman (CI: `make install-podman`).
# Idempotent: apt-installs only what is missing, then checks that podman can run a container with the project-local
# containers.conf (tools/containers.conf, selected through CONTAINERS_CONF; nothing under /etc is changed) and that
# the Python base image exists, building the local stand-in (tools/standin-python-image.sh) when it cannot be pulled.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11.14-slim-bookworm}"

need=()
for pair in podman:podman buildah:buildah runc:runc newuidmap:uidmap debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
if ((${#need[@]})); then
  [ "$(id -u)" = 0 ] || { echo "podman-setup: need root to apt-get install ${need[*]}" >&2; exit 2; }
  echo "podman-setup: apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

podman --version
podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupsVersion}} {{.Store.GraphDriverName}}' \
  | { read -r rt cg drv; echo "podman-setup: runtime=$rt cgroups=$cg storage=$drv"; [ "$rt" = runc ] || {
      echo "podman-setup: runtime is $rt, not runc: is CONTAINERS_CONF=$CONTAINERS_CONF read?" >&2; exit 1; }; }

if podman image exists "$PYTHON_IMAGE"; then
  echo "podman-setup: $PYTHON_IMAGE present ($(podman image inspect --format '{{index .Labels "org.lorascope.standin"}}' "$PYTHON_IMAGE" | sed 's/^$/pulled/;s/^yes$/local stand-in/'))"
elif timeout 120 podman pull -q "docker.io/library/$PYTHON_IMAGE" >/dev/null 2>&1; then
  echo "podman-setup: pulled $PYTHON_IMAGE"
else
  echo "podman-setup: $PYTHON_IMAGE cannot be pulled here; building the local stand-in"
  "$here/standin-python-image.sh" "$PYTHON_IMAGE"
fi
# a container starts, as uid 10001, on a read-only root (what every phase pod does)
out=$(podman run --rm --read-only --user 10001:10001 --network=none "$PYTHON_IMAGE" python -c 'import os, sys; print(os.getuid(), sys.version.split()[0])')
echo "podman-setup: container ok: uid/python $out"
