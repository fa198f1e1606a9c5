"""pararnn_hf: ParaRNN (ParaGRU, ParaLSTM) nonlinear RNN language models for Hugging Face
Transformers, trained in parallel over the sequence with Newton's method and parallel scans.
"""

from .layers import ParaGRU, ParaLSTM, ParaRNNConvergenceWarning, ParaRNNLayer
from .ops import BACKENDS, SolveInfo

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "ParaGRU",
    "ParaLSTM",
    "ParaRNNConvergenceWarning",
    "ParaRNNLayer",
    "SolveInfo",
    "__version__",
]
