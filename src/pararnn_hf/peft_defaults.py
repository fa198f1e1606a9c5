"""Default LoRA targets for ``model_type="pararnn"``, registered with PEFT when it is installed
(PEFT is not a dependency), so ``get_peft_model(model, LoraConfig(r=8))`` works without
``target_modules`` as it does for Llama.

The targets are each mixer's ``in_proj`` and ``out_proj``: the dense maps into and out of the
recurrence, the counterpart of attention's projections that PEFT adapts by default. The cell's
own input map ``B`` is a block-diagonal parameter, not an ``nn.Linear``, so LoRA cannot wrap it;
the MLP can be added with ``target_modules`` as for any model.
"""

from __future__ import annotations

import importlib.util

LORA_TARGETS = ["in_proj", "out_proj"]


def register_peft_defaults() -> bool:
    """Add the targets to PEFT's table (once; a user's own entry wins). False without PEFT."""
    try:
        if importlib.util.find_spec("peft") is None:
            return False
        from peft.utils import constants
    except ImportError:  # an installed but broken PEFT must not break importing pararnn_hf
        return False
    constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault("pararnn", list(LORA_TARGETS))
    return True
