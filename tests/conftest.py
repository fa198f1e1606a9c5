import os

# The Triton kernels run on CPU under the interpreter; it must be on before Triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from hypothesis import settings

# Property tests: a fixed, derandomized profile (same examples on every run, nothing written
# to a .hypothesis database); HYPOTHESIS_PROFILE=explore draws fresh examples locally.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def model_dir(tmp_path):
    """A saved tiny ParaGRU model folder with its tokenizer."""
    from helpers import tiny_model, tiny_tokenizer

    folder = tmp_path / "model"
    tiny_model("gru").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def pytest_make_parametrize_id(config, val, argname):
    """Readable ids for parametrized cases (``float32``, ``expand=2,cell=lstm``) instead of
    pytest's ``dtype0`` / ``overrides3``; plain strings and numbers keep pytest's own."""
    if isinstance(val, torch.dtype):
        return str(val).removeprefix("torch.")
    if isinstance(val, dict):
        return ",".join(f"{k}={pytest_make_parametrize_id(config, v, k) or v}" for k, v in val.items()) or "none"
    if isinstance(val, (list, tuple)) and all(isinstance(v, (str, int, float, bool)) for v in val):
        return "+".join(map(str, val)) or "empty"
    return None
