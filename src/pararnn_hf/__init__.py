"""pararnn_hf: ParaRNN (ParaGRU, ParaLSTM) nonlinear RNN language models for Hugging Face
Transformers, trained in parallel over the sequence with Newton's method and parallel scans.

Importing the package registers ``model_type="pararnn"`` with AutoConfig, AutoModel and
AutoModelForCausalLM.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

from .layers import ParaGRU, ParaLSTM, ParaRNNConvergenceWarning, ParaRNNLayer  # noqa: E402
from .modeling import (  # noqa: E402
    ParaRNNCache,
    ParaRNNConfig,
    ParaRNNForCausalLM,
    ParaRNNModel,
    ParaRNNPreTrainedModel,
)
from .ops import BACKENDS, SolveInfo  # noqa: E402

AutoConfig.register(ParaRNNConfig.model_type, ParaRNNConfig, exist_ok=True)
AutoModel.register(ParaRNNConfig, ParaRNNModel, exist_ok=True)
AutoModelForCausalLM.register(ParaRNNConfig, ParaRNNForCausalLM, exist_ok=True)

from .peft_defaults import register_peft_defaults  # noqa: E402

register_peft_defaults()

__all__ = [
    "BACKENDS",
    "ParaGRU",
    "ParaLSTM",
    "ParaRNNCache",
    "ParaRNNConfig",
    "ParaRNNConvergenceWarning",
    "ParaRNNForCausalLM",
    "ParaRNNLayer",
    "ParaRNNModel",
    "ParaRNNPreTrainedModel",
    "SolveInfo",
    "__version__",
]
