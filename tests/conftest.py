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
