"""Triton backend: fused chunked-Newton forward, adjoint backward and decode step kernels.

Import ``pararnn_hf.ops.triton.solve`` lazily (only when the backend is used): importing
Triton is not free, and the bundled pure-PyTorch copy of the layers has no Triton at all.
"""

from __future__ import annotations

import importlib.util
import os


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def triton_usable(device_type: str) -> bool:
    """Triton can run kernels on tensors of this device type."""
    if not triton_installed():
        return False
    return device_type == "cuda" or (device_type == "cpu" and interpreter_enabled())
