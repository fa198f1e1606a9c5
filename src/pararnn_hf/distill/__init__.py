"""Upcycling a pretrained Llama-family model into a ParaRNN by distillation
(docs/design.md#upcycling): attention init, layer alignment, end-to-end distillation."""

from .attention_init import INIT_PARTS, attention_init_
from .losses import alignment_loss, kd_loss, kd_loss_reference
from .run import UpcycleArguments, run_upcycle
from .teacher import Teacher
from .trainer import UpcycleTrainer

__all__ = [
    "INIT_PARTS",
    "Teacher",
    "UpcycleArguments",
    "UpcycleTrainer",
    "alignment_loss",
    "attention_init_",
    "kd_loss",
    "kd_loss_reference",
    "run_upcycle",
]
