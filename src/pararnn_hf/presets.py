"""Model size presets: the demo model and the paper's sizes (about 400M, 1B and 7B).

A preset fixes the shape; the cell (``gru`` or ``lstm``) and the vocabulary come separately.
The paper-size presets follow Llama-style widths with a SwiGLU MLP; their parameter counts
(tied embeddings, 32k vocabulary) are computed from the config by ``count_parameters``.
"""

from __future__ import annotations

from .modeling.configuration_pararnn import ParaRNNConfig

PRESETS: dict[str, dict] = {
    # ~4M parameters with a 4096-token vocabulary: trains on a 2-core CPU in minutes
    "demo": dict(hidden_size=256, num_hidden_layers=4, num_heads=4, intermediate_size=704),
    "400m": dict(hidden_size=1024, num_hidden_layers=28, num_heads=4, intermediate_size=3072),
    "1b": dict(hidden_size=2048, num_hidden_layers=20, num_heads=8, intermediate_size=5632),
    "7b": dict(hidden_size=4096, num_hidden_layers=36, num_heads=16, intermediate_size=11008),
}


def preset_config(name: str, cell: str = "gru", vocab_size: int = 32000, **overrides) -> ParaRNNConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    kwargs = {**PRESETS[name], "cell": cell, "vocab_size": vocab_size, **overrides}
    return ParaRNNConfig(**kwargs)


def count_parameters(config: ParaRNNConfig) -> int:
    """Parameters of ``ParaRNNForCausalLM(config)``, computed from the config alone."""
    d, di, f, L, V = (
        config.hidden_size,
        config.d_inner,
        config.intermediate_size,
        config.num_hidden_layers,
        config.vocab_size,
    )
    cell = 3 * di + 3 * di * di // config.num_heads + 3 * di + (2 * di if config.cell == "lstm" else 0)
    mixer = d + d * 2 * di + di * config.conv_kernel + di + cell + di + di * d  # norms, projections, conv
    mixer += 1 if config.mixer_residual_scale else 0
    mlp = d + 3 * d * f
    head = 0 if config.tie_word_embeddings else V * d
    return V * d + L * (mixer + mlp) + d + head
