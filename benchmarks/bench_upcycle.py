"""The upcycling protocol (docs/design.md#upcycling): what each stage of ``pararnn-hf upcycle``
is worth, on CPU on the built-in corpus, against training the same student from scratch.

Teacher: transformers' Llama of the project's ~4M size (bench_quality's ``llama``: the demo
preset's width, depth and MLP, 4 heads, tied embeddings), trained with bench_quality's recipe
at its best rate there (2e-3) on ``--teacher-tokens`` (16M) tokens of the built-in corpus.
Students: the same shape, each given ``--student-tokens`` (1.6M) tokens. Arms:

  A   from scratch (the demo preset's own init), CE with document resets
  A'  A with 1.3x the tokens (compute-matched for the teacher's forwards of the distilled arms)
  B   from-llama (embeddings, norms, MLPs, head copied; fresh mixers) + CE
  C   B with the attention init
  D   C + alignment (ALIGN_SHARE of the tokens) + KD (the rest): the full recipe
  E   D without the attention init
  F   D without alignment (every token KD)

ParaGRU runs every arm, ParaLSTM arms A and D; two seeds each (a seed draws the student's
random init and the order of its training windows). Measures: held-out loss at the
training context (256) and at twice it (512), and the training loss curve against student
tokens. Goals for D: >= 0.10 nats below A, >= 0.05 below B, closing >= 50 % of the A-teacher gap.

Resumable across sessions: the teacher trains with checkpoints (``teacher_run/``) and resumes
from the newest; so does each student run (``scratch/<run>/``). Each run is recorded as one
JSON file when it finishes (written whole or not at all) and skipped when the script starts
again. Run it alone on the machine.

  python benchmarks/bench_upcycle.py run             # teacher, then every arm/seed not yet recorded
  python benchmarks/bench_upcycle.py report --plot   # the table (markdown), loss_vs_tokens.png
  python benchmarks/bench_upcycle.py run --smoke --out /tmp/u   # toy sizes: checks the plumbing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from bench_generate import build
from bench_quality import collator_without_resets, environment, training_args
from quality_sweep import write_json

HERE = Path(__file__).resolve().parent
ALIGN_SHARE = 0.1  # of a distilled arm's tokens spent on layer alignment
TEACHER_LR = 2e-3  # Llama's best rate in bench_quality
SCRATCH_LR = 8e-3  # ParaGRU's and ParaLSTM's best rate there
UPCYCLE_LR = 2e-3  # students that start from the teacher's weights: the teacher's own rate
ARMS = {
    "A": dict(start="scratch", init=False, align=False, kd=False, tokens=1.0),
    "A'": dict(start="scratch", init=False, align=False, kd=False, tokens=1.3),
    "B": dict(start="llama", init=False, align=False, kd=False, tokens=1.0),
    "C": dict(start="llama", init=True, align=False, kd=False, tokens=1.0),
    "D": dict(start="llama", init=True, align=True, kd=True, tokens=1.0),
    "E": dict(start="llama", init=False, align=True, kd=True, tokens=1.0),
    "F": dict(start="llama", init=True, align=False, kd=True, tokens=1.0),
}
# the goals' comparisons first (D against A and B, for both cells), then the ablations
PLAN = [("gru", "A"), ("gru", "D"), ("gru", "B"), ("lstm", "A"), ("lstm", "D")]
PLAN += [("gru", arm) for arm in ("C", "F", "E", "A'")]


@dataclass(frozen=True)
class Run:
    cell: str
    arm: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.cell}_{self.arm.replace(chr(39), 'prime')}_seed{self.seed}"


def load_data(args):
    from pararnn_hf.data import PackedDataset, load_corpus, load_or_train_tokenizer, tokenize_documents

    corpus = load_corpus("builtin", 2.0)
    tokenizer = load_or_train_tokenizer(corpus, 4096)
    train_docs = tokenize_documents(tokenizer, corpus.train)
    held = tokenize_documents(tokenizer, corpus.validation)
    pad = tokenizer.pad_token_id
    data = {"train": PackedDataset(train_docs, args.seq_len)}
    for mult in (1, 2):
        ds = PackedDataset(held, args.seq_len * mult, pad_last=True, pad_id=pad)
        ds.keep_first(args.eval_sequences // mult)
        data[f"eval_{args.seq_len * mult}"] = ds
    return tokenizer, data


def trainer_args(args, folder: Path, lr: float, seed: int, steps: int, save_steps: int, data_seed: int = 0):
    """bench_quality's arguments (its recipe and logging) with the windows' order ``data_seed``
    and checkpoints every ``save_steps`` (runs may span sessions)."""
    targs = training_args(args, folder, lr, seed, steps)
    return dataclasses.replace(
        targs, data_seed=data_seed, save_strategy="steps", save_steps=save_steps, save_total_limit=2
    )


def newest_checkpoint(folder: Path) -> str | None:
    """The checkpoint a run killed midway resumes from (None: start afresh)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def steps_for(args, tokens: float) -> int:
    return max(1, math.ceil(tokens / (args.batch * args.seq_len)))


def evaluate(model, data, args, resets: bool) -> dict[str, float]:
    """Held-out loss at the training context and at twice it."""
    out = {}
    collator = default_data_collator if resets else collator_without_resets
    for key in (f"eval_{args.seq_len}", f"eval_{2 * args.seq_len}"):
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir="/tmp/unused", per_device_eval_batch_size=4, report_to="none", use_cpu=True
            ),
            eval_dataset=data[key],
            data_collator=collator,
        )
        out[key] = trainer.evaluate()["eval_loss"]
    return out


def train_teacher(args, data) -> Path:
    """The Llama teacher, trained (resumably) to ``args.teacher_tokens``; returns its folder."""
    folder, record = Path(args.out) / "teacher", Path(args.out) / "teacher.json"
    if record.is_file():
        if not (folder / "config.json").is_file():  # the records are in git, the model is not
            raise SystemExit(
                f"{record} is recorded but the teacher model {folder} is missing (a fresh clone?): the recorded "
                f"runs distilled that model. Move {record} and {Path(args.out) / 'runs'} aside to start over"
            )
        return folder
    torch.manual_seed(0)
    model = build("llama", "5m", 4 * args.seq_len)
    model.resize_token_embeddings(len(args.tokenizer))
    steps = steps_for(args, args.teacher_tokens)
    run_dir = Path(args.out) / "teacher_run"
    trainer = Trainer(
        model=model,
        args=trainer_args(args, run_dir, TEACHER_LR, 0, steps, save_steps=max(1, steps // 16)),
        train_dataset=data["train"],
        data_collator=collator_without_resets,
    )
    last = newest_checkpoint(run_dir)
    print(f"teacher: {steps} steps ({steps * args.batch * args.seq_len:,} tokens)"
          + (f", resuming {last}" if last else ""), flush=True)  # fmt: skip
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    model.config.pad_token_id = args.tokenizer.pad_token_id
    model.config.eos_token_id = args.tokenizer.eos_token_id
    model.save_pretrained(folder)
    args.tokenizer.save_pretrained(folder)
    losses = evaluate(model, data, args, resets=False)
    write_json(record, {
        "tokens": steps * args.batch * args.seq_len, "steps": steps, "lr": TEACHER_LR, **losses,
        "train_s_this_session": time.perf_counter() - start,
        "train_loss": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
        "command": "python benchmarks/bench_upcycle.py run" + (" --smoke" if args.smoke else ""),
        **environment(),
    }, indent=1)  # fmt: skip
    return folder


def student_run(run: Run, args, data, teacher_dir: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from pararnn_hf import ParaRNNForCausalLM
    from pararnn_hf.conversion.convert import llama_student
    from pararnn_hf.distill.attention_init import attention_init_
    from pararnn_hf.distill.teacher import Teacher
    from pararnn_hf.distill.trainer import UpcycleTrainer
    from pararnn_hf.presets import preset_config

    arm = ARMS[run.arm]
    tokens = args.student_tokens * arm["tokens"]
    steps = steps_for(args, tokens)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    torch.manual_seed(run.seed)
    if arm["start"] == "scratch":
        ids = dict(pad_token_id=args.tokenizer.pad_token_id, eos_token_id=args.tokenizer.eos_token_id)
        model = ParaRNNForCausalLM(preset_config("demo", run.cell, vocab_size=len(args.tokenizer), **ids))
        lr = SCRATCH_LR
    else:
        model = llama_student(teacher, run.cell, None, run.seed).float()
        if arm["init"]:
            attention_init_(model, teacher, max_timescale=float(args.seq_len))
        lr = UPCYCLE_LR
    folder = Path(args.out) / "scratch" / run.name
    # checkpoints every ~tenth of the run: a run killed with its session resumes, not restarts.
    # The seed also draws the windows' order: arms C, D and F start from the teacher alone (the
    # attention init is deterministic), so with one order their seeds would coincide
    targs = trainer_args(args, folder, lr, run.seed, steps, save_steps=max(1, steps // 10), data_seed=run.seed)
    if arm["kd"]:
        align_steps = round(ALIGN_SHARE * steps) if arm["align"] else 0
        trainer = UpcycleTrainer(model=model, args=targs, train_dataset=data["train"],
                                 data_collator=default_data_collator, teacher=Teacher(teacher),
                                 align_steps=align_steps)  # fmt: skip
    else:
        align_steps = 0
        trainer = Trainer(model=model, args=targs, train_dataset=data["train"], data_collator=default_data_collator)
    last = newest_checkpoint(folder)
    if last:
        print(f"{run.name}: resuming {last}", flush=True)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    seconds = time.perf_counter() - start
    losses = evaluate(model, data, args, resets=True)
    per_step = args.batch * args.seq_len
    return {
        "cell": run.cell, "arm": run.arm, "seed": run.seed, **arm, "lr": lr, "steps": steps,
        "align_steps": align_steps, "data_seed": run.seed, "student_tokens": steps * per_step, **losses,
        "train_loss": [[e["step"] * per_step, e["loss"]] for e in trainer.state.log_history if "loss" in e],
        "train_s_not_isolated": seconds, "resumed_from": last, **environment(),
    }  # fmt: skip


def cmd_run(args) -> None:
    args.tokenizer, data = load_data(args)
    teacher_dir = train_teacher(args, data)
    runs_dir = Path(args.out) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for seed in range(args.seeds):  # every arm once before any second seed: a cut-short run still compares
        for cell, arm in PLAN:
            run = Run(cell, arm, seed)
            path = runs_dir / f"{run.name}.json"
            if path.is_file():
                continue
            print(f"{run.name}: training", flush=True)
            record = student_run(run, args, data, teacher_dir)
            write_json(path, record, indent=1)
            print(f"{run.name}: loss {record[f'eval_{args.seq_len}']:.4f} at {args.seq_len}, "
                  f"{record[f'eval_{2 * args.seq_len}']:.4f} at {2 * args.seq_len}", flush=True)  # fmt: skip


def cmd_report(args) -> None:
    out = Path(args.out)
    teacher = json.loads((out / "teacher.json").read_text()) if (out / "teacher.json").is_file() else None
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    key, key2 = f"eval_{args.seq_len}", f"eval_{2 * args.seq_len}"
    table: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        table.setdefault((r["cell"], r["arm"]), []).append(r)

    def mean(rows, k):
        return sum(r[k] for r in rows) / len(rows)

    if teacher:
        print(f"teacher (Llama, {teacher['tokens']:,} tokens): {teacher[key]:.4f} at {args.seq_len}, "
              f"{teacher[key2]:.4f} at {2 * args.seq_len}\n")  # fmt: skip
    print(f"| cell | arm | seeds | loss @{args.seq_len} | loss @{2 * args.seq_len} | tokens |")
    print("|---|---|---|---|---|---|")
    for (cell, arm), rows in sorted(table.items()):
        seeds = " / ".join(f"{r[key]:.4f}" for r in rows)
        print(f"| {cell} | {arm} | {seeds} | {mean(rows, key):.4f} | {mean(rows, key2):.4f} | "
              f"{rows[0]['student_tokens']:,} |")  # fmt: skip
    for cell in ("gru", "lstm"):
        a, b, d = (table.get((cell, x)) for x in ("A", "B", "D"))
        if a and d:
            gap = (
                f", closes {(mean(a, key) - mean(d, key)) / (mean(a, key) - teacher[key]):.0%} of A-teacher"
                if teacher
                else ""
            )
            print(f"\n{cell}: D - A = {mean(d, key) - mean(a, key):+.4f} (goal <= -0.10)"
                  + (f", D - B = {mean(d, key) - mean(b, key):+.4f} (goal <= -0.05)" if b else "") + gap)  # fmt: skip
            loss = {(r["arm"], r["seed"]): r[key] for r in runs if r["cell"] == cell}
            for seed in sorted({r["seed"] for r in d}):
                if ("A", seed) in loss:
                    vs_b = f", D - B = {loss['D', seed] - loss['B', seed]:+.4f}" if ("B", seed) in loss else ""
                    print(f"  seed {seed}: D - A = {loss['D', seed] - loss['A', seed]:+.4f}{vs_b}")
    if args.plot and runs:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for (cell, arm), rows in sorted(table.items()):
            curve = rows[0]["train_loss"]
            ax.plot([t for t, _ in curve], [v for _, v in curve], label=f"{cell} {arm}")
        ax.set_xlabel("student tokens")
        ax.set_ylabel("training loss (seed 0; KD arms: their KD/align loss)")
        ax.legend(ncol=2, fontsize=8)
        fig.savefig(out / "loss_vs_tokens.png", dpi=120, bbox_inches="tight")
        print(f"\nwrote {out / 'loss_vs_tokens.png'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--out", default=str(HERE / "upcycle"))
    parser.add_argument("--teacher-tokens", type=float, default=16e6)
    parser.add_argument("--student-tokens", type=float, default=1.6e6)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--eval-sequences", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (seconds): checks the plumbing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.teacher_tokens, args.student_tokens, args.seeds = 4 * 4 * 32, 3 * 4 * 32, 1
        args.seq_len, args.batch, args.eval_sequences = 32, 4, 8
    {"run": cmd_run, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
