"""Exercises of notebook 03 (residual networks as dynamic UATs, docs/method.md section 3): the
input-dependent bias b~_l of an unrolled residual MLP, its spread over a batch, and the width
of the static UAT that matches a dynamic one in parameter count."""
from __future__ import annotations

import math
import numbers

import torch

from duat.exercises.core import (BadAnswer, Wrong, call, cases, compare, exercise,
                                 same_number)
from duat.theory.dynamic import DynamicUAT, matched_static_width
from duat.theory.unroll import ResidualMLP, parameter_spread, unroll


def _stacked(got, what: str):
    """A list or tuple of per-layer tensors as one tensor; anything else unchanged."""
    if isinstance(got, (list, tuple)) and got and all(isinstance(t, torch.Tensor) for t in got):
        shapes = {tuple(t.shape) for t in got}
        if len(shapes) > 1:
            raise BadAnswer(f"{what} holds tensors of different shapes {sorted(shapes)}.")
        return torch.stack(list(got))
    return got


@exercise("3.1", "the input-dependent bias b~_l",
          "a function b_tildes(net, x0) returning b~_l(x0) = b1_l + (x_{l-1} - x0) @ W1_l.T for "
          "every layer l = 1..L of a ResidualMLP net, stacked to shape (L, B, hidden), for a "
          "batch x0 of shape (B, dim)")
def b_tildes(answer) -> str:
    for i, g in cases():
        dim, hidden, depth = 2 + i % 3, 3 + i, 1 + i
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))  # (check() restores it)
        net = ResidualMLP(dim, hidden, depth, activation=("relu", "tanh", "gelu")[i % 3]).double()
        x0 = torch.randn(4 + i, dim, generator=g, dtype=torch.float64)
        expected = torch.stack([t.b_tilde for t in unroll(net, x0).terms])  # the kit's terms
        with torch.no_grad():
            stream = [x0]
            for block in net.blocks:
                stream.append(block(stream[-1]))
        b1 = [blk.fc1.bias.detach() for blk in net.blocks]
        W1 = [blk.fc1.weight.detach() for blk in net.blocks]
        case = f"case {i}: depth {depth}, dim {dim}, hidden {hidden}, batch {x0.shape[0]}"
        got = _stacked(call(answer, net, x0, case=case), "the list of b~_l")
        compare(got, expected, case=case, what="b~", mistakes=[
            (lambda: torch.stack([b1[l].expand(x0.shape[0], -1) for l in range(depth)]),
             "that is the fixed bias b1_l in every layer: b~_l adds W1_l (x_{l-1} - x0), what the "
             "earlier layers did to the input."),
            (lambda: torch.stack([b1[l] + stream[l] @ W1[l].T for l in range(depth)]),
             "that is the whole pre-activation W1_l x_{l-1} + b1_l; b~_l is what is left after "
             "taking out W1_l x0: b1_l + W1_l (x_{l-1} - x0)."),
            (lambda: torch.stack([b1[l] + (stream[l + 1] - x0) @ W1[l].T for l in range(depth)]),
             "off by one layer: layer l reads x_{l-1}, the stream before block l, not after it."),
        ])
    return "5 unseen residual MLPs and batches"


@exercise("3.2", "how much b~_l moves across inputs",
          "a function relative_spread(b) returning one number: the standard deviation over the "
          "batch (axis 0, population std) of each entry of b, averaged over the entries, divided "
          "by the mean of |b|, for b of shape (B, n)")
def relative_spread(answer) -> str:
    for i, g in cases():
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))  # (check() restores it)
        net = ResidualMLP(3, 4 + i, 3, activation="tanh").double()
        x0 = torch.randn(6 + 2 * i, 3, generator=g, dtype=torch.float64)
        unrolled = unroll(net, x0)
        layer = 1 + i % 2  # layer 2 or 3: where b~ moves
        b = unrolled.terms[layer].b_tilde
        expected = parameter_spread(unrolled)[layer]["relative"]  # the kit's measure
        case = f"case {i}: b~ of shape {tuple(b.shape)}"
        got = call(answer, b, case=case)
        same_number(got, expected, case=case, what="the relative spread", rel=1e-9, mistakes=[
            (b.std(dim=0).mean().item() / b.abs().mean().item(), "torch.std is the sample std "
             "(divides by B - 1) by default: use unbiased=False (or correction=0)."),
            (b.std(dim=0, unbiased=False).mean().item(), "that is the spread itself; divide by "
             "the mean size b.abs().mean() to make it relative."),
            (b.std(dim=1, unbiased=False).mean().item() / b.abs().mean().item(), "the std goes "
             "over the batch, axis 0 (one std per hidden unit), not over the units of one input."),
            (b.std(unbiased=False).item() / b.abs().mean().item(), "that is the std of all "
             "entries together; take one std per entry over the batch, then average them."),
            (b.std(dim=0, unbiased=False).mean().item() / b.mean().abs().item(), "divide by the "
             "mean of |b|, not |mean of b|."),
        ])
    return "5 unseen biases of unrolled residual MLPs"


@exercise("3.3", "the matched static width",
          "a function matched_width(d, N, k, dynamic) returning the int N_s for which a static "
          "UAT's N_s (d + 2) parameters come closest to those of DynamicUAT(d, N, k, "
          "dynamic=dynamic), dynamic a tuple of 'alpha' and/or 'theta'")
def matched_width(answer) -> str:
    for i, (d, N, k, dynamic) in enumerate([(1, 8, 8, ("theta",)), (2, 10, 3, ("alpha",)),
                                            (3, 9, 3, ("theta",)), (2, 7, 5, ("alpha", "theta")),
                                            (3, 14, 6, ("alpha", "theta"))], start=1):
        model = DynamicUAT(d, N, k, dynamic=dynamic)
        expected = matched_static_width(model)  # the kit's rule
        total = sum(p.numel() for p in model.parameters())
        n = len(dynamic)
        case = f"case {i}: d = {d}, N = {N}, k = {k}, dynamic = {dynamic}"
        got = call(answer, d, N, k, dynamic, case=case)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, float) and math.isfinite(got):
            raise Wrong(f"N_s is {got:.6g} on {case}, not a whole number of units.",
                        "a width counts units: round the parameter ratio to the nearest int.")
        if not isinstance(got, numbers.Integral) or isinstance(got, bool):
            raise BadAnswer(f"matched_width returned {type(got).__name__} {got!r} on {case}, "
                            "not an int (a width is a whole number of units).")
        got = int(got)
        same_number(got, expected, case=case, what="N_s", mistakes=[
            (math.floor(total / (d + 2)), "int() and // round down; the matched width is the "
             "nearest whole number, round(...)."),
            (round((total - k) / (d + 2)), "the hypernetwork's hidden layer P has a bias too: "
             "k (d + 1) parameters, not k d."),
            (round((total - N * (d + 2)) / (d + 2)), "the dynamic model keeps its base UAT (w, "
             "theta0, alpha0: N (d + 2) parameters) besides the hypernetwork."),
            (round(total / (d + 1)), "a static unit has d + 2 parameters: d in w_j, one theta_j, "
             "one alpha_j."),
            (round((total - k * N * n) / (d + 2)), "V maps the k hidden values to N offsets per "
             "dynamic parameter: k N len(dynamic) weights."),
        ] + ([(round((total + k * N) / (d + 2)), "only the parameters named in `dynamic` get "
               "offsets from V: k N len(dynamic) weights, not 2 k N.")] if n == 1 else []))
    return "5 unseen (d, N, k, dynamic) settings"
