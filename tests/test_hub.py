"""lorascope.models.hub: one mapping of Hugging Face Hub errors to the study's field, used by preflight (config.json)
and by fetch_model (the snapshot); each message names the field and the value."""

from __future__ import annotations

from types import SimpleNamespace

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import errors as hf

from lorascope import preflight
from lorascope.errors import ConfigError, LorascopeError
from lorascope.models import hub

NAME, REV = "some-org/some-model", "v1"


def _http(cls):
    return cls("hub said no", response=httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/x")))


CASES = [
    (lambda: _http(hf.RevisionNotFoundError), "model.revision 'v1': no such revision of 'some-org/some-model' on the hub"),
    (lambda: _http(hf.GatedRepoError), "model.name 'some-org/some-model' is gated: accept its license and set HF_TOKEN"),
    (lambda: _http(hf.RepositoryNotFoundError), "model.name 'some-org/some-model': no such model on the hub (and no such local folder)"),
    (lambda: _http(hf.RemoteEntryNotFoundError), "model.name 'some-org/some-model'@v1: the hub repo has no config.json (not a transformers model)"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "message"), CASES)
def test_study_errors_name_the_field(make, message):
    err = hub.study_error(make(), NAME, REV, "config.json")
    assert isinstance(err, ConfigError) and str(err) == message


def test_unreachable_is_not_the_study_fault():
    offline = hf.LocalEntryNotFoundError("not cached and offline")
    assert isinstance(offline, hf.EntryNotFoundError)  # why the order matters: it is an EntryNotFoundError too
    assert hub.unreachable(offline) and hub.study_error(offline, NAME, REV, "config.json") is None
    assert hub.study_error(OSError("disk"), NAME, REV) is None and not hub.unreachable(OSError("disk"))


def _raise(exc):
    def fake(*_a, **_k):
        raise exc

    return fake


@pytest.mark.parametrize(("make", "message"), CASES[:3])
def test_preflight_and_fetch_model_say_the_same(monkeypatch, tmp_path, make, message):
    study = SimpleNamespace(model=SimpleNamespace(name=NAME, revision=REV))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(make()))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raise(make()))
    with pytest.raises(ConfigError) as pre:
        preflight.model_config(study, {})
    with pytest.raises(ConfigError) as fetch:
        hub.fetch_model(NAME, REV, tmp_path / "model")
    assert str(pre.value) == str(fetch.value) == message


def test_unreachable_hub_skips_preflight_and_fails_fetch(monkeypatch, tmp_path):
    study = SimpleNamespace(model=SimpleNamespace(name=NAME, revision=REV))
    offline = hf.LocalEntryNotFoundError("connection refused")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _raise(offline))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _raise(offline))
    config, why = preflight.model_config(study, {})  # a check that cannot be made is skipped with a note, not an error
    assert config is None and why == "the hub is unreachable for 'some-org/some-model' (LocalEntryNotFoundError)"
    with pytest.raises(LorascopeError, match=r"not in the local HF cache and the hub is unreachable") as fetch:
        hub.fetch_model(NAME, REV, tmp_path / "model")
    assert not isinstance(fetch.value, ConfigError)
