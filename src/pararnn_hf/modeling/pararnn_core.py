"""The recurrent layers and the names the modeling code uses.

In a saved model folder this file is replaced by a self-contained bundle (see ``bundle.py``)
that uses the installed package when it can and embedded pure-PyTorch sources otherwise;
both export the same names.
"""

from ..layers import BACKENDS, CELL_CLASSES, CELL_NAMES, SCHEDULES, ParaGRU, ParaLSTM, check_resets, decode_ops
from .bundle import bundle_source as core_source

__all__ = [
    "BACKENDS",
    "CELL_CLASSES",
    "CELL_NAMES",
    "SCHEDULES",
    "ParaGRU",
    "ParaLSTM",
    "check_resets",
    "core_source",
    "decode_ops",
]
