"""``pararnn-hf demo``: the main job. Trains a small ParaRNN on the built-in corpus (the
Python standard library) with ``Trainer``, saves it, reloads it through
``AutoModelForCausalLM``, generates a sample, reports held-out perplexity, evaluates it with
lm-eval on the bundled tasks and writes a model card."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from ..model_cards import check_card_target
from ..output_guard import check_output_file
from ..ranges import RANGES
from .run import DataArguments, ModelArguments, check_output_dir, run_training


def demo_training_arguments(
    output: str, steps: int, batch_size: int, learning_rate: float, seed: int, use_cpu: bool
) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=max(1, steps // 50),
        eval_strategy="steps",
        eval_steps=max(1, steps // 4),
        save_strategy="steps",
        save_steps=max(1, steps // 2),
        save_total_limit=1,
        report_to="none",
        seed=seed,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
    )


RESULTS_FILE = "eval_results.json"


def check_demo_arguments(
    steps: int,
    seq_len: int,
    batch_size: int,
    learning_rate: float,
    prompt: str,
    max_new_tokens: int,
    max_eval_sequences: int | None,
    eval_limit: int | None,
) -> None:
    """Every demo value in its range (``ranges.RANGES``) before the run, not after it."""
    values = dict(
        steps=steps,
        seq_len=seq_len,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_new_tokens=max_new_tokens,
        max_eval_sequences=max_eval_sequences,
        eval_limit=eval_limit,
    )
    for key, value in values.items():
        if value is not None or key not in ("max_eval_sequences", "eval_limit"):
            RANGES[key].check(f"--{key.replace('_', '-')}", value)
    if not isinstance(prompt, str) or prompt == "":
        raise ValueError(f"--prompt must be some text, got {prompt!r}")


def run_demo(
    cell: str = "gru",
    steps: int = 500,
    output: str = "pararnn-demo",
    seq_len: int = 256,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    prompt: str = "def main(",
    max_new_tokens: int = 80,
    overwrite: bool = False,
    seed: int = 0,
    data: list[str] | None = None,
    max_eval_sequences: int | None = None,
    eval_limit: int | None = None,
) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .. import ParaRNNConfig  # noqa: F401  (AutoModelForCausalLM must know model_type "pararnn")

    check_demo_arguments(
        steps, seq_len, batch_size, learning_rate, prompt, max_new_tokens, max_eval_sequences, eval_limit
    )
    folder = Path(output)
    check_output_dir(folder, overwrite, None)
    # the files the demo writes after training, checked before it: none may be refused then
    check_output_file(folder / RESULTS_FILE, overwrite)
    check_card_target(folder, overwrite)
    started = time.perf_counter()
    use_cpu = not torch.cuda.is_available()
    print(
        f"pararnn-hf demo: a {cell.upper()} language model on {'the Python standard library' if not data else data}"
        f", {steps} steps of {batch_size} x {seq_len} tokens on {'CPU' if use_cpu else 'CUDA'}"
    )
    summary = run_training(
        ModelArguments(preset="demo", cell=cell),
        DataArguments(
            data=data or ["builtin"], seq_len=seq_len, overwrite=overwrite, max_eval_sequences=max_eval_sequences
        ),
        demo_training_arguments(output, steps, batch_size, learning_rate, seed, use_cpu),
    )
    folder = Path(summary["output_dir"])
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            repetition_penalty=1.1,
            pad_token_id=tokenizer.pad_token_id,
        )
    sample = tokenizer.decode(out[0], skip_special_tokens=True)

    from ..eval import LOCAL_GROUP, run_eval
    from ..model_cards import write_card

    results_path = folder / RESULTS_FILE
    results = run_eval(
        str(folder), [LOCAL_GROUP], output=str(results_path), batch_size=8, limit=eval_limit, overwrite=overwrite
    )["results"]
    card = write_card(folder, results_path, overwrite=overwrite)
    summary.update(
        sample=sample, reloaded_class=type(model).__name__, lm_eval=results, total_time_s=time.perf_counter() - started
    )

    print("\n" + "=" * 72)
    print(
        f"trained {summary['parameters'] / 1e6:.1f}M parameters in {summary['train_runtime_s']:.0f} s; "
        f"train loss {summary['train_loss']:.3f}"
    )
    print(
        f"held-out loss {summary['eval_loss']:.3f} nats/token, perplexity {summary['eval_perplexity']:.2f} "
        f"({summary['eval_target_tokens']} tokens of unseen standard-library modules)"
    )
    print(f"reloaded with AutoModelForCausalLM as {summary['reloaded_class']}; greedy sample:\n")
    print(sample)
    nextline = results["pararnn_stdlib_nextline"]["acc,none"]
    complete = results["pararnn_stdlib_complete"]["char_similarity,none"]
    bpb = results["pararnn_stdlib_ppl"]["bits_per_byte,none"]
    print(
        f"\nlm-eval (bundled tasks): next-line choice accuracy {nextline:.3f} (chance 0.25), "
        f"line-completion similarity {complete:.3f}, {bpb:.3f} bits per byte"
    )
    print("\n" + "=" * 72)
    print(f"model + tokenizer : {folder}")
    print(f"loss curves       : {summary['loss_plot']}")
    print(f"summary           : {folder / 'train_summary.json'}")
    print(f"lm-eval results   : {results_path}")
    print(f"model card        : {card}")
    print(f"try               : pararnn-hf generate --model {folder} --prompt 'import '")
    print(f"total time        : {summary['total_time_s']:.0f} s")
    return summary
