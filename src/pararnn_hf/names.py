"""The package's vocabulary, defined once and importable without torch or transformers (the
command line's parser reads it before anything heavy is loaded): the config's ``cell``
values and the solver backends a user may ask for. The cell modules and ``ops.dispatch``
check themselves against these."""

CELL_NAMES: tuple[str, ...] = ("gru", "lstm")
BACKENDS: tuple[str, ...] = ("auto", "torch", "sequential", "triton")

__all__ = ["BACKENDS", "CELL_NAMES"]
