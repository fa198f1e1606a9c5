"""The distillation losses (docs/design.md#upcycling).

- ``alignment_loss``: stage 2, a mixer's output against the attention output it replaces,
  ``Σ‖s − t‖² / Σ‖t‖²`` over the real tokens (normalised by the attention output's energy, so
  that every layer counts the same whatever its scale).
- ``kd_loss``: stage 3, forward KL from the teacher's next-token distribution to the
  student's at a temperature (times T², so that gradients keep their size as T changes),
  plus ``ce_weight`` times the cross-entropy on the labels. Computed from the final hidden
  states chunk by chunk over the positions, each chunk's logits recomputed in the backward
  (activation checkpointing), so memory holds ``chunk × vocab`` logits, not ``tokens × vocab``:
  what makes 32k–150k vocabularies fit. ``kd_loss_reference`` is the same loss on whole
  logits, the slow obvious version the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
DEFAULT_CHUNK = 1024  # positions per chunk: 1024 x 128k vocab x 4 B = 0.5 GB of logits at most


def alignment_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """``Σ‖student − teacher‖² / Σ‖teacher‖²`` over positions (``mask`` [B, T]: True = real)."""
    if student.shape != teacher.shape:
        raise ValueError(f"alignment_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ")
    err = (student.float() - teacher.float()).pow(2).sum(-1)
    energy = teacher.float().pow(2).sum(-1)
    if mask is not None:
        err, energy = err[mask], energy[mask]
    return err.sum() / energy.sum().clamp_min(torch.finfo(torch.float32).tiny)


def _targets(labels: Tensor) -> Tensor:
    """Next-token targets aligned with the positions that predict them: position t predicts
    label t + 1 (the last position predicts nothing)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def _chunk_terms(
    s_hidden: Tensor,
    t_values: Tensor,
    t_index: Tensor | None,
    head_weight: Tensor,
    targets: Tensor,
    temperature: float,
) -> tuple[Tensor, Tensor]:
    """(Σ KL·T², Σ CE) over one chunk of positions. ``t_index`` None: ``t_values`` are whole
    logits [n, V]; else the teacher's top-k logits [n, k] at vocabulary ids ``t_index``, its
    distribution taken over those k (renormalised) and the student's read at the same ids."""
    s_logits = F.linear(s_hidden, head_weight).float()
    t_logp = F.log_softmax(t_values.float() / temperature, dim=-1)
    s_logp = F.log_softmax(s_logits / temperature, dim=-1)
    if t_index is not None:
        s_logp = s_logp.gather(-1, t_index.long())
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).sum() * temperature**2
    ce = F.cross_entropy(s_logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return kl, ce


def kd_loss(
    student_hidden: Tensor,
    student_head: Tensor,
    teacher_logits_of,
    labels: Tensor,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor:
    """Mean over the predicting positions of ``KL(teacher_T ‖ student_T)·T² + ce_weight·CE``.

    ``student_hidden`` [B, T, d]: the student's final (normed) hidden states; ``student_head``
    [V, d]: its output embedding; ``teacher_logits_of(index)``: the teacher's logits [n, V] at
    the flat positions ``index``, or its top-k as ``(values [n, k], vocabulary ids [n, k])``
    (computed on the fly from its hidden states, or read from a cache); ``labels`` [B, T] as
    for the causal LM loss (−100: no target; position t is trained to predict label t + 1)."""
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    targets = _targets(labels).reshape(-1)
    index = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
    count = index.numel()
    if count == 0:
        return student_hidden.sum() * 0.0  # in the graph, no positions to learn from
    flat = student_hidden.reshape(-1, student_hidden.shape[-1])
    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        rows = index[start : start + chunk]
        with torch.no_grad():
            teacher = teacher_logits_of(rows)
        t_values, t_index = teacher if isinstance(teacher, tuple) else (teacher, None)
        h = flat[rows]
        args = (h, t_values, t_index, student_head, targets[rows], temperature)
        if torch.is_grad_enabled() and h.requires_grad:
            kl, ce = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            kl, ce = _chunk_terms(*args)
        total = total + kl + ce_weight * ce
    return total / count


def top_k_logits(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest logits and their vocabulary ids (what a teacher cache keeps)."""
    values, index = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return values, index


def kd_loss_reference(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    temperature: float = 1.0,
    ce_weight: float = 0.0,
    top_k: int = 0,
) -> Tensor:
    """``kd_loss`` on whole logits [B, T, V]: the obvious version (``top_k`` > 0: the teacher's
    distribution over its top k ids, renormalised, against the student's at those ids)."""
    targets = _targets(labels)
    keep = targets != IGNORE_INDEX
    t_logp = F.log_softmax(teacher_logits.double() / temperature, dim=-1)
    s_logp = F.log_softmax(student_logits.double() / temperature, dim=-1)
    if top_k:
        index = teacher_logits.topk(top_k, dim=-1).indices
        t_logp = F.log_softmax(teacher_logits.double().gather(-1, index) / temperature, dim=-1)
        s_logp = s_logp.gather(-1, index)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)[keep].mean() * temperature**2
    ce = F.cross_entropy(student_logits.double()[keep], targets[keep])
    return kl + ce_weight * ce
