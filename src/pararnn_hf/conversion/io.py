"""Reading checkpoints safely (writing goes through ``pararnn_hf.output_guard``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch

# Wrappers that FSDP, DDP, torch.compile and activation checkpointing put in front of keys
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "module.")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the key, shape or file."""


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt``/``.bin`` file (never unpickling code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or corrupt files raise many types
        raise ConversionError(
            f"{path} is truncated, corrupt or not a checkpoint ({type(err).__name__}: {err})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a flat dict of tensors (a state dict)")
    return strip_wrapper_prefixes(state)


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if new.startswith(prefix):
                    new, changed = new[len(prefix) :], True
            new = new.replace("._fsdp_wrapped_module.", ".").replace("._checkpoint_wrapped_module.", ".")
        if new in out:
            raise ConversionError(f"two keys map to {new!r} after removing wrapper prefixes")
        out[new] = value
    return out


def progress(items, desc: str, enabled: bool = True) -> Iterator:
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=desc, disable=not enabled, leave=False))
