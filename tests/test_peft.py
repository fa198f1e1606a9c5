"""PEFT LoRA with the registered defaults for model_type "pararnn": train, save, reload, merge."""

from __future__ import annotations

import pytest
import torch

from helpers import rel_err, tiny_model

peft = pytest.importorskip("peft")  # an optional integration: PEFT is not a dependency


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_lora_with_default_targets_trains_saves_reloads_and_merges(cell, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from pararnn_hf.peft_defaults import LORA_TARGETS

    base = tiny_model(cell).train()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))  # no target_modules
    wrapped = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == set(LORA_TARGETS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n, p in model.named_parameters() if p.requires_grad)

    ids = torch.randint(3, base.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(trainable, lr=5e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_model(cell), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert rel_err(reloaded(input_ids=ids).logits, adapted) < 1e-6
        merged = reloaded.merge_and_unload()
        assert rel_err(merged(input_ids=ids).logits, adapted) < 1e-5
