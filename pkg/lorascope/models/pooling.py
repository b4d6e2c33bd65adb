"""Pooling: where a decoder classifier reads the sequence, and the masked mean the extract phase pools.

Where transformers 5.23 pools. `GenericForSequenceClassification.forward` (the Llama classifier) takes the rightmost
token whose id differs from `config.pad_token_id`. With pad = eos and pairs written `BOS s1 EOS s2`, that is the end
of s2 for an ordinary pair, but it is not the last attended token when the sequence itself ends in EOS (a pair whose
s2 is empty, or a caller that appends EOS): it then skips back over the EOS into s1; with `inputs_embeds` it reads
position -1, a pad. Older releases took the token before the *first* pad id, which for our pairs is the separator's
neighbour, the end of s1. So the position must not depend on token ids at all.

What we do. `loading.load_classifier` re-classes the loaded model to a subclass (same class name, so `save_pretrained`
still writes `LlamaForSequenceClassification` and vLLM and transformers load it as usual) whose forward reads the
score head at `last_token_index(attention_mask)`, the last attended token; with right padding that is the last
token of the prompt, which is also what vLLM's classify pooling reads. The fix lives on the model object, so it
holds through `get_peft_model`, `PeftModel.from_pretrained` and `merge_and_unload()` (all keep the same object as
the base). A model saved and re-loaded with plain `AutoModel...from_pretrained` gets the stock forward back: load
through `loading.load_classifier`.
"""


from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from lorascope.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the position of the last attended token (the rightmost 1 in the mask), as int64 [batch].
    Right padding: the last real token; left padding works too. A row with no attended token gives 0."""
    mask = attention_mask.to(torch.int64)
    positions = torch.arange(mask.shape[-1], device=mask.device, dtype=torch.int64)
    return (positions * mask).argmax(-1)


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor, exclude_bos: bool = True) -> torch.Tensor:
    """Mean of `hidden` [batch, seq, dim] over attended positions, in float32 [batch, dim]. With `exclude_bos`
    the first attended position of each row (BOS: its state is the same for every input) is left out, so the
    mean is over the text tokens only. Padding never counts, so the result does not depend on pad length."""
    mask = attention_mask.to(device=hidden.device, dtype=torch.float32).clone()
    if exclude_bos:
        first = mask.argmax(-1)  # first attended position per row
        mask[torch.arange(mask.shape[0], device=mask.device), first] = 0.0
    counts = mask.sum(-1, keepdim=True).clamp_min(1.0)
    return (hidden.float() * mask.unsqueeze(-1)).sum(1) / counts


class LastAttendedPooling:
    """Mixin for `GenericForSequenceClassification` models: classify at the last attended token.

    `accepts_loss_kwargs = False`: the loss is a mean over the micro-batch. Without it, HF Trainer sees `**kwargs`
    in forward, assumes the model normalises by `num_items_in_batch` and skips its division by the
    gradient-accumulation steps, which would scale gradients by the accumulation factor."""

    accepts_loss_kwargs = False

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ):
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        outputs = getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        batch, seq = hidden.shape[:2]
        if attention_mask is None:
            index = torch.full((batch,), seq - 1, device=hidden.device, dtype=torch.int64)
        else:
            # a mask longer than the sequence covers cached positions before it (PEFT's prefix tuning prepends
            # num_virtual_tokens ones for its virtual key/values): the sequence's own columns are the last `seq`
            index = last_token_index(attention_mask[:, -seq:]).to(hidden.device)
        pooled_logits = self.score(hidden[torch.arange(batch, device=hidden.device), index])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=pooled_logits, labels=labels, pooled_logits=pooled_logits, config=self.config)
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


_POOLED_CLASSES: dict[type, type] = {}


def use_last_attended_pooling(model: PreTrainedModel) -> PreTrainedModel:
    """Re-class `model` in place so its forward classifies at the last attended token (idempotent)."""
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.utils.generic import can_return_tuple

    cls = type(model)
    if issubclass(cls, LastAttendedPooling):
        return model
    if not isinstance(model, GenericForSequenceClassification):
        raise ConfigError(
            f"model class {cls.__name__} is not a decoder sequence classifier (transformers' "
            "GenericForSequenceClassification); lorascope supports Llama-style decoders"
        )
    if cls not in _POOLED_CLASSES:
        # keep the class name: save_pretrained writes config.architectures from it, and vLLM picks its model by it
        forward = can_return_tuple(LastAttendedPooling.forward)
        _POOLED_CLASSES[cls] = type(cls.__name__, (LastAttendedPooling, cls), {"forward": forward, "__module__": cls.__module__})
    model.__class__ = _POOLED_CLASSES[cls]
    return model
