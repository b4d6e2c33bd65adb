"""lorascope.limits: each limit against what the code really builds. The renderer's objects for the longest names a
study may have are valid Kubernetes names and labels (and one character more is refused at the door); the study
ConfigMap of the largest study file the door lets in is exactly the API server's 1 MiB; the store key and attempt id
bounds hold. The file names a real run builds are checked in tests/phases/test_name_limits.py."""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import pytest
import yaml

from lorascope import limits
from lorascope.errors import ConfigError
from lorascope.k8s import jobset, render
from lorascope.runner import default_run_id
from lorascope.store import Store
from lorascope.study import Study, parse_study

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def longest_names_study() -> Study:
    """The smoke study with the longest study name, and a method name, the limits allow."""
    raw = copy.deepcopy(SMOKE)
    raw["name"] = "s" * limits.STUDY_NAME_MAX
    most = limits.method_name_max([t["name"] for t in raw["tasks"]], raw["seeds"])
    raw["methods"][1]["name"] = "l" * most
    raw["hpo"]["spaces"]["l" * most] = raw["hpo"]["spaces"].pop("lora")
    return Study.model_validate(raw)


def _walk(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
            if k == "labels" and isinstance(v, dict):
                yield from ((f"{path}.labels.{lk}", "label", lv) for lk, lv in v.items())
            if k == "name" and isinstance(v, str) and path.endswith("metadata"):
                yield path, "name", v
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}.{i}")


@pytest.mark.parametrize("overlay", ["base", "kind", "gke"])
def test_the_longest_names_render_to_valid_kubernetes_names_and_labels(overlay):
    study = longest_names_study()
    assert len(default_run_id(study)) == limits.LABEL_VALUE_MAX  # the study-name limit is exactly tight
    extra = {"registry": "europe-west4-docker.pkg.dev/p/lorascope", "image_tag": "t1"} if overlay == "gke" else {}
    opts = render.RenderOptions(overlay=overlay, **extra)
    objects = render.render_objects(study, "name: x\n", opts)
    objects.append(jobset.pipeline_jobset(study, opts.resolved(study)))
    seen = 0
    for obj in objects:
        for where, what, value in _walk(obj):
            seen += 1
            if what == "label":
                assert len(value) <= limits.LABEL_VALUE_MAX and LABEL_VALUE.match(value), (obj["kind"], where, value)
            else:
                assert len(value) <= limits.LABEL_VALUE_MAX and DNS_LABEL.match(value), (obj["kind"], where, value)
    assert seen > 100
    run_ids = {v for o in objects for w, what, v in _walk(o) if w.endswith("lorascope.dev/run-id")}
    assert run_ids == {default_run_id(study)}


def test_one_character_more_is_refused_at_the_door():
    raw = copy.deepcopy(SMOKE)
    raw["name"] = "s" * (limits.STUDY_NAME_MAX + 1)
    with pytest.raises(ConfigError, match=r"field name: 55 characters; at most 54: the run id <name>-<hash8> is a "):
        parse_study(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="must be a valid label value"):  # what the renderer would have said
        render.RenderOptions(run_id=f"{raw['name']}-01234567").resolved(longest_names_study())
    most = limits.method_name_max(["mrpc", "sst2", "rte"], SMOKE["seeds"])
    assert most == 255 - len("mrpc-.journal.lock.rename") - limits.UUID_CHARS == 194
    raw = copy.deepcopy(SMOKE)
    raw["methods"][1]["name"] = "l" * (most + 1)
    raw["hpo"]["spaces"]["l" * (most + 1)] = raw["hpo"]["spaces"].pop("lora")
    with pytest.raises(ConfigError, match=r"field methods.1.name: 'l+'... \(195 characters\) makes the file name "
                                          r"'mrpc-l+'... 256 bytes long .* a method name may have at most 194"):
        parse_study(yaml.safe_dump(raw))


def test_the_largest_study_file_fills_the_configmap_exactly():
    study = longest_names_study()
    opts = render.RenderOptions().resolved(study)
    text = "#" * (limits.MAX_STUDY_BYTES - 1) + "\n"
    cm = render.study_configmap(study, text, opts)
    data_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in cm["data"].items())
    assert data_bytes == limits.CONFIGMAP_DATA_MAX == 1024 * 1024
    assert list(cm["data"]) == [limits.CONFIGMAP_STUDY_KEY]


def test_the_longest_store_key_fits_s3_with_room_for_a_prefix(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 64)  # a pod name is at most 63
    store = Store.open(str(tmp_path / "store"), code_version="t")
    with store.writer("runs/r/cells/c", phase="train", study_hash="h") as w:
        assert len(w.attempt) == limits.ATTEMPT_ID_MAX
        w.add_bytes("x", b"")
    cell = "c" * limits.FILE_NAME_MAX
    key = f"runs/{'r' * 63}/checkpoints/{cell}/checkpoint-{'9' * 20}/_attempts/{w.attempt}/adapter/adapter_model.safetensors"
    assert len(key) <= limits.STORE_KEY_MAX_BELOW_PREFIX <= limits.S3_KEY_MAX // 2
