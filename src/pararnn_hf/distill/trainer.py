"""``UpcycleTrainer``: stage 2 (layer alignment) then stage 3 (distillation) in one ``Trainer``
run, so that checkpoints, resume, logging and DDP are Trainer's own (docs/design.md#upcycling).

The stage is a function of the optimizer step: steps ``[0, align_steps)`` align, the rest
distil. A run resumed from a checkpoint therefore continues the stage it was in. Evaluation is
the student's own causal-LM loss on held-out text, in either stage.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from ..training.trainer import ParaRNNTrainer
from .losses import DEFAULT_CHUNK, alignment_loss, kd_loss, top_k_logits
from .teacher import Teacher
from .teacher_cache import TeacherLogitsCache

ALIGN, KD = "align", "kd"


class UpcycleTrainer(ParaRNNTrainer):
    def __init__(
        self,
        *args,
        teacher: Teacher,
        align_steps: int,
        temperature: float = 1.0,
        ce_weight: float = 0.0,
        kd_chunk: int = DEFAULT_CHUNK,
        top_k: int = 0,
        cache: TeacherLogitsCache | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(_AlignmentTouchesOnlyMixers(self))
        self.teacher = teacher.to(self.args.device)
        self.align_steps = align_steps
        self.temperature, self.ce_weight, self.kd_chunk = temperature, ce_weight, kd_chunk
        self.top_k = cache.top_k if cache is not None else top_k
        self.cache = cache
        self._stage_sums: dict[str, list[float]] = {ALIGN: [0.0, 0], KD: [0.0, 0]}

    def stage(self) -> str:
        return ALIGN if self.state.global_step < self.align_steps else KD

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the student's causal-LM loss
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # the teacher attends across the packed documents (it takes no resets): the student
        # sees the same stream, so that both predict from the same context
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        stage = self.stage()
        if stage == ALIGN:
            loss = self._align_loss(model, ids, mask)
        else:
            loss = self._kd_loss(model, ids, mask, inputs["labels"])
        sums = self._stage_sums[stage]
        sums[0] += float(loss.detach())
        sums[1] += 1
        return (loss, None) if return_outputs else loss

    def _student(self, model):
        """The ParaRNNForCausalLM under the DDP and PEFT wrappers."""
        student = self.accelerator.unwrap_model(model)
        return student.get_base_model() if hasattr(student, "get_base_model") else student

    def _align_loss(self, model, ids, mask):
        student = self._student(model)
        inputs, targets = self.teacher.layer_io(ids, mask)
        outputs: dict[int, torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(student.model.layers):

            def feed(module, args, i=i):  # each mixer reads the teacher's input to its layer
                return (inputs[i].to(args[0].dtype),) + tuple(args[1:])

            def take(module, args, out, i=i):
                scale = getattr(module, "residual_scale", None)  # PEFT wraps the mixer; it forwards the name
                residual = args[0] if scale is None else args[0] * scale
                outputs[i] = out[0] - residual

            hooks += [layer.mixer.register_forward_pre_hook(feed), layer.mixer.register_forward_hook(take)]
        try:  # through the (possibly DDP-wrapped) model, so that its gradient hooks run
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        finally:
            for hook in hooks:
                hook.remove()
        real = None if mask is None else mask.bool()
        loss = torch.stack([alignment_loss(outputs[i], targets[i], real) for i in range(len(targets))]).mean()
        if self.args.world_size > 1:
            # DDP reduces a gradient for every trainable parameter each step: the ones alignment
            # does not reach get an exact zero (dropped again before the optimizer step, so that
            # weight decay leaves them alone)
            loss = loss + 0.0 * sum(p.sum() for p in self._idle_in_alignment(student))
        return loss

    @staticmethod
    def _idle_in_alignment(student) -> list[torch.nn.Parameter]:
        return [p for name, p in student.named_parameters() if p.requires_grad and ".mixer." not in name]

    def _kd_loss(self, model, ids, mask, labels):
        student = self._student(model)
        captured: dict[str, torch.Tensor] = {}
        hook = student.model.register_forward_hook(
            lambda module, args, out: captured.__setitem__(
                "h", out[0] if isinstance(out, tuple) else out.last_hidden_state
            )
        )
        try:
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        finally:
            hook.remove()
        return kd_loss(
            captured["h"],
            student.lm_head.weight,
            self._teacher_logits(ids, mask),
            labels,
            self.temperature,
            self.ce_weight,
            self.kd_chunk,
        )

    def _teacher_logits(self, ids, mask):
        """``teacher_logits_of(rows)`` for ``kd_loss``: whole logits on the fly, or the top k
        (from the cache when it holds every window of the batch, else computed and stored)."""
        if self.cache is not None:
            found = self.cache.get(ids, mask)
            if found is not None:
                values, index = (t.reshape(-1, t.shape[-1]) for t in found)
                return lambda rows: (values[rows], index[rows])
        hidden = self.teacher.final_hidden(ids, mask)
        if not self.top_k:
            return lambda rows: self.teacher.logits_at(hidden, rows)
        every = torch.arange(ids.numel(), device=ids.device)
        parts = [top_k_logits(self.teacher.logits_at(hidden, every[s : s + self.kd_chunk]), self.top_k)
                 for s in range(0, ids.numel(), self.kd_chunk)]  # fmt: skip
        values, index = torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])
        if self.cache is not None:
            shape = (*ids.shape, values.shape[-1])
            self.cache.put(ids, mask, values.view(shape), index.view(shape))
        return lambda rows: (values[rows], index[rows])

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Trainer's log, with each stage's mean training loss since the last log."""
        for stage, sums in self._stage_sums.items():
            if sums[1]:
                logs[f"{stage}_loss"] = round(sums[0] / sums[1], 4)
            sums[0], sums[1] = 0.0, 0
        super().log(logs, *args, **kwargs)


class _AlignmentTouchesOnlyMixers(TrainerCallback):
    """During alignment, the parameters outside the mixers have no gradient at the optimizer
    step (under DDP they carry an all-reduced zero): AdamW then leaves them as they are,
    weight decay included."""

    def __init__(self, trainer: UpcycleTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.stage() == ALIGN:
            for p in self.trainer._idle_in_alignment(self.trainer._student(self.trainer.model)):
                p.grad = None
