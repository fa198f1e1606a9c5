"""The frozen teacher: what the distillation stages read from it (docs/design.md#upcycling)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Teacher:
    """A Llama-family causal LM, frozen and in eval mode, read without gradients.

    ``layer_io``: for every decoder layer, its input hidden states and its attention block's
    output (what the student's mixer in that place must produce from the same input), from
    one forward. ``final_hidden`` and ``logits_at``: the next-token logits at chosen positions
    without materialising ``tokens × vocab`` at once."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.model.layers

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def layer_io(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        outputs: dict[int, Tensor] = {}
        hooks = [
            layer.self_attn.register_forward_hook(
                lambda module, args, out, i=i: outputs.__setitem__(i, out[0] if isinstance(out, tuple) else out)
            )
            for i, layer in enumerate(self.layers)
        ]
        try:
            out = self.model.model(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
            )
        finally:
            for hook in hooks:
                hook.remove()
        inputs = list(out.hidden_states[: len(self.layers)])  # hidden_states[i]: the input of layer i
        return inputs, [outputs[i] for i in range(len(self.layers))]

    @torch.no_grad()
    def final_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    @torch.no_grad()
    def logits_at(self, hidden: Tensor, rows: Tensor) -> Tensor:
        """Logits [len(rows), V] of the flat positions ``rows`` of ``hidden`` [B, T, d]."""
        return self.model.lm_head(hidden.reshape(-1, hidden.shape[-1])[rows])
