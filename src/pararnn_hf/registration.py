"""``model_type="pararnn"`` in transformers' Auto classes, without importing transformers early.

``import pararnn_hf`` must make ``AutoModelForCausalLM.from_pretrained(folder)`` work, yet stay
light, so that ``pararnn-hf --version``, ``--help`` and argument errors need neither torch nor
transformers. So the registration runs as soon as transformers is imported: at once if it
already is, else right after its own import finishes (a one-shot import hook). Using any of
the package's model classes imports transformers, and so registers too.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_done = False


def register() -> None:
    """Register the config and model classes with the Auto classes (and PEFT's defaults).
    Idempotent."""
    global _done
    if _done:
        return
    _done = True
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    from .modeling import (
        ParaRNNConfig,
        ParaRNNForCausalLM,
        ParaRNNForSequenceClassification,
        ParaRNNForTokenClassification,
        ParaRNNModel,
    )
    from .peft_defaults import register_peft_defaults

    AutoConfig.register(ParaRNNConfig.model_type, ParaRNNConfig, exist_ok=True)
    AutoModel.register(ParaRNNConfig, ParaRNNModel, exist_ok=True)
    AutoModelForCausalLM.register(ParaRNNConfig, ParaRNNForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(ParaRNNConfig, ParaRNNForSequenceClassification, exist_ok=True)
    AutoModelForTokenClassification.register(ParaRNNConfig, ParaRNNForTokenClassification, exist_ok=True)
    register_peft_defaults()


class _AfterTransformersImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``transformers`` is about to be imported, it lets the other
    finders find it and wraps the loader so that ``register()`` runs once the module exists."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)  # one shot, and no recursion into this finder
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            modeling = sys.modules.get(f"{__package__}.modeling")
            if modeling is None or getattr(modeling, "READY", False):
                register()
            # else: it is the package's own modeling code importing transformers; it registers
            # once its classes exist (the end of modeling/__init__.py)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers is loaded, else when it is."""
    if "transformers" in sys.modules:
        register()
    elif not any(isinstance(f, _AfterTransformersImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTransformersImport())
