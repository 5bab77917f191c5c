"""Inside a Para-Former: what each parallel branch does (docs/method.md sections 3 and 4).

A stage of Para-Former-m-n computes y = x + sum_i f_i(x) from one input x. This module
takes such a sum apart, for a batch of images:

    stage_stream(model, images)     the residual stream x_0 .. x_m, each (B, T, D)
    branch_updates(model, images)   per stage, every branch's update f_i(x_{s-1}): (n, B, T, D)
    update_norms(model, images)     per stage, |f_i(x)| per example (n, B), optionally over |x|
    branch_cosine(model, images)    per stage, cos(f_i(x), f_j(x)) averaged over examples (n, n)
    attention_maps(model, images)   per stage, softmax(Q K^T / sqrt(d)) of every branch and
                                    head: (n, B, heads, T, T), rows summing to 1
    without_branch(model, s, i)     a copy of the model with f_i left out of stage s's sum
    leave_one_out(model, loader)    test accuracy (training.evaluate) of the full model and of
                                    every such copy
    unroll_paraformer(model, x0)    the DUAT terms of section 3, one per (stage, branch)
    dynamic_spread(model, images)   duat.theory.unroll.parameter_spread of those terms

and, for compression (docs/method.md section 7: a model of some branches is a smaller
Para-Former, duat.surgery.keep_branches), which branches are worth keeping:

    score_branches(model, val_loader, "loo")   (m, n) scores, higher = keep: the loss rise
                                    without the branch ("loo"), |f_i(x)| ("norm"), or the
                                    training order ("first": the prefix model y_k)
    compress(model, k, scores)      a new Para-Former-m-k of the k best branches per stage

Score on held-out data that is not the test set (the experiments use the validation
split), so that choosing the branches does not peek at the test score.

Every function works in eval mode (the model's own mode is restored afterwards) and without
gradients. The per-branch updates come from the stage's own `branch_updates`, the attention
maps and DUAT terms from duat.theory (mvm and unroll): nothing here recomputes a layer its
own way.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterable, Iterator

import torch

from duat.surgery import keep_branches
from duat.checks import one_of, whole
from duat.language import ParaFormerLM
from duat.paraformer import ParaFormer, ParallelStage, ReferenceStage
from duat.runtime import threads
from duat.theory.mvm import kit_attention_maps
from duat.theory.unroll import Unrolled, parameter_spread, transformer_term
from duat.training.engine import evaluate

# the tensors of a branch whose zeroing makes f_i = a_i + MLP_i(...) exactly 0:
# the attention's output projection (a_i = 0) and the MLP's second layer (MLP_i = 0)
_OUTPUT_PATHS = ("attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")
_OUTPUT_STACKED = ("proj_weight", "proj_bias", "fc2_weight", "fc2_bias")


# ----------------------------------------------------------------------------- checks

def _check_model(model) -> ParaFormer:
    if not isinstance(model, (ParaFormer, ParaFormerLM)):
        raise TypeError(f"expected a duat.paraformer.ParaFormer (e.g. duat.registry.create_model"
                        f"('pf-1-4')) or a duat.language.ParaFormerLM, got {type(model).__name__}")
    return model


@contextlib.contextmanager
def _evaluating(model: ParaFormer) -> Iterator[ParaFormer]:
    """Eval mode and no gradients for the block; the model's own mode restored after."""
    _check_model(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- the stream

def _stream(model: ParaFormer, images: torch.Tensor) -> list[torch.Tensor]:
    if isinstance(model, ParaFormerLM):                  # tokens (B, T): the causal model's x_0
        x = model.embed(model.check_tokens(images))
    else:
        x = model.forward_tokens(images)                 # checks the images' shape
    out = [x]
    for stage in model.stages:
        x = stage(x)
        out.append(x)
    return out


def stage_stream(model: ParaFormer, images: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream [x_0, x_1, .., x_m]: tokens before the first stage and after each
    (before the final norm), each (B, T, D)."""
    with _evaluating(model):
        return _stream(model, images)


def branch_updates(model: ParaFormer, images: torch.Tensor) -> list[torch.Tensor]:
    """Per stage s, every branch's update at that stage's input: f_i(x_{s-1}), (n, B, T, D).

    x_{s-1} + branch_updates(..)[s-1].sum(0) is the stage's output x_s.
    """
    with _evaluating(model):
        stream = _stream(model, images)
        return [stage.branch_updates(x) for stage, x in zip(model.stages, stream)]


def update_norms(model: ParaFormer, images: torch.Tensor, relative: bool = False) -> list[torch.Tensor]:
    """Per stage, the size of each branch's update per example, |f_i(x)| over all T x D
    entries: (n, B). With relative=True, divided by the size |x| of the stage's input."""
    with _evaluating(model):
        stream = _stream(model, images)
        out = []
        for stage, x in zip(model.stages, stream):
            norms = stage.branch_updates(x).flatten(2).norm(dim=2)                # (n, B)
            out.append(norms / x.flatten(1).norm(dim=1) if relative else norms)
        return out


def branch_cosine(model: ParaFormer, images: torch.Tensor) -> list[torch.Tensor]:
    """Per stage, the (n, n) matrix of cos(f_i(x), f_j(x)), each update flattened over its
    T x D entries, averaged over the examples. 1: two branches push the stream the same way
    (duplicates); 0: unrelated directions; < 0: they partly cancel. A branch whose update is
    exactly zero has no direction and counts 0 with every branch, itself included."""
    with _evaluating(model):
        out = []
        for f in branch_updates(model, images):
            v = f.flatten(2).transpose(0, 1)                                        # (B, n, TD)
            norm = v.norm(dim=2, keepdim=True)
            unit = torch.where(norm > 0, v / norm.clamp_min(torch.finfo(v.dtype).tiny), 0.0)
            out.append((unit @ unit.transpose(1, 2)).mean(0))                       # (n, n)
        return out


def attention_maps(model: ParaFormer, images: torch.Tensor) -> list[torch.Tensor]:
    """Per stage, the attention maps of every branch at that stage's input,
    softmax(Q_h K_h^T / sqrt(d)): (n, B, heads, T, T), each row a distribution over the
    keys (token 0 is the class token when pool == 'cls'; the rest are the patches, row-major).
    For a ParaFormerLM, `images` are tokens (B, T) and each row t covers the keys 0..t only."""
    with _evaluating(model), threads(1):
        stream = _stream(model, images)
        out = []
        for branches, x in zip(model.blocks(), stream):
            out.append(torch.stack([torch.stack([kit_attention_maps(b.attn, b.norm1(x[k]))
                                                 for k in range(x.shape[0])])
                                    for b in branches]))
        return out


# ----------------------------------------------------------------------------- leave one out

def _stage_and_branch(model: ParaFormer, stage: int, branch: int) -> None:
    c = model.config
    for name, value, count in (("stage", stage, c.depth), ("branch", branch, c.width)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < count:
            raise ValueError(f"{name} must be an int in [0, {count}) for Para-Former-"
                             f"{c.depth}-{c.width}, got {value!r}")


def without_branch(model: ParaFormer, stage: int, branch: int) -> ParaFormer:
    """A copy of `model` whose stage `stage` (0-based) sums every branch but `branch`:
    x + sum_{j != i} f_j(x). The copy's branch i has its output projection and second MLP
    layer set to zero, which makes f_i exactly 0; the model itself is left unchanged."""
    _check_model(model)
    _stage_and_branch(model, stage, branch)
    dropped = copy.deepcopy(model)
    s = dropped.stages[stage]
    with torch.no_grad():
        if isinstance(s, ParallelStage):
            for name in _OUTPUT_STACKED:
                if getattr(s, name) is not None:
                    getattr(s, name)[branch].zero_()
        elif isinstance(s, ReferenceStage):
            for path in _OUTPUT_PATHS:
                s.blocks[branch].get_parameter(path).zero_()
        else:  # pragma: no cover - ParaFormer builds only these two
            raise TypeError(f"unknown stage type {type(s).__name__}")
    return dropped


def leave_one_out(model: ParaFormer, loader: Iterable) -> dict:
    """Accuracy of the full model and, for every stage s and branch i, of the model with
    f_i left out of stage s's sum: {"full": acc, "without": [[acc per branch] per stage]}."""
    _check_model(model)
    c = model.config
    def accuracy(net: ParaFormer) -> float:
        return evaluate(net, loader)["accuracy"]

    return {"full": accuracy(model),
            "without": [[accuracy(without_branch(model, s, i)) for i in range(c.width)]
                        for s in range(c.depth)]}


# ----------------------------------------------------------------------------- the DUAT view

def term_labels(model: ParaFormer) -> list[tuple[int, int]]:
    """(stage, branch), 1-based, of each term of unroll_paraformer, in order."""
    c = _check_model(model).config
    return [(s, i) for s in range(1, c.depth + 1) for i in range(1, c.width + 1)]


def unroll_paraformer(model: ParaFormer, x0: torch.Tensor) -> Unrolled:
    """The DUAT terms (docs/method.md section 3) of a Para-Former-m-n, one per branch:

        x_m = x_0 + sum_s sum_i term_{s,i}(x_0),

    where term_{s,i} is branch i's update f_i(x_{s-1}) written in the model's input x_0 with
    input-dependent A, U, c and b~, exactly the Transformer term of duat.theory.unroll for a
    block that reads x_{s-1}. All branches of a stage read the same x_{s-1}. x0: the tokens
    (B, T, D), model.forward_tokens(images). `.reconstruct()` sums the terms back and
    `.max_error()` compares with the stages' own output; order as term_labels(model).
    """
    c = _check_model(model).config
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"unroll_paraformer expects floating-point tokens x0, got {type(x0).__name__}")
    if x0.ndim != 3 or x0.shape[1:] != (c.num_tokens, c.dim) or x0.shape[0] < 1:
        raise ValueError(f"unroll_paraformer expects tokens of shape (B, {c.num_tokens}, {c.dim}) "
                         f"(model.forward_tokens(images)), got {tuple(x0.shape)}")
    with _evaluating(model), threads(1):
        out = Unrolled(x0.flatten(1), shape=tuple(x0.shape[1:]))
        x = x0
        out.stream.append(x0)
        for branches, stage in zip(model.blocks(), model.stages):
            out.terms.extend(transformer_term(block, x0, x) for block in branches)
            x = stage(x)
            out.stream.append(x)
        return out


def dynamic_spread(model: ParaFormer, images: torch.Tensor) -> list[dict]:
    """parameter_spread (duat.theory.unroll) of unroll_paraformer at these images: one row per
    branch, with its "stage" and "branch" (1-based) added and "layer" its term number. Rows
    hold the relative spreads across the batch of b~ ("relative"), of A ("A_relative") and of
    the attention maps ("attn_map_relative"), and their absolute sizes."""
    with _evaluating(model):
        rows = parameter_spread(unroll_paraformer(model, model.forward_tokens(images)))
    for row, (s, i) in zip(rows, term_labels(model)):
        row["stage"], row["branch"] = s, i
    return rows


# ----------------------------------------------------------------------------- compression

SCORES = ("loo", "norm", "first")


def score_branches(model: ParaFormer, loader: Iterable, method: str = "loo",
                   images: int = 256) -> torch.Tensor:
    """(m, n) scores of every branch of every stage; a higher score means more worth keeping.

    loo: loss without the branch minus the loss with all (over `loader`, in eval mode).
    norm: |f_i(x)| (update_norms), root-mean-square over the first `images` images of
    `loader`. first: n - i.
    """
    method = one_of("method", method, SCORES)
    _check_model(model)
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
        return torch.stack([u.double().pow(2).mean(1).sqrt() for u in update_norms(model, x)]).cpu()
    base = evaluate(model, loader)["loss"]
    return torch.tensor([[evaluate(without_branch(model, s, i), loader)["loss"] - base
                          for i in range(n)] for s in range(m)], dtype=torch.float64)


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
