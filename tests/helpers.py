"""Shared test helpers: an independent float64 reference of the layers."""

from __future__ import annotations

import torch

from pararnn_hf import ParaGRU, ParaLSTM
from pararnn_hf.ops.sequential import sequential_solve

LAYERS = {"gru": ParaGRU, "lstm": ParaLSTM}


def state_rows(state) -> tuple:
    """A layer's public state as a tuple: (h,) for the GRU, (c, h) for the LSTM."""
    return (state,) if isinstance(state, torch.Tensor) else tuple(state)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def reference_forward(layer, x, initial_state=None, mask=None, resets=None):
    """The layer's output by the plain step loop in float64 (autograd-able)."""
    xd = x.double()
    u = (
        torch.einsum("bthi,higj->btghj", xd.unflatten(-1, (layer.num_heads, -1)), layer.B.double()).flatten(-2)
        + layer.b.double()
    )
    k, N, Bsz = layer.state_rows, layer.state_size, x.shape[0]
    if initial_state is None:
        s0 = torch.zeros(Bsz, k, N, dtype=torch.float64)
    elif isinstance(initial_state, torch.Tensor):
        s0 = initial_state.double().unsqueeze(-2)
    else:
        s0 = torch.stack([t.double() for t in initial_state], dim=-2)
    m = None if mask is None else (mask != 0).view(Bsz, -1, 1, 1)
    keep = None if resets is None else (resets == 0).double().view(Bsz, -1, 1, 1)
    C = None if layer.C is None else layer.C.double()
    s = sequential_solve(layer.cell, u, layer.A.double(), C, s0, m, keep)
    return s[..., -1, :], s[:, -1]


def tiny_config(cell: str = "gru", **overrides):
    from pararnn_hf import ParaRNNConfig

    kwargs = dict(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        intermediate_size=64,
        cell=cell,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        init_recurrent_std=0.3,
    )
    kwargs.update(overrides)
    return ParaRNNConfig(**kwargs)


def tiny_model(cell: str = "gru", seed: int = 0, **overrides):
    from pararnn_hf import ParaRNNForCausalLM

    torch.manual_seed(seed)
    return ParaRNNForCausalLM(tiny_config(cell, **overrides)).eval()


TOKENIZER_TEXT = (
    "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, item):\n        self.items.append(item)\n"
    "import os\nimport sys\nfor i in range(10):\n    print(i)\nwhile True:\n    break\n"
) * 20


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained in memory, as PreTrainedTokenizerFast (ids 0-2 special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TOKENIZER_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_llama(kv_heads: int = 2, tied: bool = False, seed: int = 0):
    """A random 2-layer LlamaForCausalLM of the tiny models' width (4 query heads of 8)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        intermediate_size=48,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-5,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()
