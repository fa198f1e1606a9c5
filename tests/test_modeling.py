"""Hugging Face model classes: config validation, outputs, save/load, Auto classes, padding,
resets, gradient checkpointing, dtypes, device_map, embedding resizing."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import pararnn_hf
from helpers import rel_err, tiny_config, tiny_model
from pararnn_hf import ParaRNNConfig, ParaRNNForCausalLM, ParaRNNModel
from pararnn_hf.modeling import configuration_pararnn
from pararnn_hf.modeling.modeling_pararnn import CACHE_FIELD as CACHE_KW

CELLS = ["gru", "lstm"]


def cache_of(output):
    return getattr(output, CACHE_KW)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"cell": "rnn"}, "cell must be one of"),
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads = 4"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive int"),
        ({"backend": "cuda"}, "backend must be one of"),
        ({"conv_kernel": 0}, "conv_kernel must be a positive int"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps must be a finite number > 0"),
        ({"newton_tolerance": -1.0}, r"newton_tolerance must be a number in \(0, 0.01\] or None"),
        ({"recurrent_prefill_chunk_size": 0}, "recurrent_prefill_chunk_size must be a positive int or None"),
        ({"init_gate_bias": [0.0]}, "init_gate_bias must be two finite numbers"),
        ({"init_gate_bias": [0.0, float("nan")]}, "init_gate_bias must be two finite numbers"),
        ({"init_gate_bias": [True, 1.0]}, "init_gate_bias must be two finite numbers"),
        ({"pad_token_id": 300}, r"pad_token_id must be in \[0, vocab_size=300\)"),
    ],
)
def test_bad_config_raises_naming_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**overrides)


def test_config_defaults_and_backends_in_step_with_package():
    cfg = ParaRNNConfig()
    assert cfg.model_type == "pararnn" and cfg.cell == "gru" and cfg.expand == 1 and cfg.tie_word_embeddings
    assert cfg.intermediate_size % 64 == 0 and cfg.intermediate_size >= 8 * cfg.hidden_size // 3
    # one definition each: the config reads the names the layers and the CLI use
    assert configuration_pararnn.BACKENDS is pararnn_hf.ops.dispatch.BACKENDS
    assert configuration_pararnn.CELL_NAMES is pararnn_hf.cells.CELL_NAMES


@pytest.mark.parametrize("cell", CELLS)
def test_forward_outputs_loss_and_logits_to_keep(cell):
    model = tiny_model(cell)
    ids = torch.randint(3, 300, (2, 11))
    out = model(ids, labels=ids, output_hidden_states=True)
    assert out.logits.shape == (2, 11, 300)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # Trainer's num_items_in_batch reaches the loss function
    summed = model(ids, labels=ids, num_items_in_batch=torch.tensor(1)).loss
    assert torch.allclose(summed, expected * 20, rtol=1e-5)
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, 300) and torch.allclose(last[:, 0], out.logits[:, -1], atol=1e-6)
    as_tuple = model(ids, labels=ids, return_dict=False)
    assert torch.allclose(as_tuple[0], out.loss) and torch.allclose(as_tuple[1], out.logits)


@pytest.mark.parametrize("cell", CELLS)
def test_save_load_round_trip_and_auto_classes(cell, tmp_path):
    model = tiny_model(cell)
    ids = torch.randint(3, 300, (2, 9))
    logits = model(ids).logits
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "configuration_pararnn.py",
        "modeling_pararnn.py",
        "pararnn_core.py",
    } <= files
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, ParaRNNConfig) and config.auto_map["AutoModelForCausalLM"].endswith("ParaRNNForCausalLM")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is ParaRNNForCausalLM
    assert torch.equal(loaded(ids).logits, logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()  # tied
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is ParaRNNModel


def test_untied_head_round_trip(tmp_path):
    model = tiny_model("gru", tie_word_embeddings=False)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    loaded = ParaRNNForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_loading_does_not_reinitialise_cell_weights(tmp_path):
    model = tiny_model("lstm")
    with torch.no_grad():
        model.model.layers[0].mixer.cell.A.fill_(0.123)
    model.save_pretrained(tmp_path)
    loaded = ParaRNNForCausalLM.from_pretrained(tmp_path)
    assert torch.all(loaded.model.layers[0].mixer.cell.A == 0.123)


def test_cell_reference_initialisation_in_model():
    model = tiny_model("gru", hidden_size=64, init_recurrent_std=None)
    cell = model.model.layers[1].mixer.cell
    assert torch.allclose(cell.b[0], -torch.linspace(0, 1, 64)) and torch.count_nonzero(cell.b[1:]) == 0
    assert cell.layer_name == "model.layers.1.mixer.cell"


@pytest.mark.parametrize("cell", CELLS)
def test_left_padded_rows_equal_unpadded(cell):
    model = tiny_model(cell)
    short, long = torch.randint(3, 300, (1, 6)), torch.randint(3, 300, (1, 10))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[0, :4] = 0
    logits = model(batch, attention_mask=mask).logits
    assert rel_err(logits[0, 4:], model(short).logits[0]) < 1e-6
    assert rel_err(logits[1], model(long).logits[0]) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_packed_documents_with_resets_equal_separate(cell):
    model = tiny_model(cell, conv_kernel=3)
    docs = [torch.randint(3, 300, (1, n)) for n in (5, 1, 8)]
    packed = torch.cat(docs, dim=1)
    resets = torch.zeros(1, 14, dtype=torch.bool)
    resets[0, [0, 5, 6]] = True
    logits = model(packed, resets=resets).logits
    separate = torch.cat([model(d).logits for d in docs], dim=1)
    assert rel_err(logits, separate) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 2e-6)])
def test_a_reset_just_before_a_chunk_or_cache_boundary_does_not_leak_through_the_conv(cell, dtype, tol):
    """Documents start 1, 2 and 3 tokens before a chunk boundary (within the conv's reach of
    K - 1 = 3): one-shot, chunked prefill, a forward continued from its cache, and each
    document alone agree to the solver's rounding (fp32: a few ulp of the logits' scale)."""
    model = tiny_model(cell, conv_kernel=4).to(dtype)
    ids = torch.randint(3, 300, (3, 24))
    resets = torch.zeros(3, 24, dtype=torch.bool)
    resets[:, 0] = True
    for row, start in enumerate((7, 6, 5)):  # the chunk boundary is at t = 8
        resets[row, start] = True
    # the loss too: packed training runs with use_cache on by default
    one_shot = model(ids, resets=resets, use_cache=False, labels=ids)
    model.config.recurrent_prefill_chunk_size = 8
    chunked = model(ids, resets=resets, use_cache=True, labels=ids)
    assert rel_err(chunked.logits, one_shot.logits) < tol
    assert abs(chunked.loss - one_shot.loss) / one_shot.loss < tol
    model.config.recurrent_prefill_chunk_size = None
    first = model(ids[:, :8], resets=resets[:, :8], use_cache=True)
    rest = model(ids[:, 8:], resets=resets[:, 8:], **{CACHE_KW: cache_of(first)})
    assert rel_err(torch.cat([first.logits, rest.logits], 1), one_shot.logits) < tol
    for row, start in enumerate((7, 6, 5)):
        alone = model(ids[row : row + 1, start:]).logits[0]
        assert rel_err(one_shot.logits[row, start:], alone) < tol


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_checkpointing_gives_the_same_gradients(cell):
    model = tiny_model(cell).train()
    ids = torch.randint(3, 300, (2, 12))
    model(ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    # renamed activation_checkpointing_enable in 5.24; 5.17 has only the old name
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    calls = []
    model.model.layers[0].mixer.register_forward_hook(lambda *a: calls.append(1))
    model(ids, labels=ids).loss.backward()
    assert len(calls) == 2  # the forward ran again during backward: checkpointing is active
    for n, p in model.named_parameters():
        assert rel_err(p.grad, grads[n]) < 1e-6, n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_keep_fp32_recurrent_state(dtype, tmp_path):
    tiny_model("lstm").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype).eval()
    assert model.model.layers[0].mixer.cell.A.dtype == dtype
    ids = torch.randint(3, 300, (1, 7))
    out = model(ids, use_cache=True)
    assert out.logits.dtype == dtype
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    c, h = cache.rnn_states[0]
    assert c.dtype == torch.float32 and h.dtype == torch.float32
    full = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(ids).logits
    assert rel_err(out.logits, full) < 5e-2


def test_device_map_auto_on_a_single_device(tmp_path):
    tiny_model("gru").save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    ids = torch.randint(3, 300, (1, 5))
    assert model(ids).logits.shape == (1, 5, 300)


def test_resize_token_embeddings_keeps_tying():
    model = tiny_model("gru")
    model.resize_token_embeddings(320)
    assert model.config.vocab_size == 320
    assert model.lm_head.weight.shape == (320, 32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model(torch.tensor([[310, 5, 319]])).logits.shape == (1, 3, 320)


def test_resizing_below_a_special_token_id_is_refused_so_the_saved_model_loads(tmp_path):
    model = tiny_model("gru", eos_token_id=250)
    with pytest.raises(ValueError, match=r"resize_token_embeddings\(200\): eos_token_id=250 would fall outside"):
        model.resize_token_embeddings(200)
    assert model.config.vocab_size == 300
    model.resize_token_embeddings(251)
    model.save_pretrained(tmp_path / "m")
    assert ParaRNNForCausalLM.from_pretrained(tmp_path / "m").config.vocab_size == 251


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
        ({"use_cache": "no"}, "use_cache must be true or false, got 'no'"),
        ({"pad_token_id": True}, "pad_token_id must be in"),
        ({"eos_token_id": [2, False]}, "eos_token_id must be in"),
        ({"newton_tolerance": 0.5}, r"newton_tolerance must be a number in \(0, 0.01\]"),
    ],
)
def test_config_values_of_the_wrong_type_or_beyond_their_bound(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        ParaRNNConfig(**overrides)
    # the same from a hand-edited config.json
    tiny_config().save_pretrained(tmp_path)
    import json

    values = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**values, **overrides}))
    with pytest.raises(ValueError, match=match):
        ParaRNNConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("cell", CELLS)
def test_any_nonzero_mask_value_means_a_real_token_never_a_weight(cell):
    model = tiny_model(cell)
    ids = torch.randint(3, 300, (2, 7))
    plain = model(ids).logits
    for mask in (torch.full((2, 7), 2), torch.full((2, 7), 0.5), torch.ones(2, 7, dtype=torch.bool)):
        assert torch.equal(model(ids, attention_mask=mask).logits, plain)
    mask = torch.full((2, 7), 0.5)
    mask[1, :3] = 0
    assert rel_err(model(ids, attention_mask=mask).logits[1, 3:], model(ids[1:, 3:]).logits[0]) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_what_padded_positions_of_inputs_embeds_hold_does_not_matter(cell):
    model = tiny_model(cell).train()
    embeds = torch.randn(2, 6, 32, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    poisoned = embeds.detach().clone()
    poisoned[1, :2] = float("nan")
    poisoned.requires_grad_(True)
    labels = torch.randint(3, 300, (2, 6))
    labels[1, :2] = -100
    a = model(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    b = model(inputs_embeds=poisoned, attention_mask=mask, labels=labels)
    assert torch.equal(a.logits[:, 2:], b.logits[:, 2:]) and torch.equal(a.loss, b.loss)
    b.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(poisoned.grad).all()


def test_an_empty_sequence_takes_part_in_autograd():
    model = tiny_model("gru").train()
    out = model(torch.zeros(2, 0, dtype=torch.long), labels=None)
    assert out.logits.shape == (2, 0, 300) and out.logits.requires_grad
    out.logits.sum().backward()
    layer = model.model.layers[0].mixer.cell
    y = layer(torch.randn(2, 0, 32, requires_grad=True))
    assert y.requires_grad
    y.sum().backward()


def test_bad_model_inputs_raise():
    model = tiny_model("gru")
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        model(torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"resets must have shape \(2, 5\)"):
        model(torch.ones(2, 5, dtype=torch.long), resets=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="the cache must be a ParaRNNCache"):
        model(torch.ones(2, 5, dtype=torch.long), past_key_values=object())


def test_push_to_hub_goes_through_the_code_writing_save(tmp_path, monkeypatch):
    model = tiny_model("gru")
    pushed = []
    monkeypatch.setattr(type(model), "push_to_hub", lambda self, repo_id, **kw: pushed.append((repo_id, kw)))
    model.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="someone/tiny")
    assert (tmp_path / "local" / "pararnn_core.py").is_file()
    assert pushed and pushed[0][0] == "someone/tiny"


@pytest.mark.parametrize(
    "resets,error,match",
    [
        (torch.tensor([[0.0, 0.5, 0, 0, 0, 0]]), TypeError, "resets must be bool or 0/1 integers, got dtype"),
        (torch.tensor([[0, 2, 0, 0, 0, 0]]), ValueError, "resets must hold only 0 and 1"),
    ],
    ids=["float-flags", "flag-2"],
)
def test_resets_other_than_bool_or_01_are_refused(resets, error, match):
    """A 0.5 or a 2 used to reset the recurrence but not the conv, leaking documents."""
    model = tiny_model("gru")
    with pytest.raises(error, match=match):
        model(torch.randint(3, 300, (1, 6)), resets=resets)
    layer = model.model.layers[0].mixer.cell
    with pytest.raises(error, match=match):
        layer(torch.randn(1, 6, layer.input_size), resets=resets)


def test_integer_resets_mean_the_same_as_bool():
    model = tiny_model("lstm")
    ids = torch.randint(3, 300, (1, 9))
    as_bool = torch.zeros(1, 9, dtype=torch.bool)
    as_bool[0, [0, 4]] = True
    a = model(ids, resets=as_bool).logits
    b = model(ids, resets=as_bool.long()).logits
    assert torch.equal(a, b)
