"""Hugging Face model classes: configuration, modeling (with the recurrent cache)."""

from .configuration_pararnn import ParaRNNConfig
from .modeling_pararnn import (
    ParaRNNCache,
    ParaRNNForCausalLM,
    ParaRNNForSequenceClassification,
    ParaRNNForTokenClassification,
    ParaRNNModel,
    ParaRNNPreTrainedModel,
)

READY = True  # the classes exist: registration may import them (registration.py)
from ..registration import register  # noqa: E402

register()

__all__ = [
    "ParaRNNCache",
    "ParaRNNConfig",
    "ParaRNNForCausalLM",
    "ParaRNNForSequenceClassification",
    "ParaRNNForTokenClassification",
    "ParaRNNModel",
    "ParaRNNPreTrainedModel",
]
