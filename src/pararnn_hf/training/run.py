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
from ..model_files import finished_model_files, is_model_file, read_config, weights_problem
from ..modeling import ParaRNNConfig, ParaRNNForCausalLM
from ..output_guard import check_writable_folder, refuse_unsafe_target, write_text_atomically
from ..presets import PRESETS, preset_config
from ..ranges import RANGES
from .checkpoints import checkpoint_problem, checkpoint_step, checkpoints, clean_staging, sort_by_completeness
from .checkpoints import describe_incomplete as _describe
from .trainer import LOSS_PLOT, LossPlotCallback, ParaRNNTrainer, ShardingReportCallback


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
    held = finished_model_files(out) if out.is_dir() else []
    found = checkpoints(out)
    if resume is True and not found:
        raise FileNotFoundError(f"--resume_from_checkpoint true: {out} holds no checkpoint to resume")
    if overwrite:
        return [] if resume else found  # never delete what is being resumed
    if held:
        what = "resuming would replace it" if resume else "training would replace it"
        raise FileExistsError(
            f"{out} already holds a finished model ({', '.join(held)}); {what}. "
            "Pass --overwrite to replace it, or choose another --output_dir"
        )
    partial = sorted(p.name for p in out.glob("*") if p.is_file() and is_model_file(p.name)) if out.is_dir() else []
    if partial and not resume:
        advice = "--resume_from_checkpoint true to finish its run, or " if found else ""
        raise FileExistsError(
            f"{out} holds an incomplete model ({', '.join(partial[:4])}: {weights_problem(out)}); pass "
            f"{advice}--overwrite to replace it, or choose another --output_dir"
        )
    if found and resume is not True:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        if not resume:
            complete, incomplete = sort_by_completeness(out)
            advice = (
                f"Pass --resume_from_checkpoint {complete[-1]} (or true) to continue it, or --overwrite to start over"
                if complete
                else f"None of them is complete ({_describe(incomplete)}); pass --overwrite to start over"
            )
            raise FileExistsError(f"{out} holds checkpoints of an earlier run ({names}). {advice}")
        if Path(resume).resolve().parent != out.resolve():
            raise FileExistsError(
                f"{out} holds checkpoints of another run ({names}); resuming {resume} there would mix the two. "
                "Choose another --output_dir, or pass --overwrite to remove them"
            )
    return []


def resolve_resume(output_dir: str | Path, resume: str | bool | None, say=print) -> str | None:
    """The checkpoint folder to resume from. ``True``: the newest *complete* checkpoint in
    ``output_dir``, naming (through ``say``) any newer incomplete one it skips. A path: that
    checkpoint, refused with what is wrong with it when it is incomplete."""
    if not resume:
        return None
    out = Path(output_dir)
    complete, incomplete = sort_by_completeness(out)
    if resume is True:
        if not complete:
            raise FileNotFoundError(
                f"--resume_from_checkpoint true: {out} holds no complete checkpoint ({_describe(incomplete)})"
            )
        skipped = [(p, why) for p, why in incomplete if checkpoint_step(p) > checkpoint_step(complete[-1])]
        if skipped:
            say(f"pararnn-hf train: skipping incomplete {_describe(skipped)}; resuming from {complete[-1].name}")
        return str(complete[-1])
    problem = checkpoint_problem(resume)
    if problem:
        others, _ = sort_by_completeness(Path(resume).parent)
        hint = f"; the newest complete checkpoint there is {others[-1]}" if others else ""
        raise ValueError(f"--resume_from_checkpoint {resume}: {problem}{hint}")
    return str(resume)


def check_train_arguments(data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Every value a run reads in its range (``ranges.RANGES``), before any work: a value
    out of range would train nothing, drop data, or fail after the run."""
    for key in ("seq_len", "vocab_size", "validation_percent"):
        RANGES[key].check(f"--{key}", getattr(data_args, key))
    if data_args.max_eval_sequences is not None:
        RANGES["max_eval_sequences"].check("--max_eval_sequences", data_args.max_eval_sequences)
    args = training_args
    for key in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "weight_decay",
        "max_grad_norm",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "warmup_steps",
        "dataloader_num_workers",
        "seed",
    ):
        RANGES[key].check(f"--{key}", getattr(args, key))
    if args.max_steps != -1 and args.max_steps < 1:
        raise ValueError(
            f"--max_steps must be an integer >= 1, or -1 to train --num_train_epochs epochs; got {args.max_steps}"
        )
    if args.max_steps == -1:
        RANGES["num_train_epochs"].check("--num_train_epochs (with --max_steps -1)", args.num_train_epochs)
    for strategy, key in (("logging_strategy", "logging_steps"), ("save_strategy", "save_steps")):
        if str(getattr(getattr(args, strategy), "value", getattr(args, strategy))) == "steps":
            RANGES[key].check(f"--{key}", getattr(args, key))
    if str(getattr(args.eval_strategy, "value", args.eval_strategy)) == "steps" and args.eval_steps is not None:
        RANGES["eval_steps"].check("--eval_steps", args.eval_steps)
    if args.save_total_limit is not None:
        RANGES["save_total_limit"].check("--save_total_limit", args.save_total_limit)


def training_plan(train_sequences: int, seq_len: int, args: TrainingArguments) -> tuple[int, int]:
    """(optimizer steps, tokens) the run will take, as Trainer counts them."""
    batch = args.per_device_train_batch_size * max(1, args.world_size)
    updates_per_epoch = max(1, math.ceil(train_sequences / batch) // args.gradient_accumulation_steps)
    steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * updates_per_epoch)
    return steps, steps * batch * args.gradient_accumulation_steps * seq_len


def whole_run_train_loss(trainer, run_loss: float, checkpoint: str | None) -> float:
    """The mean training loss over every step of the run, also after a resume from
    ``checkpoint``: Trainer's own figure covers only the steps since the resume (and
    transformers < 5.24 divides their sum by all steps). The steps before the resume are
    taken from the checkpoint's log history."""
    if not checkpoint:
        return run_loss
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
        check_model_argument(model_args.model)
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


def check_model_argument(model: str) -> None:
    """``--model`` is a saved model folder with a readable config.json."""
    if not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {model}: no saved model folder there (no config.json)")
    read_config(model)


def _load_tokenizer(model_args: ModelArguments, corpus, vocab_size: int):
    if model_args.model:
        check_model_argument(model_args.model)
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(model_args.model)
        except (OSError, ValueError) as err:
            raise ValueError(f"{model_args.model} has no usable tokenizer to fine-tune with: {err}") from None
    return load_or_train_tokenizer(corpus, vocab_size)


def build_datasets(corpus, tokenizer, data_args: DataArguments, training_args: TrainingArguments):
    if not corpus.validation:
        raise ValueError(
            f"the corpus {corpus.name} leaves no held-out documents to evaluate on; raise --validation_percent "
            f"(now {data_args.validation_percent}) or add documents"
        )
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
    """Train, save the model and tokenizer into ``output_dir``, evaluate; returns a summary.
    Every argument and the output folder are checked before any work."""
    main_process = training_args.process_index == 0

    def say(text: str) -> None:
        if main_process:
            print(text, flush=True)

    check_train_arguments(data_args, training_args)
    out = training_args.output_dir
    refuse_unsafe_target(out)  # the final save swaps the folder: never the current one, home or a root
    check_writable_folder(out)
    resume = resume_target(training_args.resume_from_checkpoint)
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    stale = check_output_dir(out, data_args.overwrite, resume)
    checkpoint = resolve_resume(out, resume, say)
    if main_process:
        clean_staging(out)  # what killed runs left
        # --overwrite starts over: an old run's later checkpoints must not be taken for this run's
        for folder in stale:
            shutil.rmtree(folder)
    corpus = load_corpus(data_args.data, data_args.validation_percent)
    tokenizer = load_tokenizer(model_args, corpus, data_args.vocab_size)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_ds, eval_ds = build_datasets(corpus, tokenizer, data_args, training_args)
    steps, tokens = training_plan(len(train_ds), data_args.seq_len, training_args)
    say(
        f"pararnn-hf train: {steps:,} steps, {tokens:,} tokens ({len(train_ds):,} sequences of "
        f"{data_args.seq_len} per epoch) into {Path(out).resolve()}"
        + (f", resuming from {Path(checkpoint).name}" if checkpoint else "")
    )
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
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_loss = whole_run_train_loss(trainer, result.training_loss, checkpoint)
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
