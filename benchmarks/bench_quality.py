"""ParaGRU and ParaLSTM against Llama and Mamba2 (transformers' classes) of the same size, each
at its own best learning rate: a resumable sweep, length extrapolation and training throughput.

All models see the same tokenizer, packed 256-token windows in the same order, steps and
schedule (RECIPE). ParaRNN models get the document ``resets``; Llama and Mamba2 see the same
windows without them (the usual packing for those models). Document-start tokens are never
targets. Each model keeps its own initialisation (its class's ``_init_weights``).

Stages (each reads what the earlier ones recorded under --out):
  python benchmarks/bench_quality.py sweep          # resumable: one JSON per finished run
  python benchmarks/bench_quality.py extrapolate    # best checkpoints at 256 ... 4096 tokens
  python benchmarks/bench_quality.py throughput     # training tok/s, one model at a time
  python benchmarks/bench_quality.py report --plot  # markdown tables; PNGs with --plot

Run ``throughput`` on an otherwise idle machine: CPU torch slows down by an order of magnitude
when other processes compete for the cores. The sweep's own timings are not used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from bench_generate import MODELS, build
from quality_sweep import (
    GRID,
    RunKey,
    active_claims,
    best_lr,
    claim,
    load_runs,
    losses_by_lr,
    next_run,
    summary,
    write_json,
    write_run,
)

# What every model gets. Llama's usual recipe (AdamW with beta2 0.95, weight decay 0.1 on the
# matrices, clipping at 1.0, linear warm-up then cosine); 10% warm-up, as small transformer LMs
# commonly use. The learning rate is what the sweep varies per model.
RECIPE = dict(
    optim="adamw_torch",
    adam_beta1=0.9,
    adam_beta2=0.95,
    adam_epsilon=1e-8,
    weight_decay=0.1,
    max_grad_norm=1.0,
    lr_scheduler_type="cosine",
)
WARMUP_FRACTION = 0.1
# Mamba2 shaped to the ParaGRU's parameter count (within 3%): 7 layers, 32 heads of 32, state 64.
# SSD chunks of 64, not the config's 256: the chunked scan is exact at any chunk size (gradients
# agree to 2e-6 relative), and on the CPU torch path its quadratic in-chunk part halves a step's time.
MAMBA2_SHAPE = dict(num_hidden_layers=7, head_dim=32, state_size=64, chunk_size=64)
PARAM_TOLERANCE = 0.03
LENGTHS = (256, 512, 1024, 2048, 4096)
HERE = Path(__file__).resolve().parent  # default folders live beside the script, wherever it runs from


def collator_without_resets(features):
    batch = default_data_collator(features)
    batch.pop("resets", None)
    return batch


def make_model(name: str, args) -> torch.nn.Module:
    model = build(name, args.size, max(LENGTHS), mamba=MAMBA2_SHAPE)
    if model.config.vocab_size != args.vocab_size:
        model.resize_token_embeddings(args.vocab_size)
    return model


def check_sizes(models: list[str], args) -> dict[str, int]:
    """Parameter counts at the size's own vocabulary (a corpus whose tokenizer has fewer tokens
    shrinks every model's embedding alike); refuses models that differ by more than 3%."""
    shapes = {name: build(name, args.size, max(LENGTHS), mamba=MAMBA2_SHAPE) for name in models}
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in shapes.items()}
    ref = counts.get("pararnn-gru", next(iter(counts.values())))
    off = {n: c / ref - 1 for n, c in counts.items() if abs(c / ref - 1) > PARAM_TOLERANCE}
    if off:
        raise SystemExit(f"bench_quality: parameter counts differ by more than 3%: {off} (counts {counts})")
    return counts


def load_corpus_and_tokenizer(args):
    from pararnn_hf.data import load_corpus, load_or_train_tokenizer

    corpus = load_corpus(args.corpus if args.corpus != ["builtin"] else "builtin", args.validation_percent)
    tokenizer = load_or_train_tokenizer(corpus, args.vocab)
    args.vocab_size = len(tokenizer)
    return corpus, tokenizer


def load_data(args):
    from pararnn_hf.data import PackedDataset, tokenize_documents

    corpus, tokenizer = load_corpus_and_tokenizer(args)
    train = PackedDataset(tokenize_documents(tokenizer, corpus.train), args.seq_len)
    evaluation = PackedDataset(
        tokenize_documents(tokenizer, corpus.validation), args.seq_len, pad_last=True, pad_id=tokenizer.pad_token_id
    )
    evaluation.keep_first(args.eval_sequences)
    return train, evaluation


def training_args(args, output_dir: Path, lr: float, seed: int, steps: int) -> TrainingArguments:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        warmup_steps=max(1, round(WARMUP_FRACTION * steps)),
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=args.batch,
        learning_rate=lr,
        logging_steps=max(1, steps // 50),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=0,  # the same windows in the same order for every model and seed
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=device == "cuda",
        **RECIPE,
    )


def environment() -> dict:
    return {
        "date": date.today().isoformat(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def train_run(key: RunKey, args, train, evaluation) -> dict:
    torch.manual_seed(key.seed)
    model = make_model(key.model, args)
    collator = default_data_collator if key.model.startswith("pararnn") else collator_without_resets
    scratch = Path(args.checkpoints) / "trainer"
    trainer = Trainer(
        model=model,
        args=training_args(args, scratch, key.lr, key.seed, args.steps),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=collator,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    loss = trainer.evaluate()["eval_loss"]
    if not math.isfinite(loss):
        print(f"  {key.name}: validation loss {loss} (diverged); recorded as inf", flush=True)
        loss = math.inf
    checkpoint = Path(args.checkpoints) / key.name
    model.save_pretrained(checkpoint)
    return {
        "model": key.model,
        "lr": key.lr,
        "seed": key.seed,
        "params": sum(p.numel() for p in model.parameters()),
        **({"mamba2_shape": MAMBA2_SHAPE} if key.model == "mamba2" else {}),
        "eval_loss": loss,
        "eval_target_tokens": evaluation.num_target_tokens,
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "corpus": args.corpus,
        "recipe": {**RECIPE, "warmup_fraction": WARMUP_FRACTION},
        "train_s_not_isolated": seconds,
        "train_loss": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
        "checkpoint": str(checkpoint),
        **environment(),
    }


def sweep_plan(args, models: list[str]) -> dict:
    return {"lrs": args.lrs, "seeds": args.seeds, "max_extend": args.max_extend, "models": models}


def cmd_sweep(args) -> None:
    train, evaluation = load_data(args)
    counts = check_sizes(args.models, args)
    print("parameters: " + ", ".join(f"{n} {c / 1e6:.3f}M" for n, c in counts.items()), flush=True)
    runs_dir = Path(args.out) / "runs"
    claims = Path(args.checkpoints) / "claims"
    # the report reads the plan back, to tell whether the sweep has settled; a sweep of some
    # models (--models) adds them to the plan, it does not drop the others
    earlier = (_read_json(Path(args.out) / "plan.json") or {}).get("models", [])
    write_json(Path(args.out) / "plan.json", sweep_plan(args, earlier + [m for m in args.models if m not in earlier]))
    done_now = 0
    while True:
        runs, busy = load_runs(runs_dir), active_claims(claims)
        key = next_run(runs, args.models, tuple(args.lrs), args.seeds, args.max_extend, busy)
        if key is None and busy:
            time.sleep(20)  # another worker's result decides what comes next
            continue
        if key is None:
            print(f"sweep settled: {len(runs)} runs recorded in {runs_dir}")
            return
        if args.max_runs is not None and done_now >= args.max_runs:
            print(f"stopping after {done_now} runs (--max-runs); rerun to go on from {key.name}")
            return
        mine = claim(claims, key)
        if mine is None:
            continue
        try:
            print(f"run {len(runs) + 1}: {key.name}", flush=True)
            record = train_run(key, args, train, evaluation)
            path = write_run(runs_dir, record)
        finally:
            mine.unlink(missing_ok=True)
        done_now += 1
        print(f"  eval loss {record['eval_loss']:.4f} ({record['train_s_not_isolated']:.0f} s) -> {path}", flush=True)


def token_losses(model: torch.nn.Module, blocks: torch.Tensor, length: int, tokens_per_batch: int = 8192):
    """Next-token loss (nats, float64) of every block token when the blocks are read in
    windows of ``length``: [blocks, block_len], NaN where a window starts (nothing predicts
    that token)."""
    windows = blocks.reshape(-1, length)
    out = torch.full(windows.shape, math.nan, dtype=torch.float64)
    with torch.no_grad():
        for i, batch in zip(range(0, len(windows), step := max(1, tokens_per_batch // length)), windows.split(step)):
            logits = model(input_ids=batch).logits[:, :-1].double()
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
            out[i : i + len(batch), 1:] = loss
    return out.reshape(blocks.shape)


def _rounded(values: torch.Tensor) -> list:
    return [None if math.isnan(v) else round(v, 5) for v in values.tolist()]


def stdlib_test_texts() -> list[str]:
    """The standard library's own tests: Python source of the same project as the built-in
    corpus, which leaves them out, so no model trained on them. Ordered by a hash of the path,
    so that a prefix of the list samples the whole test suite, not the tests starting with "a"."""
    import sysconfig

    from pararnn_hf.data.corpus import stdlib_files

    base = Path(sysconfig.get_paths()["stdlib"])
    trained = set(stdlib_files(base))
    paths = [
        p for p in base.rglob("*.py") if p not in trained and not {"site-packages", "dist-packages"} & set(p.parts)
    ]
    paths.sort(key=lambda p: hashlib.sha1(p.relative_to(base).as_posix().encode()).hexdigest())
    return [p.read_bytes().decode("utf-8", "replace") for p in paths]


def long_blocks(documents: list[list[int]], longest: int, max_blocks: int) -> torch.Tensor:
    """The first ``longest`` tokens of each document that has that many, at most ``max_blocks``:
    one block per text, so that at every length the models read the same tokens and a position
    is that much context of one text."""
    blocks = [doc[:longest] for doc in documents if len(doc) >= longest][:max_blocks]
    if not blocks:
        raise SystemExit(f"bench_quality: no held-out document has {longest} tokens")
    return torch.tensor(blocks, dtype=torch.long)


def long_documents(args, longest: int) -> tuple[list[list[int]], str]:
    """Token ids of the held-out texts the extrapolation reads, and what they are."""
    from pararnn_hf.data import tokenize_documents

    corpus, tokenizer = load_corpus_and_tokenizer(args)
    source = args.long_text or ("stdlib-tests" if args.corpus == ["builtin"] else "validation")
    if source == "validation":
        return tokenize_documents(tokenizer, corpus.validation), f"held-out documents of {corpus.name}"
    # a text shorter than ``longest`` bytes cannot hold ``longest`` tokens: skip it untokenized
    texts = [t for t in stdlib_test_texts() if len(t.encode()) >= longest]
    return tokenize_documents(tokenizer, texts), "the standard library's tests (not in the built-in corpus)"


def cmd_extrapolate(args) -> None:
    from transformers import AutoModelForCausalLM

    import pararnn_hf  # noqa: F401  (registers the ParaRNN classes with Auto*)

    runs = load_runs(Path(args.out) / "runs")
    best = {}
    for name in args.models:
        lr = best_lr(runs, name)
        if lr is None:
            print(f"{name}: no sweep run recorded; skipped")
            continue
        best[name] = next(r for r in runs if r["model"] == name and r["seed"] == 0 and math.isclose(r["lr"], lr))
        if not (Path(best[name]["checkpoint"]) / "config.json").is_file():
            raise SystemExit(
                f"bench_quality: {name}'s best run's checkpoint {best[name]['checkpoint']} is missing "
                f"(another machine?); delete {RunKey(name, lr, 0).name}.json to train it again"
            )
    lengths = sorted(args.lengths)
    documents, text = long_documents(args, lengths[-1])
    blocks = long_blocks(documents, lengths[-1], args.max_blocks)
    print(f"{blocks.shape[0]} blocks of {lengths[-1]} tokens, one per text, from {text}", flush=True)
    result = {"lengths": lengths, "blocks": blocks.shape[0], "tokens": blocks.numel(), "text": text, "models": {}}
    result |= environment()
    result["common_tokens"] = blocks.shape[0] * (blocks.shape[1] - blocks.shape[1] // lengths[0])
    result["blocks_sha1"] = hashlib.sha1(blocks.numpy().tobytes()).hexdigest()
    path = Path(args.out) / "extrapolation.json"
    # a model whose best checkpoint was already read on these very blocks is not read again
    previous = _read_json(path) or {}
    same_blocks = all(previous.get(k) == result[k] for k in ("lengths", "text", "blocks_sha1"))
    for name, record in best.items():
        lr = record["lr"]
        done = previous.get("models", {}).get(name) if same_blocks else None
        if done and done["checkpoint"] == record["checkpoint"]:
            result["models"][name] = done
            print(f"{name}: kept (lr {lr:.3g}, read before on the same blocks)", flush=True)
            continue
        model = AutoModelForCausalLM.from_pretrained(record["checkpoint"]).eval()
        by_length = {n: token_losses(model, blocks, n) for n in lengths}
        # the same tokens at every length: those no window start of the shortest length skips
        common = ~by_length[lengths[0]].isnan()
        longest, shortest = by_length[lengths[-1]], by_length[lengths[0]]
        result["models"][name] = {
            "lr": lr,
            "checkpoint": record["checkpoint"],
            "mean_loss": {str(n): float(v[common].mean()) for n, v in by_length.items()},
            # per position of the block, mean over blocks; [0] is None (nothing predicts it)
            "position_loss": _rounded(longest.mean(0)),
            # the same tokens read with all of the block before them minus with only their own
            # shortest window: < 0 where the longer context helps; None at window starts
            "delta_vs_shortest": _rounded((longest - shortest).mean(0)),
        }
        means = result["models"][name]["mean_loss"]
        print(f"{name}: " + ", ".join(f"{n}: {v:.4f}" for n, v in means.items()), flush=True)
        write_json(path, result)  # after each model: a killed run keeps what it read
    write_json(path, result)
    print(f"wrote {path}")


class StepClock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def cmd_throughput(args) -> None:
    train, _ = load_data(args)
    counts = check_sizes(args.models, args)
    result = {"steps": args.steps, "warmup_steps": args.warmup_steps, "models": {}, **environment()}
    for name in args.models:
        torch.manual_seed(0)
        model = make_model(name, args)
        clock = StepClock()
        collator = default_data_collator if name.startswith("pararnn") else collator_without_resets
        trainer = Trainer(
            model=model,
            args=training_args(args, Path(args.checkpoints) / "trainer", 1e-3, 0, args.warmup_steps + args.steps),
            train_dataset=train,
            data_collator=collator,
            callbacks=[clock],
        )
        trainer.train()
        seconds = clock.times[-1] - clock.times[args.warmup_steps - 1]
        tok_s = args.steps * args.batch * args.seq_len / seconds
        result["models"][name] = {"params": counts[name], "train_tok_s": tok_s}
        print(f"{name:<13} train {tok_s:8,.0f} tok/s ({torch.get_num_threads()} threads)", flush=True)
    path = Path(args.out) / "throughput.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


BUCKETS = ((1, 64), (64, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 4096))


def cmd_report(args) -> None:
    out = Path(args.out)
    runs = load_runs(out / "runs")
    models = [m for m in args.models if any(r["model"] == m for r in runs)]
    if not models:
        raise SystemExit(f"bench_quality: no runs recorded in {out / 'runs'}")
    rates = sorted({lr for m in models for lr in losses_by_lr(runs, m)})
    print("| model | params | " + " | ".join(f"lr {lr:.3g}" for lr in rates) + " |")
    print("|---|---|" + "---|" * len(rates))
    for m in models:
        table = losses_by_lr(runs, m)
        params = next(r["params"] for r in runs if r["model"] == m)
        cells = []
        for lr in rates:
            losses = next((v for k, v in table.items() if math.isclose(k, lr)), None)
            cells.append("" if losses is None else " / ".join(f"{x:.4f}" for x in losses))
        print(f"| {m} | {params / 1e6:.2f}M | " + " | ".join(cells) + " |")
    throughput = _read_json(out / "throughput.json")
    print()
    print("| model | best lr | validation loss (mean ± half-range, seeds) | rel. to Llama | train tok/s |")
    print("|---|---|---|---|---|")
    best = {m: summary(runs, m) for m in models}
    base = best.get("llama")
    for m, s in best.items():
        rel = f"{s['mean'] / base['mean']:.3f}" if base else "n/a"
        tok = throughput["models"].get(m, {}).get("train_tok_s") if throughput else None
        tok_s = f"{tok:,.0f}" if tok else "not measured"
        print(f"| {m} | {s['lr']:.3g} | {s['mean']:.4f} ± {s['spread'] / 2:.4f} ({s['seeds']}) | {rel} | {tok_s} |")
    extrap = _read_json(out / "extrapolation.json")
    if extrap and "text" not in extrap:
        print(f"\n{out / 'extrapolation.json'} predates one block per text: rerun `extrapolate`")
        extrap = None
    if extrap:
        lengths = extrap["lengths"]
        print()
        print(
            f"Held-out loss by evaluation window, the same {extrap['common_tokens']} tokens at every length "
            f"({extrap['blocks']} blocks of {lengths[-1]}, one per text, from {extrap['text']}):"
        )
        print("| model | " + " | ".join(str(n) for n in lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for m, e in extrap["models"].items():
            print(f"| {m} | " + " | ".join(f"{e['mean_loss'][str(n)]:.4f}" for n in lengths) + " |")
        buckets = [(a, b) for a, b in BUCKETS if b <= lengths[-1]]
        print()
        print(
            f"By position in the block: loss with the whole block as context, and in brackets its change "
            f"from reading the same tokens in {lengths[0]}-token windows (< 0: the longer context helps):"
        )
        print("| model | " + " | ".join(f"pos {a}-{b}" for a, b in buckets) + " |")
        print("|---|" + "---|" * len(buckets))
        for m, e in extrap["models"].items():
            cells = []
            for a, b in buckets:
                loss = _bucket_mean(e["position_loss"], a, b)
                delta = _bucket_mean(e["delta_vs_shortest"], a, b) if a >= lengths[0] else None
                cells.append(f"{loss:.4f}" + ("" if delta is None else f" ({delta:+.4f})"))
            print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    plan = _read_json(out / "plan.json") or sweep_plan(args, args.models)
    pending = next_run(runs, plan["models"], tuple(plan["lrs"]), plan["seeds"], plan["max_extend"])
    if pending is not None:
        print(f"Provisional: the sweep is not settled (the first run still to finish: {pending.name}).")
    train_len = max(r["seq_len"] for r in runs)
    for line in goal_lines(best, extrap, train_len):
        print(f"- {line}")
    if args.plot:
        _plot_sweep(runs, models, out / "lr_sweep.png")
        print(f"wrote {out / 'lr_sweep.png'}")
        if extrap:
            _plot_positions(extrap, out / "extrapolation.png")
            print(f"wrote {out / 'extrapolation.png'}")


def goal_lines(best: dict[str, dict], extrap: dict | None, train_len: int) -> list[str]:
    """The goals we hold the ParaRNN models to, each judged on what is recorded: at each
    model's best, validation loss within 5% of the Llama's and no worse than Mamba2's, and a
    lower loss than the Llama's at every window longer than the training length."""
    lines = []
    llama, mamba = best.get("llama"), best.get("mamba2")
    longer = [n for n in (extrap or {}).get("lengths", []) if n > train_len]
    for m in ("pararnn-gru", "pararnn-lstm"):
        s = best.get(m)
        if s is None:
            continue
        if llama:
            ratio = s["mean"] / llama["mean"]
            lines.append(f"{m} within 5% of the Llama: {'yes' if ratio <= 1.05 else 'no'} ({ratio:.3f}x its loss)")
        if mamba:
            verdict = "yes" if s["mean"] <= mamba["mean"] else "no"
            lines.append(f"{m} no worse than Mamba2: {verdict} ({s['mean']:.4f} vs {mamba['mean']:.4f})")
        models = (extrap or {}).get("models", {})
        if longer and m in models and "llama" in models:
            ours = [models[m]["mean_loss"][str(n)] for n in longer]
            theirs = [models["llama"]["mean_loss"][str(n)] for n in longer]
            verdict = "yes" if all(a < b for a, b in zip(ours, theirs)) else "no"
            pairs = ", ".join(f"{n}: {a:.4f} vs {b:.4f}" for n, a, b in zip(longer, ours, theirs))
            lines.append(f"{m} better than the Llama beyond {train_len} tokens: {verdict} ({pairs})")
    return lines


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_sweep(runs: list[dict], models: list[str], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for m in models:
        table = {lr: v for lr, v in losses_by_lr(runs, m).items() if all(math.isfinite(x) for x in v)}
        line = ax.plot(list(table), [statistics.fmean(v) for v in table.values()], "o-", label=m, lw=1.4)
        for lr, losses in table.items():
            ax.scatter([lr] * len(losses), losses, s=10, color=line[0].get_color(), alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _bucket_mean(values: list, a: int, b: int) -> float:
    kept = [v for v in values[a:b] if v is not None]
    return statistics.fmean(kept) if kept else math.nan


def _plot_positions(extrap: dict, path: Path) -> None:
    plt = _pyplot()
    shortest, longest = extrap["lengths"][0], extrap["lengths"][-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for m, e in extrap["models"].items():
        # geometric buckets on the left (equal width on its log axis), window-wide ones on the right
        edges = sorted({int(x) for x in torch.logspace(0, math.log10(longest), 40)} | {longest})
        pairs = list(zip(edges, edges[1:]))
        left.plot(
            [math.sqrt(a * b) for a, b in pairs], [_bucket_mean(e["position_loss"], a, b) for a, b in pairs], label=m
        )
        width = shortest  # one whole window per bucket: the windowed reading's context cycles with it
        starts = range(shortest, longest, width)
        right.plot(
            [a + width / 2 for a in starts],
            [_bucket_mean(e["delta_vs_shortest"], a, a + width) for a in starts],
            label=m,
        )
    left.axvline(256, color="grey", ls="--", lw=1, label="training length")
    left.set_xscale("log")
    left.set_xlabel("position in the held-out block (tokens of context)")
    left.set_ylabel("next-token loss (nats)")
    right.axhline(0, color="grey", lw=1)
    right.set_xlabel("position in the held-out block")
    right.set_ylabel(f"loss(whole block before) - loss({shortest}-token window)")
    fig.suptitle(f"{extrap['blocks']} blocks of {longest} tokens, one per text, from {extrap['text']}", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", nargs="?", default="report", choices=("sweep", "extrapolate", "throughput", "report"))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=400, help="training steps (throughput: timed steps)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="throughput: untimed first steps")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--size", default="5m")
    parser.add_argument("--corpus", nargs="+", default=["builtin"], help="builtin, hf:NAME or text files")
    parser.add_argument("--validation-percent", type=float, default=2.0)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--eval-sequences", type=int, default=None, help="validation windows (default: all)")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(GRID), help="the grid of peak learning rates")
    parser.add_argument("--seeds", type=int, default=2, help="seeds at the best rate and its neighbours")
    parser.add_argument("--max-extend", type=int, default=2, help="rates added beyond each edge of the grid")
    parser.add_argument("--max-runs", type=int, default=None, help="sweep: stop after this many runs")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="extrapolate: window lengths")
    parser.add_argument(
        "--long-text",
        choices=("validation", "stdlib-tests"),
        default=None,
        help="extrapolate: held-out texts to read (default: stdlib-tests with the built-in corpus, else validation)",
    )
    parser.add_argument("--max-blocks", type=int, default=32, help="extrapolate: texts read, one block each")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(HERE / "quality"), help="run records, tables' inputs, plots")
    parser.add_argument("--checkpoints", default=str(HERE / "results" / "quality_checkpoints"))
    parser.add_argument("--plot", action="store_true", help="report: write lr_sweep.png and extrapolation.png")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = sorted(args.lengths)
    if any(lengths[-1] % n for n in lengths):
        parser.error(f"--lengths must each divide the longest ({lengths[-1]}): {lengths}")
    from pararnn_hf.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    os.makedirs(args.out, exist_ok=True)
    {"sweep": cmd_sweep, "extrapolate": cmd_extrapolate, "throughput": cmd_throughput, "report": cmd_report}[
        args.stage
    ](args)


if __name__ == "__main__":
    main()
