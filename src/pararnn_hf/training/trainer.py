"""``Trainer`` additions: perplexity next to the evaluation loss, checkpoints and the final
model written whole (docs/design.md#outputs), the parameter that turned NaN named, and a PNG
of the loss curves written next to the checkpoints."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ..model_files import is_model_file
from ..output_guard import updated_folder, write_text_atomically
from . import checkpoints

LOSS_PLOT = "loss_curves.png"


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that hold NaN or Inf (one reduction each; only after a failure)."""
    return [name for name, p in model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]


class ParaRNNTrainer(Trainer):
    """A ``Trainer`` that also reports ``eval_perplexity = exp(eval_loss)``, writes every
    checkpoint into a staging folder and renames it into place, saves the final model by
    swapping in a whole new version of the output folder, and names the parameter and step
    when training drives a parameter to NaN/Inf."""

    _staging_run_dir: str | None = None
    _owner_pid: int | None = None

    def __init__(self, *args, **kwargs) -> None:
        model = kwargs.get("model", args[0] if args else None)
        # Trainer sets config.use_cache to TrainingArguments.use_cache (False) for the run; the
        # folders it saves get the model's own value back, so a plain model(ids) there returns
        # its cache as any other saved model does
        self._use_cache = getattr(getattr(model, "config", None), "use_cache", True)
        super().__init__(*args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        return self._staging_run_dir or super()._get_output_dir(trial)

    def _main_pid(self) -> int:
        """The main process's pid, the same in every process (it names the staging folders)."""
        if self._owner_pid is None:
            pid = [os.getpid()]
            if self.args.world_size > 1:
                from accelerate.utils import broadcast_object_list

                broadcast_object_list(pid, from_process=0)
            self._owner_pid = int(pid[0])
        return self._owner_pid

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written by every process into ``.checkpoint-N.pararnn-new-*``
        (Trainer's own code, pointed there through ``_get_output_dir``), then renamed to
        ``checkpoint-N`` by the main process once all have written; rotation follows."""
        run_dir = Path(super()._get_output_dir(trial))
        step = self.state.global_step
        staging = checkpoints.staging_folder(run_dir, step, self._main_pid())
        if self.args.should_save:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging_run_dir = str(staging)
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation comes after the rename
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_run_dir = None
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = staging / f"{checkpoints.PREFIX}-{step}"
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging:  # Trainer named the staging path as the best one
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                self.state.save_to_json(str(staged / "trainer_state.json"))
            checkpoints.publish(staged, run_dir / staged.name)
            staging.rmdir()
            checkpoints.rotate(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A checkpoint's model goes into its staging folder as Trainer writes it; the final
        model replaces the output folder's model files in one swap (its checkpoints and logs
        carried over as hard links), so a crash leaves the old folder or the new one whole."""
        config = getattr(self.model, "config", None)
        during_training = getattr(config, "use_cache", None)
        if config is not None:
            config.use_cache = self._use_cache
        try:
            if _internal_call:
                return super().save_model(output_dir, _internal_call=True)
            target = output_dir or self.args.output_dir
            if self.args.should_save:
                with updated_folder(target, carry=lambda name: not is_model_file(name)) as tmp:
                    super().save_model(str(tmp))
            else:
                super().save_model(target)  # other processes only join the collectives; they write nothing
            self.accelerator.wait_for_everyone()
        finally:
            if config is not None:
                config.use_cache = during_training

    def training_step(self, model, *args, **kwargs):
        try:
            return super().training_step(model, *args, **kwargs)
        except FloatingPointError as err:
            bad = non_finite_parameters(model)
            if not bad:
                raise
            step = self.state.global_step
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise FloatingPointError(
                f"training step {step + 1}: parameter {bad[0]}{more} turned NaN/Inf in the update of step {step} "
                f"(the forward then failed: {err}); lower --learning_rate, or check --weight_decay and "
                "--max_grad_norm"
            ) from None

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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)  # then renamed: a crash mid-write leaves the previous plot whole
    plt.close(fig)
    os.replace(tmp, path)
    return path


class LossPlotCallback(TrainerCallback):
    """Rewrites ``output_dir/loss_curves.png`` (and ``log_history.json``) at every evaluation,
    checkpoint and at the end of training, on the main process."""

    def _write(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        out = Path(args.output_dir)
        plot_loss_curves(state.log_history, out / LOSS_PLOT)
        write_text_atomically(out / "log_history.json", json.dumps(state.log_history, indent=1))

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
