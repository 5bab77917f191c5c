"""Exercises of notebook 01 (universal approximation, docs/method.md section 1)."""
from __future__ import annotations

import torch

from duat.exercises.core import call, cases, compare, exercise, need_callable
from duat.theory.uat import UAT


@exercise("1.1", "the UAT forward pass",
          "a function uat_forward(x, w, theta, alpha) returning G(x) = sum_j alpha_j "
          "tanh(w_j . x + theta_j) as a tensor of shape (B,), for x (B, d), w (N, d), "
          "theta (N,), alpha (N,)")
def uat_forward(answer) -> str:
    need_callable(answer, "a function uat_forward(x, w, theta, alpha)")
    for i, g in cases():
        B, d, N = 3 + i, 1 + i % 3, 2 + 2 * i
        model = UAT(in_dim=d, N=N, activation="tanh").double()
        model.reset_parameters(generator=g)
        with torch.no_grad():
            model.alpha.normal_(generator=g)
        x = torch.rand(B, d, generator=g, dtype=torch.float64) * 2 - 1
        w, theta, alpha = model.w.detach(), model.theta.detach(), model.alpha.detach()
        case = f"case {i}: x of shape ({B}, {d}), N = {N}"
        got = call(answer, x, w, theta, alpha, case=case)
        compare(got, model(x).detach(), case=case, what="G(x)", mistakes=[
            (lambda: torch.tanh(x @ w.T + theta).sum(1), "alpha is missing: each unit's output "
             "is weighted by alpha_j before the sum."),
            (lambda: torch.tanh(x @ w.T) @ alpha, "theta is missing inside the activation."),
            (lambda: (x @ w.T + theta) @ alpha, "the activation sigma = tanh is missing."),
            (lambda: torch.tanh((x @ w.T + theta) @ alpha), "tanh goes inside the sum, on each "
             "unit, not around the whole sum."),
        ])
    return "5 unseen inputs and widths"
