"""Freezing and fine-tuning: which parts of a Para-Former learn, and the two-phase recipe
(head first, then the body) that docs/method.md section 5, claim 4 fine-tunes with.

    freeze(model, "blocks")           # or "embed", "all-but-head", a list; unfreeze(model)
    train_head(model, train, val, TrainConfig(epochs=2))
    fine_tune(model, train, val, TrainConfig(epochs=10), head_epochs=2)   # head first

Both trainings are duat.training.fit. `model` may be a ParaFormer or a module holding one
(duat.transfer.ResizeInput, nn.Sequential): freezing reaches the ParaFormer inside.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable, Sequence

import torch.nn as nn

from duat.checks import whole
from duat.paraformer import ParaFormer
from duat.training.engine import TrainConfig, fit

FREEZE_PARTS = ("none", "embed", "blocks", "all-but-head")


# ----------------------------------------------------------------------------- freezing

def paraformer_in(model: nn.Module) -> ParaFormer:
    """The ParaFormer that `model` is or holds."""
    if isinstance(model, ParaFormer):
        return model
    for module in model.modules():          # e.g. inside ResizeInput or nn.Sequential
        if isinstance(module, ParaFormer):
            return module
    raise TypeError(f"expected a ParaFormer (or a module holding one), got {type(model).__name__}")


def part_of(name: str) -> str:
    """'embed', 'blocks', 'norm' or 'head': which part a ParaFormer parameter belongs to."""
    root = name.split(".")[0]
    if root in ("patch_embed", "cls_token", "pos_embed"):
        return "embed"
    if root == "stages":
        return "blocks"
    if root in ("norm", "head"):
        return root
    raise ValueError(f"{name!r} is not a ParaFormer parameter name")


def freeze(model: nn.Module, parts: str | Sequence[str] = "all-but-head") -> list[str]:
    """Stop gradients to `parts`: "embed" (patch embedding, class token, position
    embedding), "blocks" (every stage), "all-but-head" (all but the linear head), "none",
    or a list of these. Other parameters are left as they are. Returns the frozen names."""
    return _freeze(model, parts)


def _freeze(model: nn.Module, parts) -> list[str]:
    chosen = [parts] if isinstance(parts, str) else list(parts)
    bad = [p for p in chosen if p not in FREEZE_PARTS]
    if bad or not chosen:
        raise ValueError(f"freeze takes parts from {FREEZE_PARTS}, got {parts!r}")
    target = set()
    for p in chosen:
        target |= {"embed", "blocks", "norm"} if p == "all-but-head" else ({p} - {"none"})
    frozen = []
    for name, p in paraformer_in(model).named_parameters():
        if part_of(name) in target:
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def unfreeze(model: nn.Module) -> None:
    for p in paraformer_in(model).parameters():
        p.requires_grad_(True)


def frozen_parameters(model: nn.Module) -> list[str]:
    return [name for name, p in paraformer_in(model).named_parameters() if not p.requires_grad]



# ----------------------------------------------------------------------------- fine-tuning

def train_head(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None,
               config=None, *, progress: bool = False, callbacks=()):
    """Train only the linear head (everything else frozen, and left frozen) with
    duat.training.fit; no warm-up. Returns its FitResult."""
    config = config if config is not None else TrainConfig()
    unfreeze(model)
    _freeze(model, "all-but-head")
    return fit(model, train_loader, val_loader, replace(config, warmup_epochs=0.0),
               progress=progress, callbacks=callbacks)


def fine_tune(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None,
              config=None, *, head_epochs: int = 0, head_lr: float | None = None,
              freeze_parts: str | Sequence[str] | None = None, progress: bool = False,
              callbacks=()) -> dict:
    """Fine-tune with duat.training.fit, optionally head first.

    head_epochs > 0: first train only the head (everything else frozen) for that many
    epochs at head_lr (default config.lr, no warm-up); then unfreeze and train
    config.epochs epochs with `freeze_parts` (if any) kept frozen.
    Returns {"head": FitResult or None, "body": FitResult}.
    """
    config = config if config is not None else TrainConfig()
    whole("head_epochs", head_epochs, minimum=0)
    head = None
    if head_epochs:
        lr = head_lr or config.lr
        head = train_head(model, train_loader, val_loader,
                          replace(config, epochs=head_epochs, lr=lr, min_lr=min(config.min_lr, lr)),
                          progress=progress, callbacks=callbacks)
    unfreeze(model)
    if freeze_parts is not None:
        _freeze(model, freeze_parts)
    body = fit(model, train_loader, val_loader, config, progress=progress, callbacks=callbacks)
    return {"head": head, "body": body}


def steps_to_epochs(steps: int, batches_per_epoch: int) -> int:
    """Epochs needed for at least `steps` optimisation steps (at least one epoch)."""
    return max(1, math.ceil(steps / max(1, batches_per_epoch)))
