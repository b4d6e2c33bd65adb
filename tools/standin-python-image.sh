#!/usr/bin/env bash
# A LOCAL STAND-IN for the Python base image, for machines that reach Debian's mirror and PyPI but no container
# registry (CI here). It is NOT the official python:3.11.14-slim-bookworm: it is Debian bookworm (minbase) with
# Debian's python3.11 (3.11.2) and pip, shaped like the official image where the Dockerfiles depend on it
# (`python` and `pip` on PATH, pip may install into the system Python, CA certificates), and tagged with the official
# name so images/*/Dockerfile build unchanged. Results obtained on it say so (label org.lorascope.standin=yes).
# Usage: tools/standin-python-image.sh [IMAGE]   (about 3.5 minutes cold; podman-setup.sh calls it when needed)
set -euo pipefail
IMAGE="${1:-python:3.11.14-slim-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d /var/tmp/lorascope-standin.XXXXXX)"
trap 'rm -rf "$root"' EXIT

nice debootstrap --variant=minbase --include=python3.11,python3-pip,ca-certificates bookworm "$root" "$MIRROR" \
  >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# pip installs into the system Python, as in the official image (PEP 668 marker removed)
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf python3 "$root/usr/bin/python"
ln -sf pip3 "$root/usr/bin/pip"
# the host's CA bundle, so pip inside verifies PyPI exactly as the host does
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$MIRROR" "$MIRROR" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*

tar -C "$root" -c . | podman import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'LABEL org.lorascope.standin=yes' \
  --change 'LABEL org.lorascope.standin.note="local stand-in for the official python image: debootstrap bookworm + Debian python3.11"' \
  --change 'CMD ["python3"]' \
  - "docker.io/library/$IMAGE" >/dev/null
podman run --rm "docker.io/library/$IMAGE" python -c 'import ssl, sys; print("stand-in python", sys.version.split()[0], ssl.OPENSSL_VERSION)'
podman run --rm "docker.io/library/$IMAGE" pip --version
