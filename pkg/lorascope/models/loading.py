"""Loading: the tokenizer and the base classifier by family, and the device.

The classifier is `AutoModelForSequenceClassification.from_pretrained(dir)` for the hub model and the tiny smoke
models alike, loaded by family (`lorascope.models.families`, docs/families.md). Encoders (RoBERTa) keep their own
head, which reads the first token, and their own pad token. For decoders one thing is changed after loading: where the
classifier reads the sequence (lorascope.models.pooling). Transformers' load report is shown only when it reports
something other than what loading a causal-LM checkpoint as a classifier always reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorascope.errors import ConfigError
from lorascope.models.pooling import use_last_attended_pooling

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _family(config: Any):
    """The model family (lorascope.models.families) of a config object or config.json dict: ConfigError naming the
    supported model types for any other architecture."""
    from lorascope.models.families import family_of

    return family_of(config)


def model_family(model_dir: str | Path):
    """The family of the model in `model_dir`, from its config.json alone (no transformers import)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"model folder {model_dir} has no config.json")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    return _family(config)


def check_encoder_config(config: Mapping[str, Any], where: str) -> None:
    """What lorascope's encoder path needs of a config.json: no segment embeddings in use (`type_vocab_size` 1, as
    RoBERTa). BERT's pairs need `token_type_ids` (segment B = 1), which lorascope's batches do not carry (every
    batch is input_ids + attention_mask, for training, evaluation, extraction and the bench alike): refused rather
    than trained silently with every token in segment 0."""
    types = config.get("type_vocab_size")
    if isinstance(types, int) and types > 1:
        raise ConfigError(f"{where}: {config.get('model_type')} with type_vocab_size {types} needs token_type_ids for "
                          "sentence pairs, which lorascope does not pass; encoders like RoBERTa (type_vocab_size 1) "
                          "are supported")  # fmt: skip


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer, right padding. Decoders: pad = eos (the pad id never matters: the classifier reads
    the last attended token from the mask). Encoders: the tokenizer's own pad token, which must be the config's
    `pad_token_id` (RoBERTa derives position ids from it: a pad id the model does not know would shift positions)."""
    from transformers import AutoTokenizer

    family = model_family(model_dir)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "right"
    if family.encoder:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        check_encoder_config(config, f"model in {model_dir}")
        if tok.pad_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
            raise ConfigError(f"encoder tokenizer in {model_dir} needs pad, cls and sep tokens (has pad={tok.pad_token!r}, "
                              f"cls={tok.cls_token!r}, sep={tok.sep_token!r})")  # fmt: skip
        if config.get("pad_token_id") is not None and int(config["pad_token_id"]) != int(tok.pad_token_id):
            raise ConfigError(f"model in {model_dir}: tokenizer pad id {tok.pad_token_id} differs from config.json "
                              f"pad_token_id {config['pad_token_id']}")  # fmt: skip
        tok.lorascope_encoder = True  # data.encode: the tokenizer's own templates, not decoders' `BOS s1 EOS s2`
        return tok
    if tok.eos_token is None or tok.bos_token_id is None:
        raise ConfigError(f"tokenizer in {model_dir} needs a bos and an eos token (has bos={tok.bos_token!r}, eos={tok.eos_token!r})")
    tok.pad_token = tok.eos_token
    return tok


def _pad_id(config: Any) -> int:
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = config.eos_token_id
        pad = eos[0] if isinstance(eos, list | tuple) else eos
    if pad is None:
        raise ConfigError(f"model config ({config.model_type}) has neither pad_token_id nor eos_token_id")
    return int(pad)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _ExpectedLoadReport(logging.Filter):
    """Drops transformers' LOAD REPORT when it lists only what loading a causal-LM checkpoint as a classifier always
    reports (the LM head `lm_head.*` UNEXPECTED, the new `score.*` head, or an encoder's `classifier.*`, MISSING). A report with any other key or status
    (a real mismatch) passes through unchanged."""

    EXPECTED = {("UNEXPECTED", "lm_head."), ("MISSING", "score."), ("MISSING", "classifier.")}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = _ANSI.sub("", record.getMessage())
        if "LOAD REPORT" not in msg:
            return True
        rows = [[c.strip() for c in line.split("|")] for line in msg.splitlines() if line.count("|") >= 2]
        rows = [r for r in rows if r[0] and r[0] != "Key" and not set(r[0]) <= {"-", "+"}]
        return not rows or not all(any(r[1] == st and r[0].startswith(pre) for st, pre in self.EXPECTED) for r in rows)


@contextlib.contextmanager
def expected_load_report_silenced() -> Iterator[None]:
    """Around `from_pretrained` of a classifier: the expected load report is not printed, anything else is; HF's
    weight-loading progress bars only on a terminal (a pod's log gets no carriage-return bars)."""
    from transformers.utils import logging as hf_logging

    filt = _ExpectedLoadReport()
    targets = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    bars = hf_logging.is_progress_bar_enabled()
    for lg in targets:
        lg.addFilter(filt)
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg in targets:
            lg.removeFilter(filt)
        if bars:
            hf_logging.enable_progress_bar()


def load_classifier(model_dir: str | Path, num_labels: int, dtype: torch.dtype, device: torch.device | str):
    """`AutoModelForSequenceClassification.from_pretrained(model_dir)` by family (lorascope.models.families). Decoders:
    pad id set to the eos id explicitly, and classification at the last attended token (`use_last_attended_pooling`).
    Encoders (RoBERTa, BERT): the model's own head, which reads the first token (`<s>`/`[CLS]`) and so does not depend
    on padding; pad id the config's own. A checkpoint without a classifier gets a freshly initialised head (`score`,
    or an encoder's `classifier`), drawn from torch's global RNG: seed before calling for a reproducible head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    family = model_family(model_dir)  # ConfigError for an unsupported model_type, naming the supported ones
    if "classification" in family.refused_task_types:  # GPT-2: generation only (preflight refuses it at the door)
        raise ConfigError(f"model in {model_dir}: {family.refused_task_types['classification']}")
    config = AutoConfig.from_pretrained(str(model_dir))
    if family.encoder:
        check_encoder_config(config.to_dict(), f"model in {model_dir}")
        if getattr(config, "pad_token_id", None) is None:
            raise ConfigError(f"encoder config in {model_dir} ({config.model_type}) has no pad_token_id")
        with expected_load_report_silenced():
            model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=num_labels, dtype=dtype)
        # its forward takes **kwargs, so HF Trainer would assume it normalises by num_items_in_batch and skip dividing
        # by the accumulation steps; its loss is a plain mean (see LastAttendedPooling for decoders)
        model.accepts_loss_kwargs = False
        return model.to(device)
    pad_id = _pad_id(config)
    with expected_load_report_silenced():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=num_labels, pad_token_id=pad_id, dtype=dtype
        )
    model.config.pad_token_id = pad_id
    use_last_attended_pooling(model)
    return model.to(device)


def pick_device(env: Mapping[str, str]) -> torch.device:
    """`LORASCOPE_DEVICE` when set (cpu, cuda, cuda:1, ...), else cuda when available, else cpu."""
    raw = env.get("LORASCOPE_DEVICE")
    if raw:
        try:
            device = torch.device(raw)
        except RuntimeError:
            raise ConfigError(f"LORASCOPE_DEVICE={raw!r} is not a torch device (cpu, cuda, cuda:0)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"LORASCOPE_DEVICE={raw!r} but no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
