"""The built images (make test-images builds them and sets LORASCOPE_IMAGE_TAG, the tag of the kind overlay's images).

Without LORASCOPE_IMAGE_TAG these tests skip with the command to run, except when LORASCOPE_REQUIRE_IMAGES=1 (set by
`make test-images`), where a missing image or engine is a failure: CI never skips them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lorascope.phases import PHASE_ORDER
from tests.images.podspec import IMAGE_REPO


@pytest.fixture(scope="session")
def engine() -> str:
    name = os.environ.get("CONTAINER_ENGINE", "podman")
    if not shutil.which(name):
        _missing(f"container engine {name!r} not found (make install-podman)")
    return name


@pytest.fixture(scope="session")
def image_tag(engine) -> str:
    tag = os.environ.get("LORASCOPE_IMAGE_TAG")
    if not tag:
        _missing("LORASCOPE_IMAGE_TAG not set: run `make test-images` (it builds the images and sets it)")
    for phase in PHASE_ORDER:
        ref = f"{IMAGE_REPO}/{phase}:{tag}"
        if subprocess.run([engine, "image", "exists", ref], capture_output=True).returncode != 0:
            pytest.fail(f"image {ref} not built (make images IMAGE_VARIANT=cpu)")
    return tag


@pytest.fixture(scope="session")
def built_code_version() -> str:
    v = os.environ.get("LORASCOPE_CODE_VERSION_BUILT")
    if not v:
        _missing("LORASCOPE_CODE_VERSION_BUILT not set: run `make test-images`")
    return v


def _missing(why: str) -> None:
    if os.environ.get("LORASCOPE_REQUIRE_IMAGES") == "1":
        pytest.fail(why)
    pytest.skip(why)
