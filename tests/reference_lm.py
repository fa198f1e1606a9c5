"""The reference code's language model (ml-pararnn ``training/src/model.py``, ``RNNLanguageModel``)
written out again for the tests: the same module tree, so the same state-dict key names and
shapes, so that a file ``convert to-reference`` writes is checked by a strict
``load_state_dict`` and by the logits, as the reference would load and run it.

Its blocks: ``blocks.{2k}`` is a mixer (``norm``, ``in_proj`` d -> 2d, ``conv.conv`` a
depthwise ``Conv1d`` with bias and left padding, ``rnn_cell``, ``gate_norm``, ``out_proj``,
and a learnable ``residual_scale`` of shape ``(1,)``; ``x * residual_scale + mixer(x)``),
``blocks.{2k+1}`` is ``Sequential(RMSNorm, GatedMLP)`` with no residual; then ``embedding``,
``final_norm`` and ``lm_head`` (tied to the embedding). Its cells' parameters are ``A``, ``B``,
``b`` (and ``C``), as in this package's layers, which stand in for the reference cells.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pararnn_hf import ParaGRU, ParaLSTM


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        scale = x.float().pow(2).mean(-1, keepdim=True).add(self.eps).rsqrt()
        return (x.float() * scale).to(x.dtype) * self.weight


class CausalConv1d(nn.Module):
    def __init__(self, d: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, kernel, padding=kernel - 1, groups=d)

    def forward(self, x):
        return self.conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)


class GatedMLP(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MixerBlock(nn.Module):
    def __init__(self, d: int, cell: nn.Module, kernel: int):
        super().__init__()
        self.norm = RMSNorm(d)
        self.in_proj = nn.Linear(d, 2 * d, bias=False)
        self.conv = CausalConv1d(d, kernel)
        self.rnn_cell = cell
        self.gate_norm = RMSNorm(d)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.residual_scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        h, z = self.in_proj(self.norm(x)).chunk(2, dim=-1)
        h = self.rnn_cell(F.silu(self.conv(h)))
        return x * self.residual_scale + self.out_proj(self.gate_norm(h) * F.silu(z))


class RNNLanguageModel(nn.Module):
    def __init__(self, cell: str, vocab: int, d: int, layers: int, heads: int, mlp_hidden: int, kernel: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList()
        layer_class = {"gru": ParaGRU, "lstm": ParaLSTM}[cell]
        for _ in range(layers):
            self.blocks.append(MixerBlock(d, layer_class(d, d, num_heads=heads, backend="sequential"), kernel))
            self.blocks.append(nn.Sequential(RMSNorm(d), GatedMLP(d, mlp_hidden)))
        self.final_norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embedding.weight

    def forward(self, ids):
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.final_norm(x))
