"""The recurrent layers the modeling code uses.

In a saved model folder this file is replaced by a self-contained bundle (see ``bundle.py``)
that uses the installed package when it can and embedded pure-PyTorch sources otherwise.
"""

from ..layers import ParaGRU, ParaLSTM, check_resets
from .bundle import bundle_source as core_source

CELL_CLASSES = {"gru": ParaGRU, "lstm": ParaLSTM}

__all__ = ["CELL_CLASSES", "ParaGRU", "ParaLSTM", "check_resets", "core_source"]
