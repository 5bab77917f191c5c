"""Exercises of notebook 01 (universal approximation, docs/method.md section 1): the forward
pass of G(x) and the least-squares fit of its output weights alpha."""
from __future__ import annotations

import torch

from duat.exercises.core import call, cases, compare, exercise
from duat.theory.uat import UAT, fit_lstsq


@exercise("1.1", "the UAT forward pass",
          "a function uat_forward(x, w, theta, alpha) returning G(x) = sum_j alpha_j "
          "tanh(w_j . x + theta_j) as a tensor of shape (B,), for x (B, d), w (N, d), "
          "theta (N,), alpha (N,)")
def uat_forward(answer) -> str:
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


@exercise("1.2", "least-squares output weights",
          "a function fit_alpha(x, y, w, theta) returning the alpha of shape (N,) that "
          "minimises ||Phi alpha - y||^2, Phi = tanh(x @ w.T + theta) of shape (B, N), for "
          "x (B, d), y (B,), w (N, d), theta (N,)")
def fit_alpha(answer) -> str:
    for i, g in cases():
        B, d, N = 30 + 5 * i, 1 + i % 2, 3 + i
        model = UAT(in_dim=d, N=N, activation="tanh").double()
        model.reset_parameters(generator=g)
        x = torch.rand(B, d, generator=g, dtype=torch.float64) * 2 - 1
        y = torch.sin(3 * x).sum(1) + 0.1 * torch.randn(B, generator=g, dtype=torch.float64)
        w, theta = model.w.detach().clone(), model.theta.detach().clone()
        fit_lstsq(model, x, y)  # the kit: alpha by least squares, w and theta kept
        phi = torch.tanh(x @ w.T + theta)
        case = f"case {i}: {B} points x of shape ({B}, {d}), N = {N} units"
        got = call(answer, x, y, w, theta, case=case)
        compare(got, model.alpha.detach(), case=case, what="alpha", atol=1e-6, rtol=1e-6, mistakes=[
            (lambda: phi.T @ y, "Phi.T @ y is only the right-hand side of the normal equations "
             "(Phi.T Phi) alpha = Phi.T y: solve them, or use torch.linalg.lstsq(Phi, y[:, None])."),
            (lambda: torch.linalg.solve(phi[:N], y[:N]), "that solves Phi alpha = y on the first N "
             "points only (interpolation); least squares uses all B points."),
            (lambda: torch.linalg.lstsq(x @ w.T + theta, y[:, None]).solution[:, 0], "the features "
             "are tanh(x @ w.T + theta): the activation is missing from Phi."),
            (lambda: torch.linalg.lstsq(torch.tanh(x @ w.T), y[:, None]).solution[:, 0],
             "theta is missing inside the activation."),
        ])
    return "5 unseen data sets and widths"
