#!/usr/bin/env bash
# The GPU check (docs/performance.md, "GPU check"): on one GPU machine with PyTorch preinstalled and no network, the
# smoke study end to end on CUDA and the GPU figures, in under 8 minutes; one JSON and one log in OUT.
#
#   tools/gpu-check.sh [OUT]                  run it (default OUT: gpu-check-out); exit 0 when every step passed
#   tools/gpu-check.sh --cpu-smoke [OUT]      the same steps, shrunk, on the CPU (the tests run this)
#   tools/gpu-check.sh --pack DIR [SKIP]      here, where the project's venv is: the wheels of everything lorascope needs
#                                             besides torch (this venv's versions) into DIR, to carry to the GPU machine;
#                                             SKIP: comma-separated distributions the target has (numpy,scipy,...)
# Environment: PYTHON (default python3: the machine's, with its torch), LORASCOPE_WHEELS (default tools/gpu-wheels:
# the folder --pack made; only the distributions this Python lacks are installed from it, never torch),
# GPU_CHECK_LIMIT (seconds for the whole check, default 470).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
PY="${PYTHON:-python3}"
export PYTHONPATH="$repo/pkg:$repo${PYTHONPATH:+:$PYTHONPATH}"

mode=()
if [ "${1:-}" = "--pack" ]; then
  exec "$PY" "$here/gpu_check.py" --pack --out "${2:?--pack DIR}" --skip "${3:-}"
fi
if [ "${1:-}" = "--cpu-smoke" ]; then mode=(--cpu-smoke); shift; fi
out="${1:-gpu-check-out}"
mkdir -p "$out"
exec > >(tee -a "$out/gpu-check.log") 2>&1
echo "== gpu-check $(date -u +%FT%TZ) on $(hostname) (${mode[*]:-cuda}); repo $(git -C "$repo" rev-parse --short=12 HEAD 2>/dev/null || echo ?)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

missing="$("$PY" "$here/gpu_check.py" --missing --out "$out")"
if [ -n "$missing" ]; then
  wheels="${LORASCOPE_WHEELS:-$here/gpu-wheels}"
  echo "== missing here: $missing; installing from $wheels (no index)"
  [ -d "$wheels" ] || { echo "gpu-check: $wheels does not exist: make it with tools/gpu-check.sh --pack DIR" >&2; exit 2; }
  # only what is missing, resolved inside the folder; what is installed (torch) stays as it is
  "$PY" -m pip install --no-index --find-links "$wheels" $missing || exit 2
fi

timeout "${GPU_CHECK_LIMIT:-470}" "$PY" "$here/gpu_check.py" --out "$out" "${mode[@]}"
code=$?
[ $code = 124 ] && echo "gpu-check: stopped at the ${GPU_CHECK_LIMIT:-470} s limit (what finished is in $out)"
exit $code
