"""``pararnn-hf upcycle``: a Llama-family checkpoint turned into a ParaRNN by distillation
(docs/design.md#upcycling): the student built by ``from-llama`` (embeddings, norms, MLPs and
head copied), its mixers initialised from attention (stage 1), aligned layer by layer to the
attention outputs (stage 2), then distilled end to end on the teacher's logits (stage 3), in
one ``Trainer`` run with ``train``'s data, checkpoints, resume and output guard."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments, default_data_collator

from ..conversion.convert import check_llama_config, llama_student, write_card_stub
from ..data import load_corpus
from ..extras import MissingExtraError, _importable
from ..output_guard import check_writable_folder, refuse_unsafe_target, write_text_atomically
from ..training.checkpoints import clean_staging
from ..training.run import (
    DataArguments,
    build_datasets,
    check_output_dir,
    check_train_arguments,
    resolve_resume,
    resume_target,
    whole_run_train_loss,
)
from ..training.trainer import LossPlotCallback
from .attention_init import GATE_SOURCES, INIT_PARTS, attention_init_, check_mappable
from .losses import DEFAULT_CHUNK
from .teacher import Teacher
from .teacher_cache import TeacherLogitsCache
from .trainer import UpcycleTrainer

INITS = ("attention", "fresh")
TRAINABLE = ("all", "mixers", "lora")


@dataclass
class UpcycleArguments:
    teacher: str | None = field(
        default=None, metadata={"help": "a saved Llama/Mistral/Qwen2/Qwen3 folder (what from-llama takes)"}
    )
    gguf: str | None = field(
        default=None, metadata={"help": "a GGUF file instead of --teacher (needs pip install gguf)"}
    )
    cell: str = field(default="gru", metadata={"help": "gru or lstm"})
    num_heads: int | None = field(default=None, metadata={"help": "the student's cell heads (default as from-llama)"})
    init: str = field(default="attention", metadata={"help": "attention: mixers from the attention weights; fresh"})
    init_parts: str = field(
        default=",".join(INIT_PARTS),
        metadata={"help": f"with --init attention, the parts to map: {','.join(INIT_PARTS)}"},
    )
    init_gate_from: str = field(default="q", metadata={"help": "the gate half of in_proj from q_proj or k_proj"})
    init_max_timescale: float | None = field(
        default=None, metadata={"help": "the cell's longest time constant in tokens (default: --seq_len)"}
    )
    align_tokens: int = field(default=1_000_000, metadata={"help": "tokens of stage 2, layer alignment (0: skip)"})
    kd_tokens: int = field(default=10_000_000, metadata={"help": "tokens of stage 3, distillation on the logits"})
    kd_temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the KL term"})
    ce_weight: float = field(default=0.0, metadata={"help": "weight of the cross-entropy on the labels beside the KL"})
    kd_chunk: int = field(default=DEFAULT_CHUNK, metadata={"help": "positions per chunk of the KL's logits"})
    kd_top_k: int = field(
        default=0, metadata={"help": "KL over the teacher's top k logits per position (0: the whole vocabulary)"}
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "a folder caching the teacher's top-k logits per window (needs --kd_top_k), reused by later runs"
        },
    )
    train_params: str = field(default="all", metadata={"help": "stage 3 trains all, mixers, or lora (mixers + LoRA)"})


def check_upcycle_arguments(up: UpcycleArguments, training_args: TrainingArguments) -> None:
    """Every upcycle flag checked before any work, each error naming its flag."""
    if bool(up.teacher) == bool(up.gguf):
        raise ValueError("give the teacher as one of --teacher DIR or --gguf FILE")
    if up.cell not in ("gru", "lstm"):
        raise ValueError(f"--cell must be gru or lstm, got {up.cell!r}")
    if up.init not in INITS:
        raise ValueError(f"--init must be one of {', '.join(INITS)}, got {up.init!r}")
    parts = [p.strip() for p in up.init_parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(INIT_PARTS))
    if unknown:
        raise ValueError(f"--init_parts: unknown {', '.join(unknown)}; choose from {','.join(INIT_PARTS)}")
    if up.init_gate_from not in GATE_SOURCES:
        raise ValueError(f"--init_gate_from must be q or k, got {up.init_gate_from!r}")
    if up.init_max_timescale is not None and not (2 <= up.init_max_timescale < math.inf):
        raise ValueError(f"--init_max_timescale must be a number of tokens >= 2, got {up.init_max_timescale}")
    for key in ("align_tokens", "kd_tokens"):
        value = getattr(up, key)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"--{key} must be a whole number of tokens >= 0, got {value!r}")
    if up.align_tokens + up.kd_tokens == 0:
        raise ValueError("--align_tokens and --kd_tokens are both 0: there is nothing to train")
    if not (0 < up.kd_temperature < math.inf):
        raise ValueError(f"--kd_temperature must be a finite number > 0, got {up.kd_temperature}")
    if not (0 <= up.ce_weight < math.inf):
        raise ValueError(f"--ce_weight must be a finite number >= 0, got {up.ce_weight}")
    if up.kd_top_k < 0:
        raise ValueError(f"--kd_top_k must be >= 0 (0: the whole vocabulary), got {up.kd_top_k}")
    if up.teacher_cache and not up.kd_top_k:
        raise ValueError("--teacher_cache keeps the top k logits per position: give --kd_top_k K too (e.g. 64)")
    if up.kd_chunk < 1:
        raise ValueError(f"--kd_chunk must be >= 1, got {up.kd_chunk}")
    if up.train_params not in TRAINABLE:
        raise ValueError(f"--train_params must be one of {', '.join(TRAINABLE)}, got {up.train_params!r}")
    if up.gguf and not Path(up.gguf).is_file():
        raise FileNotFoundError(f"--gguf {up.gguf}: no such file")
    if up.gguf and not _importable("gguf"):
        raise MissingExtraError(
            "--gguf needs the gguf package, which transformers reads GGUF files with: pip install gguf "
            "(or pip install 'pararnn-hf[gguf]')"
        )
    if up.train_params == "lora" and not _importable("peft"):
        raise MissingExtraError("--train_params lora needs PEFT: pip install peft")
    if training_args.max_steps != -1:
        raise ValueError(
            "--max_steps: upcycle counts its steps from --align_tokens and --kd_tokens; leave --max_steps out"
        )


def load_teacher(up: UpcycleArguments):
    """(model, tokenizer, source name) of the teacher: a saved folder, or a GGUF file read
    through transformers' own GGUF support."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if up.gguf:
        path = Path(up.gguf)
        if not path.is_file():
            raise FileNotFoundError(f"--gguf {path}: no such file")
        where, kw = str(path.parent), {"gguf_file": path.name}
        config = AutoConfig.from_pretrained(where, **kw)
        check_llama_config(config, str(path))
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
        return model, tokenizer, str(path)
    folder = Path(up.teacher)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"--teacher {folder}: no saved model folder there (no config.json)")
    check_llama_config(AutoConfig.from_pretrained(folder), str(folder))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ValueError(f"--teacher {folder} has no usable tokenizer to read the data with: {err}") from None
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    return model, tokenizer, str(folder)


def teacher_cache(up: UpcycleArguments, teacher_model, source: str) -> TeacherLogitsCache | None:
    """The teacher-logits cache the flags ask for, tied to this teacher (its source and config)."""
    if not up.teacher_cache:
        return None
    config = hashlib.sha256(teacher_model.config.to_json_string(use_diff=False).encode()).hexdigest()[:16]
    return TeacherLogitsCache(up.teacher_cache, f"{Path(source).resolve()}#{config}", up.kd_top_k)


def tokens_per_step(seq_len: int, args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * max(1, args.world_size) * args.gradient_accumulation_steps * seq_len


def stage_steps(tokens: int, seq_len: int, args: TrainingArguments) -> int:
    """Optimizer steps that consume ``tokens`` (rounded up) at the run's global batch."""
    return math.ceil(tokens / tokens_per_step(seq_len, args)) if tokens else 0


def set_trainable(student, mode: str):
    """``all``: every parameter; ``mixers``: the mixers only; ``lora``: the mixers, and LoRA
    adapters on the MLPs (merged into the weights before the final save). Returns the model
    to train."""
    if mode == "all":
        return student
    for name, p in student.named_parameters():
        p.requires_grad_(".mixer." in name)
    if mode == "mixers":
        return student
    from peft import LoraConfig, get_peft_model

    mixers = sorted(
        {name.rsplit(".mixer.", 1)[0] + ".mixer" for name, _ in student.named_parameters() if ".mixer." in name}
    )
    config = LoraConfig(
        r=16, lora_alpha=32, target_modules=["gate_proj", "up_proj", "down_proj"], modules_to_save=mixers
    )
    return get_peft_model(student, config)


def provenance(
    source: str, up: UpcycleArguments, parts: list[str], steps: dict[str, int], tokens: dict[str, int]
) -> str:
    init = f"mixers initialised from attention ({', '.join(parts)})" if up.init == "attention" else "fresh mixers"
    return (
        f"Upcycled from {source} by distillation with pararnn-hf upcycle: embeddings, norms, MLPs and head copied, "
        f"{init}; stage 2 aligned each mixer to its attention block on {tokens['align']:,} tokens "
        f"({steps['align']} steps); stage 3 distilled the teacher's logits (forward KL, temperature "
        f"{up.kd_temperature}, CE weight {up.ce_weight}, training {up.train_params}) on {tokens['kd']:,} tokens "
        f"({steps['kd']} steps)."
    )


def run_upcycle(up: UpcycleArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """Check everything, build the student, run the stages, save the student folder with its
    tokenizer and card; returns a summary."""
    main_process = training_args.process_index == 0

    def say(text: str) -> None:
        if main_process:
            print(text, flush=True)

    check_upcycle_arguments(up, training_args)
    check_train_arguments(data_args, training_args)
    out = training_args.output_dir
    refuse_unsafe_target(out)
    check_writable_folder(out)
    resume = resume_target(training_args.resume_from_checkpoint)
    if isinstance(resume, str) and not Path(resume).is_dir():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
    stale = check_output_dir(out, data_args.overwrite, resume)
    checkpoint = resolve_resume(out, resume, say)

    teacher_model, tokenizer, source = load_teacher(up)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    vocab = teacher_model.config.vocab_size
    if tokenizer.vocab_size > vocab:
        raise ValueError(
            f"the teacher's tokenizer has {tokenizer.vocab_size} tokens and its model {vocab} embeddings: the "
            "vocabularies do not match"
        )
    parts = [p.strip() for p in up.init_parts.split(",") if p.strip()] if up.init == "attention" else []
    torch.manual_seed(training_args.seed)
    student = llama_student(teacher_model, up.cell, up.num_heads, training_args.seed).float()
    if parts:
        check_mappable(teacher_model.config, student.config, parts)
        attention_init_(
            student, teacher_model, parts, up.init_gate_from, up.init_max_timescale or float(data_args.seq_len)
        )
    student.generation_config = teacher_model.generation_config
    if main_process:
        clean_staging(out)
        for folder in stale:
            shutil.rmtree(folder)
    corpus = load_corpus(data_args.data, data_args.validation_percent)
    train_ds, eval_ds = build_datasets(corpus, tokenizer, data_args, training_args)
    # tokens added on top of the vocabulary (GGUF's converter adds an unknown token) are fine
    # as long as the data never produces them
    top = max(int(ds.tokens.max()) for ds in (train_ds, eval_ds))
    if top >= vocab:
        raise ValueError(
            f"the data holds token id {top} ({tokenizer.convert_ids_to_tokens(top)!r}), but the teacher has {vocab} "
            "embeddings: the vocabularies do not match"
        )
    steps = {
        "align": stage_steps(up.align_tokens, data_args.seq_len, training_args),
        "kd": stage_steps(up.kd_tokens, data_args.seq_len, training_args),
    }
    tokens = {k: v * tokens_per_step(data_args.seq_len, training_args) for k, v in steps.items()}
    # every trainable parameter gets exactly one gradient per step in both stages (alignment
    # gives the ones it does not reach an exact zero), so DDP must not also mark "unused" ones
    # ready from the forward's outputs, which the alignment loss does not come from
    training_args.ddp_find_unused_parameters = False
    training_args.max_steps = steps["align"] + steps["kd"]
    say(
        f"pararnn-hf upcycle: {source} -> Para{up.cell.upper()}; stage 1 "
        + (f"attention init ({', '.join(parts)})" if parts else "fresh mixers")
        + f"; stage 2 align {steps['align']:,} steps ({tokens['align']:,} tokens); stage 3 distil "
        f"{steps['kd']:,} steps ({tokens['kd']:,} tokens) into {Path(out).resolve()}"
        + (f", resuming from {Path(checkpoint).name}" if checkpoint else "")
    )
    model = set_trainable(student, up.train_params)
    trainer = UpcycleTrainer(
        model=model,
        args=training_args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=default_data_collator,
        processing_class=tokenizer,
        callbacks=[LossPlotCallback()],
        teacher=Teacher(teacher_model),
        align_steps=steps["align"],
        temperature=up.kd_temperature,
        ce_weight=up.ce_weight,
        kd_chunk=up.kd_chunk,
        top_k=up.kd_top_k,
        cache=teacher_cache(up, teacher_model, source),
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_loss = whole_run_train_loss(trainer, result.training_loss, checkpoint)
    if up.train_params == "lora":  # an ordinary ParaRNN folder: the adapters merged in
        trainer.model = trainer.model_wrapped = model.merge_and_unload()
    trainer.save_model(out)
    metrics = trainer.evaluate()
    summary = {
        "output_dir": str(Path(out).resolve()),
        "teacher": source,
        "cell": up.cell,
        "init": parts or "fresh",
        "align_steps": steps["align"],
        "kd_steps": steps["kd"],
        "align_tokens": tokens["align"],
        "kd_tokens": tokens["kd"],
        "train_loss": train_loss,
        "eval_loss": metrics.get("eval_loss"),
        "eval_perplexity": metrics.get("eval_perplexity", math.nan),
    }
    if trainer.is_world_process_zero():
        final = trainer.accelerator.unwrap_model(trainer.model)
        write_card_stub(Path(out), final.config, provenance(source, up, parts, steps, tokens))
        write_text_atomically(Path(out, "upcycle_summary.json"), json.dumps(summary, indent=2))
    return {**summary, "is_main_process": trainer.is_world_process_zero()}
