"""Compiled greedy decoding (pararnn_hf.decoding) equals generate() token for token, and a
decoding step updates the cache in place (fixed storage: what a CUDA graph replays)."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_model
from pararnn_hf.decoding import greedy_generate
from pararnn_hf.modeling.modeling_pararnn import CACHE_FIELD


def _prompts(batch: int, vocab: int):
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, vocab, (batch, 9), generator=g)
    mask = torch.ones(batch, 9, dtype=torch.long)
    if batch > 1:  # left padding, as generate() wants it
        mask[1, :3] = 0
        mask[2, :5] = 0
        ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_compiled_greedy_decoding_equals_generate(cell, batch):
    model = tiny_model(cell, eos_token_id=None)  # no early stop: all 64 tokens are compared
    ids, mask = _prompts(batch, model.config.vocab_size)
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, do_sample=False)
    torch._dynamo.reset()
    compiled = greedy_generate(model, ids, attention_mask=mask, max_new_tokens=64, mode="compile")
    assert compiled.shape == expected.shape == (batch, 9 + 64)
    assert torch.equal(compiled, expected)


def test_eos_pads_finished_rows_and_stops_like_generate():
    model = tiny_model("gru")
    ids, mask = _prompts(3, model.config.vocab_size)
    first = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False)[:, -1]
    model.generation_config.eos_token_id = int(first[0])  # row 0 ends at once, the others later or never
    model.generation_config.pad_token_id = 0
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    eager = greedy_generate(model, ids, attention_mask=mask, max_new_tokens=12, mode="eager")
    assert torch.equal(eager, expected)
    assert (eager[0, 10:] == 0).all()  # padded after its EOS


def test_a_list_of_eos_ids_stops_like_generate():
    """Generation configs often list several EOS ids: any of them ends a row."""
    model = tiny_model("gru")
    ids, mask = _prompts(3, model.config.vocab_size)
    first = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False)[:, -3:]
    model.generation_config.eos_token_id = [299, int(first[1, 2]), int(first[0, 1])]  # the first never comes
    model.generation_config.pad_token_id = 0
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    eager = greedy_generate(model, ids, attention_mask=mask, max_new_tokens=12, mode="eager")
    assert torch.equal(eager, expected)
    assert (eager[0, 11:] == 0).all()  # row 0 stopped at the last listed id, not only the first


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_decode_step_updates_the_cache_in_place(cell):
    model = tiny_model(cell)
    ids, mask = _prompts(3, model.config.vocab_size)
    with torch.no_grad():
        cache = getattr(model(input_ids=ids, attention_mask=mask, use_cache=True), CACHE_FIELD)
        tensors = [*cache.conv_states] + [t for s in cache.rnn_states for t in (s if isinstance(s, tuple) else (s,))]
        pointers = [t.data_ptr() for t in tensors]
        before = [t.clone() for t in tensors]
        logits = model.decode_step(ids[:, -1:], cache)
        # the same step through forward() agrees, and neither replaced a buffer
        ref = model(input_ids=ids, attention_mask=mask, use_cache=True)
        ref_logits = model(input_ids=ids[:, -1:], cache=getattr(ref, CACHE_FIELD), use_cache=True).logits[:, -1]
    after = [*cache.conv_states] + [t for s in cache.rnn_states for t in (s if isinstance(s, tuple) else (s,))]
    assert [t.data_ptr() for t in after] == pointers
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "the step must write the cache"
    torch.testing.assert_close(logits, ref_logits, rtol=1e-6, atol=1e-6)


def test_bad_arguments_are_named():
    model = tiny_model("gru")
    with pytest.raises(ValueError, match="mode must be one of"):
        greedy_generate(model, torch.ones(1, 3, dtype=torch.long), mode="fast")
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length >= 1\]"):
        greedy_generate(model, torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        greedy_generate(model, torch.ones(1, 3, dtype=torch.long), mode="cuda-graph")
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        greedy_generate(model, torch.ones(1, 3, dtype=torch.long), max_new_tokens=0)
