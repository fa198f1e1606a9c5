"""Validation loss and training throughput of ParaGRU, ParaLSTM, Llama and Mamba2 of about the
same size, trained side by side on the same data, tokenizer, steps and schedule.

All models see the same packed windows in the same order. ParaRNN models get the document
``resets``; Llama and Mamba2 (transformers' own classes) see the same windows without them
(the usual packing for those models: attention and the SSM run across document boundaries
inside a window). Document-start tokens are never targets for any model.

Usage: python benchmarks/bench_quality.py [--steps 500] [--models pararnn-gru llama ...]
Prints validation loss, perplexity and training tokens/s; writes JSON and a PNG of the curves.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from bench_generate import MODELS, build
from pararnn_hf.data import PackedDataset, load_corpus, load_or_train_tokenizer, tokenize_documents
from pararnn_hf.runtime import tune_cpu_allocator
from pararnn_hf.training import plot_loss_curves


def collator_without_resets(features):
    batch = default_data_collator(features)
    batch.pop("resets", None)
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--size", default="5m")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--eval-sequences", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/bench_quality")
    args = parser.parse_args()
    tune_cpu_allocator()

    corpus = load_corpus("builtin")
    tokenizer = load_or_train_tokenizer(corpus, args.vocab)
    train = PackedDataset(tokenize_documents(tokenizer, corpus.train), args.seq_len)
    evaluation = PackedDataset(
        tokenize_documents(tokenizer, corpus.validation), args.seq_len, pad_last=True, pad_id=tokenizer.pad_token_id
    )
    evaluation.keep_first(args.eval_sequences)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, histories = {}, {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"{len(train)} training windows of {args.seq_len}; {evaluation.num_target_tokens} validation targets; "
        f"{args.steps} steps x {args.batch} sequences on {device}"
    )
    for name in args.models:
        torch.manual_seed(0)
        model = build(name, args.size, args.seq_len)
        if model.config.vocab_size != len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        targs = TrainingArguments(
            output_dir=str(out / name),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            per_device_eval_batch_size=args.batch,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, args.steps // 20),
            weight_decay=0.1,
            max_grad_norm=1.0,
            logging_steps=max(1, args.steps // 50),
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
            use_cpu=device == "cpu",
            bf16=device == "cuda",
        )
        collator = default_data_collator if name.startswith("pararnn") else collator_without_resets
        trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=evaluation, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        loss = trainer.evaluate()["eval_loss"]
        params = sum(p.numel() for p in model.parameters())
        results[name] = {
            "params": params,
            "eval_loss": loss,
            "eval_perplexity": math.exp(loss),
            "train_tok_s": args.steps * args.batch * args.seq_len / seconds,
            "train_s": seconds,
        }
        histories[name] = trainer.state.log_history
        print(
            f"{name:<13} {params / 1e6:5.2f}M  eval loss {loss:.4f}  ppl {math.exp(loss):8.2f}  "
            f"train {results[name]['train_tok_s']:8,.0f} tok/s  ({seconds:.0f} s)",
            flush=True,
        )
        plot_loss_curves(trainer.state.log_history, out / f"{name}.png")
    if "llama" in results:
        base = results["llama"]["eval_loss"]
        print(
            "validation loss relative to Llama: "
            + ", ".join(f"{n} {r['eval_loss'] / base:.3f}" for n, r in results.items())
        )
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    _plot_all(histories, out / "train_loss.png")
    print(f"wrote {out / 'results.json'} and {out / 'train_loss.png'}")


def _plot_all(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, history in histories.items():
        points = [(e["step"], e["loss"]) for e in history if "loss" in e]
        if points:
            ax.plot(*zip(*points), label=name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
