"""Training with transformers' Trainer: packed data with resets, loss plots, the demo."""

from .run import DataArguments, ModelArguments, run_training
from .trainer import LossPlotCallback, ParaRNNTrainer, plot_loss_curves

__all__ = ["DataArguments", "LossPlotCallback", "ModelArguments", "ParaRNNTrainer", "plot_loss_curves", "run_training"]
