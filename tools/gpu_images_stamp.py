"""The stamp that decides whether CI builds the GPU (CUDA) images: a sha256 over everything their content depends on
besides the package code -- images/*/Dockerfile, the scripts they run (images/*/*.sh), the hash locks
images/*/*.lock, constraints.txt and pyproject.toml's dependency lists (not the whole file: a new pytest marker does
not change an image).

  python tools/gpu_images_stamp.py            print the stamp
  python tools/gpu_images_stamp.py --check    exit 0 when it equals images/gpu-images.stamp (committed), else 1
  python tools/gpu_images_stamp.py --write    write images/gpu-images.stamp (make images-gpu-verified does, after a
                                              successful CUDA build: the committed stamp means "these inputs built")

The package code is not in the stamp: the GPU images' code layers are the same two layers as the CPU images', which
`make test-images` builds and runs on every commit (same Dockerfile stages, only the torch stage differs).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAMP = REPO / "images" / "gpu-images.stamp"


def inputs() -> dict[str, str]:
    files = sorted([*REPO.glob("images/*/Dockerfile"), *REPO.glob("images/*/*.sh"), *REPO.glob("images/*/*.lock"),
                    REPO / "constraints.txt"])
    out = {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = {"dependencies": project["dependencies"], "ml": project["optional-dependencies"]["ml"]}
    out["pyproject.toml#dependencies"] = hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()
    return out


def stamp() -> str:
    return hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()


def main(argv: list[str]) -> int:
    now = stamp()
    if "--write" in argv:
        STAMP.write_text(now + "\n")
        print(f"{STAMP.relative_to(REPO)}: {now}")
        return 0
    if "--check" in argv:
        committed = STAMP.read_text().strip() if STAMP.exists() else "(none)"
        same = committed == now
        print(f"gpu images stamp {now[:12]} {'==' if same else '!='} committed {committed[:12]}")
        return 0 if same else 1
    print(now)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
