"""The optional dependency groups ("extras") and a clear error when a command needs a missing one.

Loading and running a model needs only the core install (torch, transformers, safetensors,
huggingface-hub, and triton on Linux). Training and evaluation need more; setup.cfg's
``[options.extras_require]`` lists the same groups.
"""

from __future__ import annotations

import importlib.util

# extra -> the importable modules it provides (keep in step with setup.cfg; a test checks it)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("accelerate", "datasets", "matplotlib"),
    "eval": ("lm_eval", "evaluate", "accelerate"),
    "gguf": ("gguf",),  # upcycle --gguf: transformers reads GGUF files through it
}


class MissingExtraError(ImportError):
    """A feature was used without the optional dependencies it needs."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_extras(what: str, *extras: str) -> None:
    """Raise ``MissingExtraError`` naming the extras to install when a module of one is missing."""
    missing = sorted({m for extra in extras for m in EXTRAS[extra] if not _importable(m)})
    if missing:
        spec = ",".join(extras)
        raise MissingExtraError(
            f"{what} needs the optional dependencies [{spec}] (missing: {', '.join(missing)}); "
            f"install them with: pip install 'pararnn-hf[{spec}]' (from a checkout: pip install -e '.[{spec}]')"
        )
