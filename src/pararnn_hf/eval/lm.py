"""The ``pararnn`` model for lm-eval: transformers' HFLM with the ParaRNN classes registered,
so saved folders load without ``trust_remote_code`` and use the package's solvers."""

from __future__ import annotations

from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from .. import ParaRNNConfig  # noqa: F401  (registers model_type "pararnn" with the Auto classes)
from ..ops.dispatch import BACKENDS
from ..ranges import RANGES


def _as_int(value):
    """``--model_args`` values arrive as strings; a non-integer stays as it is and is refused."""
    try:
        return int(value) if isinstance(value, str) else value
    except ValueError:
        return value


@register_model("pararnn")
class ParaRNNLM(HFLM):
    """lm-eval's ``pararnn`` model: ``simple_evaluate(model="pararnn", model_args="pretrained=DIR
    [,solver_backend=torch][,prefill_chunk_size=N]", ...)`` after ``import pararnn_hf.eval``, or
    ``pararnn-hf eval --model DIR --model_args ...`` from the shell (lm_eval's own command line
    does not import plugins).

    ``solver_backend`` overrides ``config.backend`` (HFLM's own ``backend`` argument means
    causal vs seq2seq); ``prefill_chunk_size`` bounds the memory of long contexts.
    """

    def __init__(self, pretrained, solver_backend: str | None = None, prefill_chunk_size: int | None = None, **kwargs):
        kwargs.setdefault("backend", "causal")
        # checked first: HFLM's own failures below are all reported as "cannot load"
        if prefill_chunk_size is not None:
            prefill_chunk_size = RANGES["prefill_chunk_size"].check("prefill_chunk_size", _as_int(prefill_chunk_size))
        if solver_backend is not None and solver_backend not in BACKENDS:
            raise ValueError(f"solver_backend must be one of {BACKENDS}, got {solver_backend!r}")
        try:
            super().__init__(pretrained=pretrained, **kwargs)
        except Exception as err:  # truncated or corrupt weights raise many types; name the folder
            text = " ".join(str(err).split())
            raise OSError(f"cannot load the model in {pretrained}: {type(err).__name__}: {text}") from None
        config = self.model.config
        if solver_backend is not None:
            config.backend = solver_backend
            for module in self.model.modules():
                if hasattr(module, "backend") and hasattr(module, "cell"):
                    module.backend = solver_backend
        if prefill_chunk_size is not None:
            config.recurrent_prefill_chunk_size = prefill_chunk_size
