"""The allowed range of every numeric value the commands take, in one place.

The argparse commands (generate, convert, eval, demo) use ``RANGES[key].parse`` as the
argument's ``type``; ``train`` checks its dataclasses (``TrainingArguments`` included) and
``generate`` the model's ``generation_config.json`` against the same table, before any work.
A value outside its range is a ``ValueError`` that names the flag, the range and the value.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Numbers of ``kind`` (int or float) between ``low`` and ``high`` (``None``: unbounded),
    each end closed unless marked open. Floats must be finite."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{what} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {_num(self.high)}"
        return what

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def check(self, flag: str, value: Any) -> Any:
        """``value``, or ``ValueError`` naming ``flag``."""
        if not self.contains(value):
            raise ValueError(f"{flag} must be {self.describe()}, got {value!r}")
        return value

    def parse(self, text: str) -> int | float:
        """An argparse ``type``: the number, or an error that argparse shows with the flag."""
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


POSITIVE_INT = Range(int, 1)
NON_NEGATIVE_INT = Range(int, 0)
POSITIVE = Range(float, 0, low_open=True)
NON_NEGATIVE = Range(float, 0)

RANGES: dict[str, Range] = {
    # generate, and the generation_config.json it reads
    "max_new_tokens": POSITIVE_INT,
    "max_length": POSITIVE_INT,
    "min_new_tokens": NON_NEGATIVE_INT,
    "min_length": NON_NEGATIVE_INT,
    "num_beams": POSITIVE_INT,
    "num_return_sequences": POSITIVE_INT,
    "temperature": POSITIVE,
    "top_k": NON_NEGATIVE_INT,
    "top_p": Range(float, 0, 1, low_open=True),
    "repetition_penalty": POSITIVE,
    "seed": Range(int, 0, 2**64 - 1),
    # convert
    "num_heads": POSITIVE_INT,
    # eval (lm_eval's meanings: --limit below 1 is a fraction of each task, from 1 a count)
    "num_fewshot": NON_NEGATIVE_INT,
    "prefill_chunk_size": POSITIVE_INT,
    "limit": POSITIVE,
    "eval_batch_size": POSITIVE_INT,
    # demo
    "steps": POSITIVE_INT,
    "seq_len": Range(int, 2),
    "batch_size": POSITIVE_INT,
    "learning_rate": POSITIVE,
    "max_eval_sequences": POSITIVE_INT,
    "eval_limit": POSITIVE_INT,
    # train: its own fields (DataArguments) ...
    "vocab_size": Range(int, 258),
    "validation_percent": Range(float, 0, 100, high_open=True),
    # ... and the TrainingArguments fields a run reads (-1 / 0 sentinels handled by train)
    "per_device_train_batch_size": POSITIVE_INT,
    "per_device_eval_batch_size": POSITIVE_INT,
    "gradient_accumulation_steps": POSITIVE_INT,
    "num_train_epochs": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": Range(float, 0, 1, high_open=True),
    "adam_beta2": Range(float, 0, 1, high_open=True),
    "adam_epsilon": POSITIVE,
    "warmup_ratio": Range(float, 0, 1),
    "warmup_steps": NON_NEGATIVE,
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": POSITIVE_INT,
    "dataloader_num_workers": NON_NEGATIVE_INT,
}


def argument(key: str):
    """The argparse ``type`` for ``RANGES[key]``."""
    return RANGES[key].parse


def eval_batch_size(text: str) -> str:
    """lm_eval's ``--batch_size``: a count >= 1, ``auto``, or ``auto:N`` (N re-tunings >= 1)."""
    value = text.strip()
    count = value[len("auto:") :] if value.startswith("auto:") else None if value == "auto" else value
    if count is None or RANGES["eval_batch_size"].contains(_int_or_none(count)):
        return value
    raise argparse.ArgumentTypeError(f"must be an integer >= 1, 'auto' or 'auto:N', got {text!r}")


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
