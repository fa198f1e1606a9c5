"""generate() with the recurrent cache: cached vs uncached, left padding, beam search,
sampling, continuation from a returned cache, chunked prefill, streamer and pipeline."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, TextStreamer, pipeline

from helpers import rel_err, state_rows, tiny_model, tiny_tokenizer
from pararnn_hf import ParaRNNCache
from pararnn_hf.modeling.modeling_pararnn import CACHE_FIELD as CACHE_KW  # "cache" (>= 5.24) or "past_key_values"

CELLS = ["gru", "lstm"]


def cache_of(output):
    return output.cache if hasattr(output, "cache") else output.past_key_values


@pytest.mark.parametrize("cell", CELLS)
def test_cached_and_uncached_greedy_generation_agree(cell):
    model = tiny_model(cell)
    prompt = torch.randint(3, 300, (2, 9))
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (2, 21) and torch.equal(cached, uncached)


@pytest.mark.parametrize("cell", CELLS)
def test_prefill_then_steps_on_left_padded_batch_match_full_forward(cell):
    """Each row of a left-padded batch, prefilled then decoded one token at a time, gives the
    logits of its own unpadded full forward (float32, within 1e-5)."""
    model = tiny_model(cell)
    prompts = [torch.randint(3, 300, (n,)) for n in (4, 9, 6)]
    continuation = torch.randint(3, 300, (3, 5))
    width = max(len(p) for p in prompts)
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    out = model(batch, attention_mask=mask, use_cache=True)
    cache, step_logits = cache_of(out), [out.logits[:, -1]]
    for t in range(continuation.shape[1]):
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        out = model(continuation[:, t : t + 1], attention_mask=mask, past_key_values=cache, use_cache=True)
        cache = cache_of(out)
        step_logits.append(out.logits[:, -1])
    step_logits = torch.stack(step_logits, dim=1)  # logits after the prompt and after each new token
    for i, p in enumerate(prompts):
        full = model(torch.cat([p, continuation[i]]).unsqueeze(0)).logits[0, len(p) - 1 :]
        assert rel_err(step_logits[i], full) < 1e-5
    assert cache.get_seq_length() == width + continuation.shape[1]


@pytest.mark.parametrize("cell", CELLS)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(cell):
    model = tiny_model(cell)
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    texts = ["def add(a, b):", "import os\nfor i in range(10):\n    print("]
    enc = tok(texts, return_tensors="pt", padding=True)
    batch = model.generate(**enc, max_new_tokens=10, do_sample=False, pad_token_id=0)
    for i, text in enumerate(texts):
        alone = model.generate(**tok([text], return_tensors="pt"), max_new_tokens=10, do_sample=False, pad_token_id=0)
        pad = int((enc.attention_mask[i] == 0).sum())
        assert pad > 0 or i == 1
        assert torch.equal(batch[i, pad:], alone[0])


@pytest.mark.parametrize("cell", CELLS)
def test_beam_search_cached_equals_uncached(cell):
    model = tiny_model(cell)
    prompt = torch.randint(3, 300, (2, 7))
    kwargs = dict(max_new_tokens=8, num_beams=4, num_return_sequences=2, do_sample=False)
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (4, 15) and torch.equal(cached, uncached)


def test_sampling_with_several_return_sequences():
    model = tiny_model("lstm")
    prompt = torch.randint(3, 300, (2, 5))
    torch.manual_seed(1)
    a = model.generate(prompt, max_new_tokens=10, do_sample=True, num_return_sequences=3, top_k=20)
    torch.manual_seed(1)
    b = model.generate(prompt, max_new_tokens=10, do_sample=True, num_return_sequences=3, top_k=20, use_cache=False)
    assert a.shape == (6, 15) and torch.equal(a, b)
    assert torch.equal(a[:3, :5], prompt[:1].expand(3, 5))


@pytest.mark.parametrize("cell", CELLS)
def test_second_generate_continues_from_returned_cache(cell):
    model = tiny_model(cell)
    prompt = torch.randint(3, 300, (1, 8))
    first = model.generate(prompt, max_new_tokens=5, do_sample=False, return_dict_in_generate=True)
    cache = cache_of(first)
    assert isinstance(cache, ParaRNNCache)
    extended = torch.cat([first.sequences, torch.randint(3, 300, (1, 4))], dim=1)
    continued = model.generate(extended, **{CACHE_KW: cache}, max_new_tokens=6, do_sample=False)
    fresh = model.generate(extended, max_new_tokens=6, do_sample=False)
    assert torch.equal(continued, fresh)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_chunked_prefill_equals_one_shot(cell, dtype, tol):
    """Same result up to the solver's rounding (chunks may take another solve path)."""
    model = tiny_model(cell).to(dtype)
    prompt = torch.randint(3, 300, (2, 23))
    one_shot = model(prompt, use_cache=True)
    model.config.recurrent_prefill_chunk_size = 5
    chunked = model(prompt, use_cache=True)
    assert rel_err(chunked.logits, one_shot.logits) < tol
    for a, b in zip(cache_of(chunked).rnn_states, cache_of(one_shot).rnn_states):
        for x, y in zip(state_rows(a), state_rows(b)):
            assert rel_err(x, y) < tol
    chunked_gen = model.generate(prompt, max_new_tokens=6, do_sample=False)
    model.config.recurrent_prefill_chunk_size = None
    assert torch.equal(chunked_gen, model.generate(prompt, max_new_tokens=6, do_sample=False))


def test_decoding_uses_one_step_per_token(monkeypatch):
    """After the prefill (one parallel solve per layer) each token is one fused O(1) mixer step
    per layer, and the cache size is fixed."""
    from pararnn_hf.ops import fused_decode

    model = tiny_model("gru")
    calls = {"forward": 0, "mixer_step": 0}
    cell_cls = type(model.model.layers[0].mixer.cell)
    forward, mixer_step = cell_cls.forward, fused_decode.TORCH_OPS.mixer_step

    def counting_forward(self, *a, **k):
        calls["forward"] += 1
        return forward(self, *a, **k)

    def counting_step(*a, **k):
        calls["mixer_step"] += 1
        return mixer_step(*a, **k)

    monkeypatch.setattr(cell_cls, "forward", counting_forward)
    monkeypatch.setattr(fused_decode.TORCH_OPS, "mixer_step", counting_step)
    out = model.generate(
        torch.randint(3, 300, (1, 30)), max_new_tokens=10, do_sample=False, return_dict_in_generate=True
    )
    layers = model.config.num_hidden_layers
    assert calls == {"forward": layers, "mixer_step": 9 * layers}
    cache = cache_of(out)
    sizes = [t.numel() for t in cache.conv_states] + [s.numel() for s in cache.rnn_states]
    assert sum(sizes) == layers * (3 * 32 + 32)


def test_text_streamer_streams_the_generated_text(capsys):
    model, tok = tiny_model("gru"), tiny_tokenizer()
    enc = tok(["def add(a, b):"], return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, streamer=TextStreamer(tok), pad_token_id=0)
    printed = capsys.readouterr().out
    assert printed.strip() == tok.decode(out[0]).strip()


def test_text_generation_pipeline(tmp_path):
    model, tok = tiny_model("lstm"), tiny_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path), device="cpu")
    result = generator("import os", max_new_tokens=6, do_sample=False)
    expected = model.generate(
        **tok(["import os"], return_tensors="pt"), max_new_tokens=6, do_sample=False, pad_token_id=0
    )
    assert result[0]["generated_text"] == tok.decode(expected[0], skip_special_tokens=True)


@pytest.mark.parametrize("legacy", [False, True])
def test_generate_with_chunked_prefill_saved_and_reloaded(tmp_path, legacy):
    """The chunk size lives under a key transformers does not copy into the generation config
    (it used to break generate()); folders saved with the old key load and generate too."""
    model = tiny_model("lstm")
    prompt = torch.randint(3, 300, (2, 23))
    plain = model.generate(prompt, max_new_tokens=5, do_sample=False)
    model.config.recurrent_prefill_chunk_size = 4
    model.save_pretrained(tmp_path)
    if legacy:
        cfg = json.loads((tmp_path / "config.json").read_text())
        cfg["prefill_chunk_size"] = cfg.pop("recurrent_prefill_chunk_size")
        (tmp_path / "config.json").write_text(json.dumps(cfg))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.recurrent_prefill_chunk_size == 4
    assert "prefill_chunk_size" not in reloaded.config.to_dict()
    assert torch.equal(reloaded.generate(prompt, max_new_tokens=5, do_sample=False), plain)


def test_saved_tokenizer_pads_left_so_batched_generate_is_right_for_every_row(tmp_path):
    """``tok(batch, padding=True)`` then ``generate(**batch)``, as users write it, gives each
    row what it gets alone: the tokenizer the package trains and saves pads on the left."""
    from transformers import AutoTokenizer

    from pararnn_hf.data.tokenizer import train_tokenizer

    docs = ["def add(a, b):\n    return a + b\n", "import os\nimport sys\n", "for i in range(10):\n    print(i)\n"] * 30
    train_tokenizer(docs, vocab_size=300).save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.padding_side == "left"
    model = tiny_model("gru", vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=None)
    prompts = ["import os", "def add(a, b):\n    return"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    together = model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(**tok([prompt], return_tensors="pt"), max_new_tokens=6, do_sample=False)
        assert torch.equal(together[row, -6:], alone[0, -6:]), prompt


def test_a_cache_from_inference_mode_continues_outside_it():
    model = tiny_model("lstm")
    ids = torch.randint(3, 300, (1, 6))
    with torch.inference_mode():
        first = model.generate(ids, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = cache_of(first)
    extended = torch.cat([first.sequences, torch.randint(3, 300, (1, 2))], dim=1)
    continued = model.generate(extended, **{CACHE_KW: cache}, max_new_tokens=4, do_sample=False)
    assert torch.equal(continued, model.generate(extended, max_new_tokens=4, do_sample=False))


def test_assisted_decoding_is_refused_up_front():
    model = tiny_model("gru")
    ids = torch.randint(3, 300, (1, 5))
    with pytest.raises(ValueError, match="assistant_model .* is not supported: .*recurrent state"):
        model.generate(ids, assistant_model=tiny_model("gru"), max_new_tokens=3)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens .* is not supported"):
        model.generate(ids, prompt_lookup_num_tokens=2, max_new_tokens=3)
