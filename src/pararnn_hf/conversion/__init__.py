"""Reference ParaRNN checkpoints <-> Hugging Face folders, and upcycling Llama-style models."""

from .convert import from_llama, from_reference, to_reference
from .io import ConversionError, load_state_dict
from .reference import cell_from_reference, hf_from_lm, infer_config_from_lm, lm_from_hf

__all__ = [
    "ConversionError",
    "cell_from_reference",
    "from_llama",
    "from_reference",
    "hf_from_lm",
    "infer_config_from_lm",
    "lm_from_hf",
    "load_state_dict",
    "to_reference",
]
