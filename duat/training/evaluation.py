"""Scoring a model on a loader: the loss and accuracy at the scored positions, for images and
for tokens alike.

A batch is (x, y). An image model's logits are (B, K) against labels y (B); a language
model's are (B, T, V) against targets y (B, T), where y = IGNORE (duat.tasks: -100, the
ignore_index of F.cross_entropy) marks a position that is not scored. Both are the same sum
once the leading axes are flattened:

    loss_sum = sum over scored positions of -log softmax(logits)[target]
    correct  = number of scored positions where argmax(logits) = target
    count    = number of scored positions            (every label of an image batch)

`scored_sums` is that statement; `evaluate` adds it up over a loader (the sums stay on the
device, one copy at the end), `prefix_metrics` does so for every prefix model y_k of a
ParaFormer, and `predict` returns an image model's classes and logits.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from duat.tasks import IGNORE


def scored_sums(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0):
    """(loss_sum, correct, count) of logits (..., K) against targets y (...) over the positions
    where y != IGNORE, as 0-d tensors on the logits' device (no sync)."""
    loss_sum = F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(),
                               label_smoothing=label_smoothing, ignore_index=IGNORE, reduction="sum")
    return (loss_sum, *hits(logits, y))


def hits(logits: torch.Tensor, y: torch.Tensor):
    """(correct, count): the scored positions where argmax(logits) = y, and all of them."""
    flat, target = logits.flatten(0, -2), y.flatten()                             # (P, K), (P,)
    correct = (flat.argmax(1) == target).sum()           # IGNORE is never a class: not counted
    return correct, (target != IGNORE).sum()


def scored_loss(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The mean loss over the scored positions (what a training step minimises)."""
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten(),
                           label_smoothing=label_smoothing, ignore_index=IGNORE)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: str | torch.device | None = None):
    """(predicted classes, true labels, logits) of an image model over a loader, as CPU tensors."""
    device = device_of(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    labels, logits = [], []
    try:
        for x, y in loader:  # kept on the device: one copy to the CPU at the end, not a sync per batch
            logits.append(model(x.to(device)).float())
            labels.append(y)
    finally:
        model.train(was_training)
    logits = torch.cat(logits).cpu()
    return logits.argmax(1), torch.cat([y.cpu() for y in labels]), logits


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None, *,
             label_smoothing: float = 0.0, amp: bool = True,
             branches: int | None = None) -> dict[str, float]:
    """Mean loss, accuracy and throughput of `model` over `loader` at the scored positions
    (model left in its mode); `branches` = k scores a ParaFormer's prefix model y_k (the first
    k branches per stage). `samples` counts the scored positions (images, or target tokens)."""
    call = model if branches is None else (lambda x: model(x, branches=branches))
    device = device_of(model) if device is None else torch.device(device)
    use_amp, amp_dtype = amp_settings(device, amp)
    was_training = model.training
    model.eval()
    # Per-batch sums stay on the device; one copy at the end, added up in Python numbers in
    # batch order: the same numbers as reading every batch, without a sync per batch.
    sums = []
    t0 = time.perf_counter()
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = call(x)
            sums.append(scored_sums(logits, y, label_smoothing))
    finally:
        model.train(was_training)
    if not sums:
        raise ValueError("the evaluation loader yielded no examples")
    loss_sums, corrects, counts = zip(*sums)
    count = sum(torch.stack(counts).tolist(), 0)
    if count == 0:
        raise ValueError("the evaluation loader yielded no scored positions")
    loss_sum = sum(torch.stack(loss_sums).tolist(), 0.0)
    correct = sum(torch.stack(corrects).tolist(), 0)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / count, "accuracy": correct / count, "samples": count,
            "seconds": seconds, "samples_per_s": count / max(seconds, 1e-9)}


def prefix_metrics(model: nn.Module, loader: Iterable, *, label_smoothing: float = 0.0,
                   amp: bool = True) -> dict[str, float]:
    """prefix_loss_k and prefix_acc_k of a ParaFormer's prefix models y_k, k = 1..n."""
    out = {}
    for k in range(1, model.config.width + 1):
        r = evaluate(model, loader, label_smoothing=label_smoothing, amp=amp, branches=k)
        out[f"prefix_loss_{k}"], out[f"prefix_acc_{k}"] = r["loss"], r["accuracy"]
    return out


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def amp_settings(device: torch.device, amp: bool) -> tuple[bool, torch.dtype]:
    """(use autocast, its dtype): bf16 (else fp16) on CUDA when asked; never on CPU / MPS."""
    if not amp or device.type != "cuda":
        return False, torch.float32
    return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
