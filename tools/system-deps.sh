#!/usr/bin/env bash
# Debian packages the tests need, installed only when missing (idempotent): `tools/system-deps.sh PKG...` where PKG is
# one of the names below. Without root or apt it installs nothing and stops with one line saying what to install.
#   postgresql  the HPO shared-storage test starts its own server on 127.0.0.1 (needs initdb/postgres binaries)
#   g++         vLLM's compiled regime on CPU: torch inductor builds its generated C++ with it (tests/vllm)
#   default-jre-headless  METEOR 1.5 (the generation task's metric): pycocoevalcap runs its bundled jar with java
set -euo pipefail
need=()
for pkg in "$@"; do
  case "$pkg" in
    postgresql) ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql) ;;
    default-jre-headless) command -v java >/dev/null 2>&1 || need+=(default-jre-headless) ;;
    *) command -v "$pkg" >/dev/null 2>&1 || dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg") ;;
  esac
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "lorascope: the tests need these Debian packages, please install them: sudo apt-get install -y ${need[*]}" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
