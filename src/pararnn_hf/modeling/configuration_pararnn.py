"""ParaRNN model configuration (docs/design.md#model).

Copied verbatim into saved model folders beside ``pararnn_core.py``, which provides the
backend and cell names there (the package's or the bundled copy), so that
``trust_remote_code=True`` loading works without ``pararnn_hf`` installed.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .pararnn_core import BACKENDS, CELL_NAMES, SCHEDULES


def _default_intermediate_size(hidden_size: int) -> int:
    """SwiGLU width: 8/3 of the model width, rounded up to a multiple of 64."""
    return -(-8 * hidden_size // 3 // 64) * 64


class ParaRNNConfig(PretrainedConfig):
    r"""Configuration of a ParaRNN (ParaGRU / ParaLSTM) language model.

    Each layer is a pre-norm residual mixer (RMSNorm -> in_proj -> causal depthwise conv ->
    SiLU -> recurrent cell -> RMSNorm(h) * SiLU(gate) -> out_proj) followed by a pre-norm
    residual SwiGLU MLP.

    Args:
        vocab_size: tokens in the vocabulary.
        hidden_size: model width d.
        num_hidden_layers: number of (mixer + MLP) layers.
        cell: ``"gru"`` (ParaGRU) or ``"lstm"`` (ParaLSTM).
        expand: the cell width is ``expand * hidden_size``.
        num_heads: heads of the cell's block-diagonal input projection.
        conv_kernel: width of the causal depthwise convolution before the cell.
        intermediate_size: SwiGLU hidden width (default: 8/3 d rounded up to 64).
        rms_norm_eps: epsilon of every RMSNorm.
        initializer_range: std of the Linear and Embedding initialisation.
        tie_word_embeddings: share the embedding matrix with the LM head.
        use_cache: return the recurrent cache for generation.
        max_position_embeddings: a training/evaluation context hint only; the model has no
            positional limit.
        newton_max_iterations: cap on Newton iterations before the exact fallback.
        newton_tolerance: residual tolerance (None: 4e-6 for fp32, 1e-11 for fp64).
        backend: ``"auto"``, ``"torch"``, ``"sequential"`` or ``"triton"``.
        triton_schedule: how the Triton kernels spread a sequence over the GPU: ``"auto"``,
            ``"chunked"`` or ``"time_parallel"`` (ignored by the other backends).
        decode_capture: how ``generate()``'s fast path replays the per-token step: ``"auto"``
            (a CUDA graph on CUDA; ``torch.compile`` on the CPU for runs of 256 tokens or more),
            ``"compile"``, ``"cuda-graph"`` or ``"off"`` (the fused step as it is).
        recurrent_prefill_chunk_size: when set, prompts longer than this are prefilled in
            chunks of this many tokens, carrying the recurrent state (bounded memory, same
            result). Not named ``prefill_chunk_size``: transformers copies that key into the
            generation config and runs its own chunking, which needs a key/value cache. Folders
            saved with the old name load with it mapped to the new one.
        mixer_residual_scale: multiply each mixer's residual by a learnable scalar
            (``x = x * residual_scale + mixer(x)``), as the reference LM training layout does.
        mlp_residual: add the MLP's input to its output (default); False gives
            ``x = mlp(norm(x))``, the reference LM training layout's MLP block.
        init_recurrent_std, init_input_bound, init_gate_bias: cell initialisation
            (None: the reference defaults ``2/sqrt(5N)``, ``sqrt(6/(D/H + N))``, ``(0, 1)``).
    """

    model_type = "pararnn"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        cell: str = "gru",
        expand: int = 1,
        num_heads: int = 4,
        conv_kernel: int = 4,
        intermediate_size: int | None = None,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        max_position_embeddings: int = 2048,
        newton_max_iterations: int = 8,
        newton_tolerance: float | None = None,
        backend: str = "auto",
        triton_schedule: str = "auto",
        decode_capture: str = "auto",
        recurrent_prefill_chunk_size: int | None = None,
        mixer_residual_scale: bool = False,
        mlp_residual: bool = True,
        init_recurrent_std: float | None = None,
        init_input_bound: float | None = None,
        init_gate_bias: tuple[float, float] | list[float] = (0.0, 1.0),
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.cell = cell
        self.expand = expand
        self.num_heads = num_heads
        self.conv_kernel = conv_kernel
        if intermediate_size is None and isinstance(hidden_size, int) and not isinstance(hidden_size, bool):
            intermediate_size = _default_intermediate_size(hidden_size)
        self.intermediate_size = intermediate_size  # a bad hidden_size is named by validate_pararnn
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        self.max_position_embeddings = max_position_embeddings
        self.newton_max_iterations = newton_max_iterations
        self.newton_tolerance = newton_tolerance
        self.backend = backend
        self.triton_schedule = triton_schedule
        self.decode_capture = decode_capture
        legacy_chunk = kwargs.pop("prefill_chunk_size", None)
        if recurrent_prefill_chunk_size is None:
            recurrent_prefill_chunk_size = legacy_chunk
        self.recurrent_prefill_chunk_size = recurrent_prefill_chunk_size
        self.mixer_residual_scale = mixer_residual_scale
        self.mlp_residual = mlp_residual
        self.init_recurrent_std = init_recurrent_std
        self.init_input_bound = init_input_bound
        self.init_gate_bias = list(init_gate_bias) if isinstance(init_gate_bias, (list, tuple)) else [init_gate_bias]
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_pararnn()

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    def validate_pararnn(self) -> None:
        """Raise ``ValueError`` naming the offending key for an unusable configuration."""
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "expand",
            "num_heads",
            "conv_kernel",
            "intermediate_size",
            "newton_max_iterations",
            "max_position_embeddings",
        ):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ParaRNNConfig: {key} must be a positive int, got {value!r}")
        if self.cell not in CELL_NAMES:
            raise ValueError(f"ParaRNNConfig: cell must be one of {CELL_NAMES}, got {self.cell!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"ParaRNNConfig: backend must be one of {BACKENDS}, got {self.backend!r}")
        captures = ("auto", "off", "compile", "cuda-graph")
        if self.decode_capture not in captures:
            raise ValueError(f"ParaRNNConfig: decode_capture must be one of {captures}, got {self.decode_capture!r}")
        if self.triton_schedule not in SCHEDULES:
            raise ValueError(f"ParaRNNConfig: triton_schedule must be one of {SCHEDULES}, got {self.triton_schedule!r}")
        if self.d_inner % self.num_heads:
            raise ValueError(
                f"ParaRNNConfig: the cell width expand * hidden_size = {self.d_inner} must be divisible by "
                f"num_heads = {self.num_heads}"
            )
        for key in ("rms_norm_eps", "initializer_range"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ValueError(f"ParaRNNConfig: {key} must be a finite number > 0, got {value!r}")
        tol = self.newton_tolerance
        if tol is not None and (not isinstance(tol, (int, float)) or isinstance(tol, bool) or not 0 < tol <= 1e-2):
            raise ValueError(
                f"ParaRNNConfig: newton_tolerance must be a number in (0, 0.01] or None, got {tol!r}: a looser "
                "solve is not a solution of the recurrence"
            )
        for key in ("init_recurrent_std", "init_input_bound"):
            value = getattr(self, key)
            if value is not None and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < float("inf")
            ):
                raise ValueError(f"ParaRNNConfig: {key} must be a finite number > 0 or None, got {value!r}")
        chunk = self.recurrent_prefill_chunk_size
        if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
            raise ValueError(
                f"ParaRNNConfig: recurrent_prefill_chunk_size must be a positive int or None, got {chunk!r}"
            )
        for key in ("mixer_residual_scale", "mlp_residual", "tie_word_embeddings", "use_cache"):
            # a string from a hand-edited config.json ("false") would read as true
            if not isinstance(getattr(self, key, False), bool):
                raise ValueError(f"ParaRNNConfig: {key} must be true or false, got {getattr(self, key)!r}")
        bias = self.init_gate_bias
        if len(bias) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf") for v in bias
        ):
            raise ValueError(f"ParaRNNConfig: init_gate_bias must be two finite numbers (lo, hi), got {bias!r}")
        for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, key, None)
            ids = value if isinstance(value, list) else [value]
            for i in ids:
                if i is not None and (not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.vocab_size):
                    raise ValueError(
                        f"ParaRNNConfig: {key} must be in [0, vocab_size={self.vocab_size}), got {value!r}"
                    )


__all__ = ["ParaRNNConfig"]
