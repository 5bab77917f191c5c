"""A Para-Former's branches one by one: keep some, add some, and name the tensors that
hold them (what each branch does is duat.inside). docs/method.md section 7 (progressive approximation).

Every stage computes y = x + sum_i f_i(x). Because the branches only meet in that sum,
a model made of a subset of them is again a Para-Former, of smaller width:

    small = keep_branches(model, 2)                 # the first 2 branches of every stage
    small = keep_branches(model, [[3, 0], [1, 2]])  # chosen ones, per stage (same count)
    big = expand(model, 2)                          # 2 fresh branches after the old ones
    branch_rows(model, range(2))                    # (parameter, rows) holding branches 0, 1
    old_task_rows(big, branches=4, classes=range(5))  # all that computes y_4's logits 0..4

A kept or expanded model is an ordinary ParaFormer with its own config (width = the new
n), so it saves, loads, converts between the batched and reference stages, and trains
like any other. The stage type (batched or reference), device, dtype and mode are kept.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import replace
from typing import Sequence

import torch
import torch.nn as nn

from duat.paraformer import (STACKED, Block, ParaFormer, ParallelStage, ReferenceStage,
                             StagedModel, _block_from_config, _init_weights)

# the front end: patch (images) or token (language) and position embedding; a language
# model's head is its token embedding (tied), so freezing the front freezes the head too
FRONT = ("patch_embed", "cls_token", "pos_embed", "tok_embed")
_SHAPE_FIELDS = ("dim", "heads", "mlp_ratio", "norm_eps", "qkv_bias", "depth")


def _paraformer(model) -> ParaFormer:
    if not isinstance(model, ParaFormer):
        raise TypeError(f"expected a ParaFormer, got {type(model).__name__}")
    return model


def _staged(model) -> StagedModel:
    """An image or language Para-Former (both have stages of n branches)."""
    if not isinstance(model, StagedModel):
        raise TypeError(f"expected a ParaFormer or ParaFormerLM, got {type(model).__name__}")
    return model


def _keep_lists(keep, depth: int, n: int) -> list[list[int]]:
    """`keep` as one list of branch indices per stage, checked."""
    if isinstance(keep, int) and not isinstance(keep, bool):
        if not 1 <= keep <= n:
            raise ValueError(f"cannot keep {keep} branches per stage: each stage has n = {n} "
                             f"(keep 1..{n})")
        return [list(range(keep)) for _ in range(depth)]
    try:
        lists = [[int(i) for i in stage] for stage in keep]
    except TypeError:
        raise ValueError(f"keep must be a count k or one list of branch indices per stage, "
                         f"got {keep!r}") from None
    if len(lists) != depth:
        raise ValueError(f"keep has {len(lists)} list(s) of branches; the model has {depth} "
                         f"stage(s): give one list per stage")
    k = len(lists[0])
    for s, idx in enumerate(lists):
        if len(idx) != k or k < 1:
            raise ValueError(f"every stage must keep the same number (>= 1) of branches "
                             f"(a Para-Former has one width n), got {[len(i) for i in lists]}")
        if len(idx) > n:
            raise ValueError(f"cannot keep {len(idx)} branches of stage {s}: it has n = {n}")
        bad = [i for i in idx if not 0 <= i < n]
        if bad or len(set(idx)) != len(idx):
            raise ValueError(f"stage {s}: branch indices must be distinct, in 0..{n - 1}; got {idx}")
    return lists


def _blocks(model: ParaFormer) -> list[list[Block]]:
    """model.blocks() without touching the global RNG (a batched stage's Blocks are built
    anew, and a new Block draws its initial weights before they are overwritten)."""
    with torch.random.fork_rng(devices=[]):
        return model.blocks()


def _stage_from(like: nn.Module, blocks: list[Block]) -> nn.Module:
    return ParallelStage(blocks) if isinstance(like, ParallelStage) else ReferenceStage(blocks)


def _with_stages(model: ParaFormer, blocks: list[list[Block]]) -> ParaFormer:
    """A copy of `model` (front end, norm, head) whose stage s holds blocks[s]."""
    width = len(blocks[0])
    stages = model.stages
    model.stages = nn.ModuleList()          # not copied: replaced below
    try:
        new = copy.deepcopy(model)
    finally:
        model.stages = stages
    new.stages = nn.ModuleList(_stage_from(s, b) for s, b in zip(stages, blocks))
    new.config = replace(model.config, width=width)
    new.train(model.training)
    return new


def keep_branches(model: ParaFormer, keep: int | Sequence[Sequence[int]]) -> ParaFormer:
    """A new Para-Former-m-k of the chosen branches (copies; `model` is unchanged).

    keep: k, the first k branches of every stage (the prefix model y_k as a model of its
    own), or one list of branch indices per stage, all of the same length k, in the order
    the new model holds them.
    """
    pf = _paraformer(model)
    lists = _keep_lists(keep, pf.config.depth, pf.config.width)
    every = _blocks(pf)
    chosen = [[copy.deepcopy(every[s][i]) for i in idx] for s, idx in enumerate(lists)]
    return _with_stages(pf, chosen)


def expand(model: ParaFormer, extra: int | ParaFormer, seed: int | None = None) -> ParaFormer:
    """A new Para-Former-m-(n + e): the n old branches of every stage first, then e more.

    extra: e fresh branches, initialised as a new model's (with `seed`, if given, without
    touching the global RNG), or a ParaFormer of the same depth and token width whose
    branches are appended (copies).
    """
    pf = _paraformer(model)
    c = pf.config
    if isinstance(extra, ParaFormer):
        other = extra.config
        diff = [f"{f} {getattr(c, f)!r} here, {getattr(other, f)!r} in the added model"
                for f in _SHAPE_FIELDS if getattr(c, f) != getattr(other, f)]
        if diff:
            raise ValueError("cannot expand with branches of another shape (token width D, "
                             "heads, MLP width, depth m must match): " + "; ".join(diff))
        added = [[copy.deepcopy(b) for b in stage] for stage in _blocks(extra)]
    elif isinstance(extra, int) and not isinstance(extra, bool) and extra >= 1:
        # with a seed, a fork of the RNG (the global one untouched); without, the global RNG,
        # as when a new model is built
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            added = [[_block_from_config(c) for _ in range(extra)] for _ in range(c.depth)]
            for stage in added:
                for block in stage:
                    block.apply(_init_weights)
    else:
        raise ValueError(f"extra must be a number of branches >= 1 or a ParaFormer, got {extra!r}")
    p = next(pf.parameters())
    old = _blocks(pf)
    blocks = [[copy.deepcopy(b) for b in old[s]] + [b.to(p.device, p.dtype) for b in added[s]]
              for s in range(c.depth)]
    return _with_stages(pf, blocks)


def branch_rows(model: StagedModel, branches: Sequence[int]) -> list[tuple[nn.Parameter, object]]:
    """The (parameter, index) pairs that hold `branches` in every stage: for a batched stage
    each stacked tensor with the list of rows, for a reference stage each of those blocks'
    parameters whole (index Ellipsis). Freezing exactly these freezes those branches."""
    pf = _staged(model)
    branches = sorted(set(int(i) for i in branches))
    n = pf.config.width
    if any(not 0 <= i < n for i in branches):
        raise ValueError(f"branch indices must be in 0..{n - 1}, got {branches}")
    pairs: list[tuple[nn.Parameter, object]] = []
    if not branches:
        return pairs
    for stage in pf.stages:
        if isinstance(stage, ParallelStage):
            pairs += [(getattr(stage, name), branches) for name, _ in STACKED
                      if getattr(stage, name) is not None]
        else:
            pairs += [(p, ...) for i in branches for p in stage.blocks[i].parameters()]
    return pairs


def front_rows(model: StagedModel) -> list[tuple[nn.Parameter, object]]:
    """The (parameter, Ellipsis) pairs of the front end (patch embedding, class token,
    position embedding)."""
    return [(p, ...) for name, p in _staged(model).named_parameters()
            if name.split(".")[0] in FRONT]


def old_task_rows(model: ParaFormer, branches: int,
                  classes: Sequence[int]) -> list[tuple[nn.Parameter, object]]:
    """Everything the prefix y_k (k = `branches`) uses to compute the logits of `classes`:
    the first k branches of every stage, the front end, the final norm and those rows of the
    head. Held fixed (fit(..., freeze_rows=...)) while an expanded model learns a new task,
    they keep the old task's logits of y_k exactly as they were."""
    pf = _paraformer(model)
    rows = sorted(set(int(c) for c in classes))
    if not rows or any(not 0 <= c < pf.config.num_classes for c in rows):
        raise ValueError(f"classes must be head rows in 0..{pf.config.num_classes - 1}, got {rows}")
    pairs = branch_rows(pf, range(pf.check_branches(branches)))
    pairs += front_rows(pf) + [(p, ...) for p in pf.norm.parameters()]
    return pairs + [(pf.head.weight, rows), (pf.head.bias, rows)]
