"""Training schedules for Para-Former's branches (docs/method.md section 7), and freezing
some rows of a stacked weight exactly.

    joint        every batch: one step on the whole model (the usual training)
    progressive  every epoch two passes over the data: on every batch, for k = 1..n, one
                 step on the loss of the prefix model y_k (the first k branches of every
                 stage), all parameters trained; then one step per batch on the whole
                 model. This is the authors' public training script as we read it (their
                 commit cb830b6; they clip the gradient in the first pass only, we in both,
                 and they train at a constant learning rate)
    branchwise   n phases; phase k trains branch k of every stage (with the final norm and
                 the head) on the prefix model y_k, the other branches and (after phase 1)
                 the front end held fixed: each new branch learns what the earlier ones
                 leave, and the later ones wait at their initial weights

duat.training.fit(model, ..., schedule="progressive") runs one; the epochs are split over
the phases of branchwise (epochs >= n), and the learning-rate warm-up and cosine decay run
once per phase. Every epoch's record then holds the loss and accuracy of every prefix k.

A batched stage keeps all n branches in one stacked tensor, so "branch 0 frozen" means
"rows 0 of these tensors frozen": FrozenRows zeroes their gradients before clipping (so
the clipped norm is that of the trained parameters) and copies the saved rows back after
every optimiser step (so no weight decay or momentum moves them), bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from duat.surgery import branch_rows, front_rows
from duat.checks import one_of
from duat.paraformer import StagedModel

SCHEDULES = ("joint", "progressive", "branchwise")


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch of a schedule does."""

    passes: tuple              # passes over the data; each: the prefix widths k stepped on, in
                               # order, on every batch (None: the whole model)
    phase: int                 # 1-based phase (branchwise: the branch trained; else 1)
    start: int                 # the phase's first epoch (0-based) ...
    stop: int                  # ... and one past its last: the LR schedule runs over these
    frozen_branches: tuple = () # these branches of every stage are held fixed
    freeze_front: bool = False # the patch embedding, class token and position embedding too


@dataclass(frozen=True)
class Schedule:
    name: str = "joint"

    def __post_init__(self):
        one_of("schedule", self.name, SCHEDULES)

    def check(self, epochs: int, n: int) -> None:
        if self.name == "branchwise" and epochs < n:
            raise ValueError(f"the branchwise schedule trains one branch per phase: it needs "
                             f"epochs >= n = {n}, got epochs = {epochs}")

    def phases(self, epochs: int, n: int) -> list[tuple[int, int]]:
        """[(start, stop)] epochs of each phase: one for joint and progressive; n for
        branchwise, the epochs shared out as evenly as they go (earlier phases get one more)."""
        if self.name != "branchwise":
            return [(0, epochs)]
        out, start = [], 0
        for p in range(n):
            length = epochs // n + (p < epochs % n)
            out.append((start, start + length))
            start += length
        return out

    def plan(self, epoch: int, epochs: int, n: int) -> EpochPlan:
        if self.name == "joint":
            return EpochPlan(((None,),), 1, 0, epochs)
        if self.name == "progressive":
            return EpochPlan((tuple(range(1, n + 1)), (None,)), 1, 0, epochs)
        for p, (start, stop) in enumerate(self.phases(epochs, n), 1):
            if start <= epoch < stop:
                others = tuple(i for i in range(n) if i != p - 1)
                return EpochPlan(((p,),), p, start, stop, frozen_branches=others, freeze_front=p > 1)
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")


def resolve_schedule(schedule, model: nn.Module, epochs: int) -> Schedule | None:
    """`schedule` (None, a name or a Schedule) checked against the model and epochs."""
    if schedule is None:
        return None
    schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule)
    if not isinstance(model, StagedModel):
        raise TypeError(f"a training schedule needs a ParaFormer or ParaFormerLM (it calls "
                        f"model(x, branches=k)), got {type(model).__name__}")
    schedule.check(epochs, model.config.width)
    return schedule


class FrozenRows:
    """Parameters, or some rows of them, held exactly at their present values while training.

    pairs: (parameter, index): index Ellipsis for the whole tensor, or rows (a list) of it.
    Call mask_grads() after backward (before clipping) and restore() after the step."""

    def __init__(self, pairs: Sequence[tuple[nn.Parameter, object]] = ()):
        self.pairs = [(p, idx, p.detach()[idx].clone()) for p, idx in pairs]

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def mask_grads(self) -> None:
        for p, idx, _ in self.pairs:
            if p.grad is not None:
                p.grad[idx] = 0

    @torch.no_grad()
    def restore(self) -> None:
        for p, idx, saved in self.pairs:
            p[idx] = saved


def frozen_pairs(model: StagedModel, plan: EpochPlan) -> list[tuple[nn.Parameter, object]]:
    """The (parameter, index) pairs an epoch of `plan` freezes."""
    pairs = branch_rows(model, plan.frozen_branches)
    if plan.freeze_front:
        pairs += front_rows(model)
    return pairs
