"""``Trainer`` additions: perplexity next to the evaluation loss, and a PNG of the loss curves
written next to the checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import Trainer, TrainerCallback

LOSS_PLOT = "loss_curves.png"


class ParaRNNTrainer(Trainer):
    """A ``Trainer`` that also reports ``eval_perplexity = exp(eval_loss)``."""

    def evaluate(self, *args, **kwargs) -> dict[str, float]:
        metrics = super().evaluate(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", "eval")
        loss = metrics.get(f"{prefix}_loss")
        if loss is not None:
            metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
            self.log({f"{prefix}_perplexity": metrics[f"{prefix}_perplexity"]})
        return metrics


def plot_loss_curves(log_history: list[dict], path: str | Path) -> Path | None:
    """Training and evaluation loss against the step; None when nothing was logged yet."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


class LossPlotCallback(TrainerCallback):
    """Rewrites ``output_dir/loss_curves.png`` (and ``log_history.json``) at every evaluation,
    checkpoint and at the end of training, on the main process."""

    def _write(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        plot_loss_curves(state.log_history, out / LOSS_PLOT)
        out.mkdir(parents=True, exist_ok=True)
        (out / "log_history.json").write_text(json.dumps(state.log_history, indent=1))

    def on_evaluate(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_save(self, args, state, control, **kwargs):
        self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(args, state)


class ShardingReportCallback(TrainerCallback):
    """Says on the main process, as training starts, how many parameter tensors FSDP sharded:
    FSDP2 turns them into DTensors in place, so the count shows the run really is sharded."""

    def __init__(self) -> None:
        self.sharded = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        params = list(model.parameters()) if model is not None else []
        self.sharded = sum(isinstance(p, DTensor) for p in params)
        if self.sharded and state.is_world_process_zero:
            print(
                f"pararnn-hf train: FSDP shards {self.sharded} of {len(params)} parameter tensors "
                f"over {args.world_size} processes",
                flush=True,
            )
