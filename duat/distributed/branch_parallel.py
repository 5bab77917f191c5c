"""Branch parallelism: the n branches of every stage spread over the ranks of a group.

A stage computes y = x + sum_{i=1..n} f_i(x). The sum splits over ranks: rank r holds the
branches I_r (a contiguous block, or every world-th one) and computes its partial sum;
one sum all-reduce gives every rank the whole y:

    y = x + allreduce_sum( sum_{i in I_r} f_i(x) )          # the same (B, T, D) on every rank

The backward pass is the conjugate pair Megatron-LM calls f and g:

    copy_to_ranks(x)   forward: x as it is       backward: all-reduce (sum) the gradient
    sum_over_ranks(p)  forward: all-reduce (sum)  backward: the gradient as it is

Every rank ends with the same loss and so the full dL/dy; the input gradient needs the
sum over ranks (each rank's branches saw x), the output gradient must not be summed again
(torch.distributed.nn.functional.all_reduce would: it sums in backward too, and every
rank's gradient would come out world times too large).

The front end (patch embedding, class token, positions), the final norm and the head are
replicated; their gradients are the single-process ones on every rank, since every rank
computes the same loss from the same logits. `gather_state_dict` assembles the ordinary
single-process state dict (collective: every rank calls it); `save_checkpoint` writes it
from rank 0 as a normal checkpoint, and `load_split` reads one and splits it.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from duat.paraformer import ParaFormer, ParaFormerConfig, ParallelStage
from duat.storage import CHECKPOINT_FORMAT, atomic_torch_save, load_tensors

SPLITS = ("contiguous", "strided")


# ----------------------------------------------------------------------------- f and g

class _CopyToRanks(torch.autograd.Function):
    """Megatron's f: identity forward, sum all-reduce of the gradient in backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _SumOverRanks(torch.autograd.Function):
    """Megatron's g: sum all-reduce forward, identity backward."""

    @staticmethod
    def forward(ctx, part, group):
        out = part.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_ranks(x: torch.Tensor, group=None) -> torch.Tensor:
    """x itself; in backward, the sum over ranks of x's gradient."""
    return _CopyToRanks.apply(x, group)


def sum_over_ranks(part: torch.Tensor, group=None) -> torch.Tensor:
    """The sum over ranks of `part`; in backward, the gradient passes unchanged."""
    return _SumOverRanks.apply(part, group)


# ----------------------------------------------------------------------------- the split

def split_branches(n: int, world: int, split: str = "contiguous") -> list[list[int]]:
    """The branch ids of every rank: [[ids of rank 0], [ids of rank 1], ...].

    contiguous: rank r takes n / world branches in a block (world must divide n);
    strided: rank r takes r, r + world, r + 2 world, ... (any world <= n).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"the world size must be an int >= 1, got {world!r}")
    if world > n:
        raise ValueError(f"{world} processes for n = {n} branches per stage: every process needs "
                         f"at least one branch. Use at most {n} processes "
                         f"(torchrun --nproc-per-node {n}), or a wider model")
    if split == "contiguous":
        if n % world:
            works = [w for w in range(1, n + 1) if n % w == 0]
            raise ValueError(f"n = {n} branches do not split evenly over {world} processes in "
                             f"contiguous blocks: use split='strided' (rank r takes branches "
                             f"r, r + {world}, ...), or a world size that divides {n}: "
                             f"{', '.join(map(str, works))}")
        size = n // world
        return [list(range(r * size, (r + 1) * size)) for r in range(world)]
    return [list(range(r, n, world)) for r in range(world)]


class BranchParallelStage(nn.Module):
    """One rank's share of a stage: its branches (a ParallelStage) and the all-reduce."""

    def __init__(self, blocks, ids: list[int], width: int, group=None):
        super().__init__()
        self.local = ParallelStage([blocks[i] for i in ids])
        self.ids, self.n, self.group = list(ids), width, group

    @property
    def width(self) -> int:  # the whole stage's n, as for the single-process stage
        return self.n

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """x + sum_{i < k} f_i(x) over every rank's branches (k = `branches`, default n)."""
        k = self.n if branches is None else branches
        own = sum(i < k for i in self.ids)    # ids ascend: the rank's share of the prefix
        xin = copy_to_ranks(x, self.group)    # (B, T, D)
        part = self.local.update(xin, own) if own else xin * 0.0  # no branch of the prefix here
        return x + sum_over_ranks(part, self.group)               # (B, T, D)


def branch_parallel(model: ParaFormer, group=None, split: str = "contiguous") -> ParaFormer:
    """Keep only this rank's share of every stage's branches (in place; returns `model`).

    Call it on every rank of `group` (default: the whole world) after joining the process
    group (duat.distributed.setup under torchrun). Rank 0's weights are broadcast first,
    so the ranks agree whatever each built or loaded. The forward pass then gives the
    single-process logits on every rank, and backward the single-process gradients.
    """
    if not isinstance(model, ParaFormer):
        raise TypeError(f"branch_parallel takes a ParaFormer, got {type(model).__name__}")
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("no process group: start under torchrun and call "
                         "duat.distributed.setup() first")
    if any(isinstance(s, BranchParallelStage) for s in model.stages):
        raise ValueError("this model is split already")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    plan = split_branches(model.config.width, world, split)
    src = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=src, group=group)
    stages = []
    for stage in model.stages:
        blocks = stage.to_reference().blocks if isinstance(stage, ParallelStage) else stage.blocks
        stages.append(BranchParallelStage(blocks, plan[rank], model.config.width, group)
                      .train(stage.training))
    model.stages = nn.ModuleList(stages)
    model.branch_split = {"split": split, "world": world, "rank": rank, "ids": plan[rank]}
    return model


# ----------------------------------------------------------------------------- save, load

def gather_state_dict(model: ParaFormer) -> dict[str, torch.Tensor]:
    """The single-process state dict of a split model (every rank calls it; every rank
    gets it): each stage's stacked tensors reassembled from all ranks, on the CPU."""
    split = getattr(model, "branch_split", None)
    if split is None:
        raise ValueError("this model is not split: use model.state_dict()")
    world = split["world"]
    out = {}
    for name, t in model.state_dict().items():
        if ".local." not in name:
            out[name] = t.detach().cpu().clone()
    for s, stage in enumerate(model.stages):
        plan = split_branches(stage.n, world, split["split"])
        most = math.ceil(stage.n / world)
        for pname, t in stage.local.named_parameters():
            buf = torch.zeros((most, *t.shape[1:]), dtype=t.dtype, device=t.device)
            buf[:t.shape[0]] = t.detach()
            bufs = [torch.empty_like(buf) for _ in range(world)]
            dist.all_gather(bufs, buf, group=stage.group)
            full = torch.empty((stage.n, *t.shape[1:]), dtype=t.dtype)
            for r, ids in enumerate(plan):
                full[ids] = bufs[r][:len(ids)].cpu()
            out[f"stages.{s}.{pname}"] = full
    return out


def save_checkpoint(model: ParaFormer, path: str | Path, *, model_name: str | None = None,
                    extra: dict | None = None) -> Path | None:
    """Gather the split model and write an ordinary single-process checkpoint from rank 0
    (atomically: temporary file and rename). Every rank calls it; rank 0 gets the path."""
    state = gather_state_dict(model)
    group = model.stages[0].group
    if dist.get_rank(group) != 0:
        return None
    config = asdict(model.config)
    config["stage"] = "batched"
    return atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "model_name": model_name, "model_class": "ParaFormer",
        "model_config": config, "model_state": state, "optimizer_state": None,
        "scaler_state": None, "epoch": 0, "step": 0, "history": [], "rng": None,
        "extra": {**(extra or {}), "written_by": "duat.distributed.save_checkpoint"},
    }, path)


def load_split(path: str | Path, group=None, split: str = "contiguous") -> ParaFormer:
    """Read a single-process checkpoint (from `duat train`, fit or save_checkpoint) and keep
    this rank's share of it: every rank calls it with the same file."""
    state = load_tensors(path, "duat checkpoint (a file written by `duat train` or "
                               "duat.distributed.save_checkpoint)")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT \
            or not isinstance(state.get("model_config"), dict):
        raise ValueError(f"{path} is not a duat checkpoint of a Para-Former "
                         f"(expected format {CHECKPOINT_FORMAT!r} with a model_config)")
    model = ParaFormer(ParaFormerConfig(**state["model_config"]))  # either stage kind
    model.load_state_dict(state["model_state"])
    return branch_parallel(model.eval(), group, split)


def local_parameters(model: nn.Module) -> int:
    """The parameters this rank holds."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["BranchParallelStage", "SPLITS", "branch_parallel", "copy_to_ranks",
           "gather_state_dict", "load_split", "local_parameters", "save_checkpoint",
           "split_branches", "sum_over_ranks"]
