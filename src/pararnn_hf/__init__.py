"""pararnn_hf: ParaRNN (ParaGRU, ParaLSTM) nonlinear RNN language models for Hugging Face
Transformers, trained in parallel over the sequence with Newton's method and parallel scans.

Importing the package registers ``model_type="pararnn"`` with AutoConfig, AutoModel,
AutoModelForCausalLM, AutoModelForSequenceClassification and AutoModelForTokenClassification
(as soon as transformers is imported; ``registration.py``). The names below are loaded on
first use, so that the command line starts without torch.
"""

__version__ = "0.1.0"

from .registration import install as _install  # noqa: E402

_install()

# name -> the submodule that defines it (PEP 562: imported on first access)
_EXPORTS = {
    "BACKENDS": ".names",
    "ParaGRU": ".layers",
    "ParaLSTM": ".layers",
    "ParaRNNConvergenceWarning": ".layers",
    "ParaRNNLayer": ".layers",
    "ParaRNNCache": ".modeling",
    "ParaRNNConfig": ".modeling",
    "ParaRNNForCausalLM": ".modeling",
    "ParaRNNForSequenceClassification": ".modeling",
    "ParaRNNForTokenClassification": ".modeling",
    "ParaRNNModel": ".modeling",
    "ParaRNNPreTrainedModel": ".modeling",
    "SolveInfo": ".ops",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pararnn_hf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [*sorted(_EXPORTS), "__version__"]
