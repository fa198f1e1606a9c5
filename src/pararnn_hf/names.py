"""The package's vocabulary, defined once and importable without torch or transformers (the
command line's parser reads it before anything heavy is loaded): the config's ``cell``
values, the solver backends a user may ask for and the Triton schedules. The cell modules and ``ops.dispatch``
check themselves against these."""

CELL_NAMES: tuple[str, ...] = ("gru", "lstm")
BACKENDS: tuple[str, ...] = ("auto", "torch", "sequential", "triton")
# How the Triton kernels spread a sequence over the GPU (docs/design.md#kernels); the torch
# and sequential backends ignore it.
SCHEDULES: tuple[str, ...] = ("auto", "chunked", "time_parallel")

__all__ = ["BACKENDS", "CELL_NAMES", "SCHEDULES"]
