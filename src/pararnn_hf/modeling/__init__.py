"""Hugging Face model classes: configuration, modeling (with the recurrent cache)."""

from .configuration_pararnn import ParaRNNConfig
from .modeling_pararnn import ParaRNNCache, ParaRNNForCausalLM, ParaRNNModel, ParaRNNPreTrainedModel

__all__ = ["ParaRNNCache", "ParaRNNConfig", "ParaRNNForCausalLM", "ParaRNNModel", "ParaRNNPreTrainedModel"]
