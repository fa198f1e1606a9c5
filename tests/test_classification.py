"""Sequence and token classification heads, as transformers' decoder models have them: the
sequence head reads the last real token (left or right padding), the Auto classes and
trust_remote_code folders load them, and Trainer fine-tunes them."""

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
    TrainingArguments,
)

from helpers import rel_err, tiny_config
from pararnn_hf import ParaRNNForSequenceClassification, ParaRNNForTokenClassification

CELLS = ["gru", "lstm"]


def classifier(cell="gru", **kw):
    torch.manual_seed(0)
    return ParaRNNForSequenceClassification(tiny_config(cell, num_labels=3, **kw)).eval()


@pytest.mark.parametrize("cell", CELLS)
def test_the_last_real_token_is_pooled_with_left_or_right_padding(cell):
    model = classifier(cell)
    short, long = torch.randint(3, 300, (1, 5)), torch.randint(3, 300, (1, 8))
    alone = torch.cat([model(short).logits, model(long).logits])
    pad = torch.zeros(1, 3, dtype=torch.long)  # pad id 0
    for side in ("left", "right"):
        row = torch.cat([pad, short], 1) if side == "left" else torch.cat([short, pad], 1)
        mask = (row != 0).long()
        batch = torch.cat([row, long])
        masks = torch.cat([mask, torch.ones(1, 8, dtype=torch.long)])
        assert rel_err(model(batch, attention_mask=masks).logits, alone) < 1e-6, side
        if side == "right":  # without a mask the pad id tells where the text ends (left pads
            assert rel_err(model(batch).logits, alone) < 1e-6  # need the mask to be skipped)


def test_token_classification_scores_every_position_from_its_prefix():
    torch.manual_seed(0)
    model = ParaRNNForTokenClassification(tiny_config("lstm", num_labels=4)).eval()
    ids = torch.randint(3, 300, (2, 7))
    logits = model(ids).logits
    assert logits.shape == (2, 7, 4)
    assert rel_err(model(ids[:, :4]).logits, logits[:, :4]) < 1e-6  # causal: a prefix is unchanged
    labels = torch.randint(0, 4, (2, 7))
    assert model(ids, labels=labels).loss > 0


@pytest.mark.parametrize("auto", [AutoModelForSequenceClassification, AutoModelForTokenClassification])
def test_auto_classes_and_trust_remote_code_folders(auto, tmp_path):
    cls = (
        ParaRNNForSequenceClassification
        if auto is AutoModelForSequenceClassification
        else ParaRNNForTokenClassification
    )
    torch.manual_seed(0)
    model = cls(tiny_config("gru", num_labels=2)).eval()
    model.save_pretrained(tmp_path)
    ids = torch.randint(3, 300, (2, 6))
    for kwargs in ({}, {"trust_remote_code": True}):
        loaded = auto.from_pretrained(tmp_path, **kwargs).eval()
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_trainer_fine_tunes_a_sequence_classifier(tmp_path):
    """A learnable rule (does token 7 occur?) on 64 texts: 30 Trainer steps take the loss down."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 300, (64, 12), generator=g)
    labels = torch.randint(0, 2, (64,), generator=g)
    ids[labels == 1, torch.randint(0, 12, (int(labels.sum()),), generator=g)] = 7
    data = [
        {"input_ids": i, "attention_mask": torch.ones(12, dtype=torch.long), "labels": y} for i, y in zip(ids, labels)
    ]
    torch.manual_seed(0)
    model = ParaRNNForSequenceClassification(tiny_config("gru", num_labels=2)).train()
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=16, learning_rate=1e-2,
        logging_steps=5, report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < 0.5 * losses[0], losses
