"""Compressing a trained Para-Former by keeping its best branches (docs/method.md section 7).

A stage is y = x + sum_i f_i(x), so dropping a branch removes one term of the sum and
leaves a smaller Para-Former. Which branches to keep is a question of scoring them:

    loo    leave-one-out: how much the loss on `loader` rises without the branch (the
           branch's output projections zeroed for the moment: duat.branches.branch_removed)
    norm   the root-mean-square size of the branch's update |f_i(x)| on a batch of images
    first  the order they were trained in: keep the first k (the prefix model y_k)

    scores = score_branches(model, val_loader, "loo")      # (m, n), higher = keep
    small = compress(model, 2, scores)                      # Para-Former-m-2
    fine_tune(small, train_loader, val_loader, TrainConfig(epochs=1))   # optional

Score on held-out data that is not the test set (the kit's experiments use the
validation split), so that choosing the branches does not peek at the test score.
"""
from __future__ import annotations

from typing import Iterable

import torch

from duat.branches import branch_removed, keep_branches, update_norms
from duat.checks import one_of, whole
from duat.paraformer import ParaFormer
from duat.training.engine import evaluate

SCORES = ("loo", "norm", "first")


def score_branches(model: ParaFormer, loader: Iterable, method: str = "loo",
                   images: int = 256) -> torch.Tensor:
    """(m, n) scores of every branch of every stage; a higher score means more worth keeping.

    loo: loss without the branch minus the loss with all (over `loader`, in eval mode).
    norm: RMS of f_i over the first `images` images of `loader`. first: n - i.
    """
    method = one_of("method", method, SCORES)
    if not isinstance(model, ParaFormer):
        raise TypeError(f"expected a ParaFormer, got {type(model).__name__}")
    m, n = model.config.depth, model.config.width
    if method == "first":
        return torch.arange(n, 0, -1, dtype=torch.float64).repeat(m, 1)
    if method == "norm":
        images = whole("images", images)
        device = next(model.parameters()).device
        xs, seen = [], 0
        for x, _ in loader:
            xs.append(x)
            seen += len(x)
            if seen >= images:
                break
        if not xs:
            raise ValueError("the loader yielded no images to score the branches on")
        x = torch.cat(xs)[:images].to(device)
        return update_norms(model, x).double().cpu()
    base = evaluate(model, loader)["loss"]
    scores = torch.zeros(m, n, dtype=torch.float64)
    for s in range(m):
        for i in range(n):
            with branch_removed(model, s, i):
                scores[s, i] = evaluate(model, loader)["loss"] - base
    return scores


def best_branches(scores: torch.Tensor, k: int) -> list[list[int]]:
    """The k best-scoring branches of every stage, in their original order (ties: the
    earlier branch)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError("scores must be an (m, n) tensor, as score_branches returns")
    n = scores.shape[1]
    k = whole("k", k)
    if k > n:
        raise ValueError(f"cannot keep {k} branches per stage: the scores have n = {n}")
    out = []
    for row in scores:
        order = sorted(range(n), key=lambda i: (-float(row[i]), i))[:k]
        out.append(sorted(order))
    return out


def compress(model: ParaFormer, k: int, scores: torch.Tensor) -> ParaFormer:
    """A new Para-Former-m-k of the k best branches of every stage (`model` unchanged)."""
    m, n = model.config.depth, model.config.width
    if tuple(scores.shape) != (m, n):
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not fit a model with "
                         f"m = {m} stages of n = {n} branches")
    return keep_branches(model, best_branches(scores, k))
