"""Property tests of what users type and pass: every numeric flag's range (one table,
``ranges.py``) refuses exactly the values outside it, from the command line and from Python
alike; any nonzero attention-mask value means a real token; config keys of the wrong type are
refused whatever the value."""

import argparse
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tiny_config, tiny_model
from pararnn_hf.ranges import RANGES

numbers = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0, 1, -1, 0.0, 1.0, 0.5, 100, 2**64, math.nan, math.inf, -math.inf]),
)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(RANGES)), value=numbers)
def test_a_value_is_refused_exactly_when_it_is_outside_its_range(key, value):
    r = RANGES[key]
    inside = (
        not (r.kind is int and isinstance(value, float))
        and math.isfinite(value)
        and (r.low is None or (value > r.low if r.low_open else value >= r.low))
        and (r.high is None or (value < r.high if r.high_open else value <= r.high))
    )
    assert r.contains(value) == inside
    if inside:
        assert r.check(f"--{key}", value) == value
        assert r.parse(repr(value) if isinstance(value, float) else str(value)) == value
    else:
        with pytest.raises(ValueError, match=re.escape(f"--{key} must be {r.describe()}")):
            r.check(f"--{key}", value)
        if not (r.kind is int and isinstance(value, float)):  # "1.0" is no integer to argparse either
            with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"must be {r.describe()}")):
                r.parse(repr(value) if isinstance(value, float) else str(value))


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.sampled_from([1, 2, 7, 0.5, 1e-3, -1.0, True]), min_size=6, max_size=6),
    cell=st.sampled_from(["gru", "lstm"]),
)
def test_any_nonzero_mask_value_is_a_real_token(values, cell):
    model = tiny_model(cell)
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([values], dtype=torch.float64 if any(isinstance(v, float) for v in values) else torch.long)
    with torch.no_grad():
        assert torch.equal(model(ids, attention_mask=mask).logits, model(ids).logits)


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(["tie_word_embeddings", "use_cache", "mixer_residual_scale", "mlp_residual"]),
    value=st.one_of(st.text(max_size=5), st.integers(), st.none(), st.floats(allow_nan=False)),
)
def test_bool_config_keys_take_only_bools(key, value):
    with pytest.raises(ValueError, match=f"{key} must be true or false"):
        tiny_config(**{key: value})


@settings(max_examples=40, deadline=None)
@given(
    key=st.sampled_from(["pad_token_id", "bos_token_id", "eos_token_id"]),
    value=st.one_of(
        st.booleans(), st.integers(300, 10**6), st.integers(max_value=-1), st.floats(), st.text(max_size=3)
    ),
)
def test_token_id_keys_take_only_ids_of_the_vocabulary(key, value):
    with pytest.raises(ValueError, match=f"{key} must be in"):
        tiny_config(**{key: value})
