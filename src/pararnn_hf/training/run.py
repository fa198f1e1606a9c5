"""``pararnn-hf train``: pre-training from a preset or config JSON, or fine-tuning a saved
model, with transformers' ``Trainer`` on packed sequences with document resets."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, default_data_collator

from ..data import PackedDataset, load_corpus, load_or_train_tokenizer, tokenize_documents
from ..modeling import ParaRNNConfig, ParaRNNForCausalLM
from ..output_guard import write_text_atomically
from ..presets import PRESETS, preset_config
from .trainer import LOSS_PLOT, LossPlotCallback, ParaRNNTrainer, ShardingReportCallback

MODEL_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class ModelArguments:
    preset: str | None = field(
        default=None,
        metadata={
            "help": f"model size preset, one of {sorted(PRESETS)}; demo when neither --config nor --model is given"
        },
    )
    cell: str = field(default="gru", metadata={"help": "gru or lstm (with --preset or the default)"})
    config: str | None = field(default=None, metadata={"help": "a ParaRNNConfig JSON file to train from scratch"})
    model: str | None = field(default=None, metadata={"help": "a saved model folder to fine-tune"})
    backend: str | None = field(default=None, metadata={"help": "override the config's solver backend"})


@dataclass
class DataArguments:
    data: list[str] = field(
        default_factory=lambda: ["builtin"],
        metadata={"help": "builtin (the Python standard library), local files/folders, or hf:NAME[:CONFIG]"},
    )
    seq_len: int = field(default=256, metadata={"help": "training sequence length (tokens)"})
    vocab_size: int = field(default=4096, metadata={"help": "BPE vocabulary when training a tokenizer"})
    validation_percent: float = field(default=2.0, metadata={"help": "share of documents held out"})
    max_eval_sequences: int | None = field(default=None, metadata={"help": "cap on evaluation sequences"})
    overwrite: bool = field(default=False, metadata={"help": "allow writing into a folder that holds a model"})


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def resume_target(resume: str | bool | None) -> str | bool | None:
    """``--resume_from_checkpoint`` as Trainer takes it: a path, or True for the last
    checkpoint in ``--output_dir`` (typed as ``true``/``last`` on the command line)."""
    if isinstance(resume, str) and resume.strip().lower() in ("true", "last"):
        return True
    if isinstance(resume, str) and resume.strip().lower() in ("", "false", "none"):
        return None
    return resume or None


def check_output_dir(output_dir: str | Path, overwrite: bool, resume: str | bool | None) -> list[Path]:
    """Refuse to write where an earlier run's results would be replaced or mixed in, unless
    ``overwrite``. Resuming continues only the run whose checkpoints are in ``output_dir``; it
    never replaces a finished model there without ``overwrite``. Returns the stale
    checkpoints that ``overwrite`` will remove."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a folder")
    held = [f for f in MODEL_FILES if (out / f).exists()]
    checkpoints = _checkpoints(out) if out.is_dir() else []
    if resume is True and not checkpoints:
        raise FileNotFoundError(f"--resume_from_checkpoint true: {out} holds no checkpoint to resume")
    if overwrite:
        return [] if resume else checkpoints  # never delete what is being resumed
    if held:
        what = "resuming would replace it" if resume else "training would replace it"
        raise FileExistsError(
            f"{out} already holds a finished model ({', '.join(held)}); {what}. "
            "Pass --overwrite to replace it, or choose another --output_dir"
        )
    if checkpoints and resume is not True:
        names = ", ".join(p.name for p in checkpoints[:4]) + (", ..." if len(checkpoints) > 4 else "")
        if not resume:
            raise FileExistsError(
                f"{out} holds checkpoints of an earlier run ({names}). Pass --resume_from_checkpoint "
                f"{checkpoints[-1]} (or true) to continue it, or --overwrite to start over"
            )
        if Path(resume).resolve().parent != out.resolve():
            raise FileExistsError(
                f"{out} holds checkpoints of another run ({names}); resuming {resume} there would mix the two. "
                "Choose another --output_dir, or pass --overwrite to remove them"
            )
    return []


def whole_run_train_loss(trainer, run_loss: float, resume: str | bool | None, output_dir: str) -> float:
    """The mean training loss over every step of the run, also after a resume: Trainer's own
    figure covers only the steps since the resume (and transformers < 5.24 divides their sum
    by all steps). The steps before the resume are taken from the checkpoint's log history."""
    if not resume:
        return run_loss
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(output_dir) if resume is True else resume
    try:
        start = int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])
    except (OSError, TypeError, ValueError, KeyError):
        return run_loss
    total_steps = trainer.state.global_step
    logged = sorted((e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e and e["step"] <= start)
    if start == 0 or not logged or total_steps <= start:
        return run_loss
    weighted, previous = 0.0, 0
    for step, loss in logged:
        weighted, previous = weighted + (step - previous) * loss, step
    before = weighted / previous * start  # unlogged steps just before the save: the logged mean
    since = getattr(trainer, "_total_loss_scalar", None)
    if since is None:
        return run_loss
    return (before + since) / total_steps


def build_model(model_args: ModelArguments, vocab_size: int, pad_id: int, eos_id: int) -> ParaRNNForCausalLM:
    chosen = [k for k in ("preset", "config", "model") if getattr(model_args, k)]
    if len(chosen) > 1:
        raise ValueError(f"choose one of --preset, --config and --model (got {', '.join(chosen)})")
    overrides = {"backend": model_args.backend} if model_args.backend else {}
    if model_args.model:
        if not (Path(model_args.model) / "config.json").is_file():
            raise FileNotFoundError(f"--model {model_args.model}: no saved model folder there (no config.json)")
        return ParaRNNForCausalLM.from_pretrained(model_args.model, **overrides)
    ids = dict(vocab_size=vocab_size, pad_token_id=pad_id, bos_token_id=eos_id, eos_token_id=eos_id)
    if model_args.config:
        path = Path(model_args.config)
        if not path.is_file():
            raise FileNotFoundError(f"no such config file: {path}")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a JSON object of ParaRNNConfig keys, got {type(values).__name__}")
        values.pop("model_type", None)
        config = ParaRNNConfig(**{**values, **ids, **overrides})
    else:
        config = preset_config(model_args.preset or "demo", model_args.cell, **ids, **overrides)
    return ParaRNNForCausalLM(config)


def load_tokenizer(model_args: ModelArguments, corpus, vocab_size: int):
    """The run's tokenizer, padding on the left: it is saved with the model, and a causal LM
    generating for a padded batch needs the padding before each prompt (``tok(batch,
    padding=True)`` then ``generate`` is right for every row)."""
    tokenizer = _load_tokenizer(model_args, corpus, vocab_size)
    tokenizer.padding_side = "left"
    return tokenizer


def _load_tokenizer(model_args: ModelArguments, corpus, vocab_size: int):
    if model_args.model and not (Path(model_args.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_args.model}: no saved model folder there (no config.json)")
    if model_args.model:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(model_args.model)
        except (OSError, ValueError) as err:
            raise ValueError(f"{model_args.model} has no usable tokenizer to fine-tune with: {err}") from None
    return load_or_train_tokenizer(corpus, vocab_size)


def build_datasets(corpus, tokenizer, data_args: DataArguments, training_args: TrainingArguments):
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train = PackedDataset(tokenize_documents(tokenizer, corpus.train), data_args.seq_len)
    evaluation = PackedDataset(
        tokenize_documents(tokenizer, corpus.validation), data_args.seq_len, pad_last=True, pad_id=pad_id
    )
    evaluation.keep_first(data_args.max_eval_sequences)
    global_batch = training_args.per_device_train_batch_size * max(1, training_args.world_size)
    if len(train) < global_batch:
        raise ValueError(
            f"the training data makes {len(train)} sequences of {data_args.seq_len} tokens, fewer than one batch "
            f"({global_batch}); lower --seq_len or --per_device_train_batch_size, or add data"
        )
    return train, evaluation


def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> dict[str, Any]:
    """Train, save the model and tokenizer into ``output_dir``, evaluate; returns a summary."""
    resume = resume_target(training_args.resume_from_checkpoint)
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    stale = check_output_dir(training_args.output_dir, data_args.overwrite, resume)
    if stale and training_args.process_index == 0:
        # --overwrite starts over: an old run's later checkpoints must not be taken for this run's
        for folder in stale:
            shutil.rmtree(folder)
    corpus = load_corpus(data_args.data, data_args.validation_percent)
    tokenizer = load_tokenizer(model_args, corpus, data_args.vocab_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_ds, eval_ds = build_datasets(corpus, tokenizer, data_args, training_args)
    torch.manual_seed(training_args.seed)  # the same initial weights in every process
    model = build_model(model_args, len(tokenizer), pad_id, tokenizer.eos_token_id)
    trainer = ParaRNNTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[LossPlotCallback(), sharding := ShardingReportCallback()],
    )
    result = trainer.train(resume_from_checkpoint=resume)
    train_loss = whole_run_train_loss(trainer, result.training_loss, resume, training_args.output_dir)
    trainer.save_model(training_args.output_dir)
    metrics = trainer.evaluate()
    summary = {
        "output_dir": str(Path(training_args.output_dir).resolve()),
        "corpus": corpus.name,
        "train_sequences": len(train_ds),
        "train_tokens_per_epoch": len(train_ds) * data_args.seq_len,
        "seq_len": data_args.seq_len,
        "eval_target_tokens": eval_ds.num_target_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "world_size": training_args.world_size,
        "fsdp_sharded_tensors": sharding.sharded,
        "train_loss": train_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "eval_loss": metrics.get("eval_loss"),
        "eval_perplexity": metrics.get("eval_perplexity", math.nan),
        "loss_plot": str(Path(training_args.output_dir).resolve() / LOSS_PLOT),
    }
    if trainer.is_world_process_zero():
        write_text_atomically(Path(training_args.output_dir, "train_summary.json"), json.dumps(summary, indent=2))
    return {**summary, "is_main_process": trainer.is_world_process_zero()}
