"""Static vs dynamic UAT at equal parameter count (docs/method.md section 3).

Section 3 shows a residual network is a UAT whose parameters depend on the input, and the
paper credits that input-dependence for the fitting power. This module puts the claim to a
small, honest test: fit the same targets with

    static:   G(x) = sum_j alpha_j sigma(w_j . x + theta_j)                 (duat.theory.uat.UAT)
    dynamic:  G(x) = sum_j alpha_j(x) sigma(w_j . x + theta_j(x)),
              [alpha(x), theta(x)] = [alpha0, theta0] + V tanh(P x + q)    (a small hypernetwork)

with the static width chosen so both have (as nearly as integers allow) the same number of
parameters, the same optimiser, learning rate, steps, data and seeds, and report the
measured test errors whichever way they come out.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from duat.checks import whole
from duat.theory.uat import TARGETS, UAT, count_parameters, errors, fit_adam, get_target, make_data

DYNAMIC = ("alpha", "theta")


class DynamicUAT(nn.Module):
    """G(x) = sum_j alpha_j(x) sigma(w_j . x + theta_j(x)): x (B, d) -> (B,).

    `dynamic` names which of alpha, theta the hypernetwork (hidden width k) produces from x;
    the others stay fixed, as in a static UAT. w is always fixed.
    """

    def __init__(self, in_dim: int, N: int, k: int = 4, activation: str = "tanh",
                 dynamic: tuple[str, ...] = DYNAMIC):
        super().__init__()
        if not dynamic or any(p not in DYNAMIC for p in dynamic):
            raise ValueError(f"dynamic must be a non-empty subset of {DYNAMIC}, got {dynamic!r}")
        k = whole("hypernetwork width k", k)
        self.base = UAT(in_dim, N, activation)  # w, theta0, alpha0
        self.dynamic = tuple(p for p in DYNAMIC if p in dynamic)
        self.P = nn.Linear(in_dim, k)                       # hypernetwork hidden layer
        self.V = nn.Linear(k, N * len(self.dynamic), bias=False)  # parameter offsets
        nn.init.normal_(self.V.weight, std=0.1 / k**0.5)
        self.in_dim, self.N, self.k = in_dim, N, k

    def parameters_at(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """alpha(x), theta(x): each (B, N) (the fixed ones broadcast over the batch)."""
        offsets = self.V(torch.tanh(self.P(x))).view(x.shape[0], len(self.dynamic), self.N)
        out = {"alpha": self.base.alpha.expand(x.shape[0], -1), "theta": self.base.theta.expand(x.shape[0], -1)}
        for i, name in enumerate(self.dynamic):
            out[name] = out[name] + offsets[:, i]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"DynamicUAT expects x of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        p = self.parameters_at(x)
        hidden = self.base.sigma(x @ self.base.w.T + p["theta"])  # (B, N)
        return (hidden * p["alpha"]).sum(dim=1)  # (B,)


def matched_static_width(dynamic: DynamicUAT) -> int:
    """The static UAT width N_s with N_s (d + 2) closest to the dynamic model's parameter count."""
    return max(1, round(count_parameters(dynamic) / (dynamic.in_dim + 2)))


def _fit_and_score(model, data, steps, lr):
    x_tr, y_tr, x_te, y_te = data
    start = time.perf_counter()
    losses = fit_adam(model, x_tr, y_tr, steps=steps, lr=lr)  # full batch: no randomness here
    with torch.no_grad():
        test = errors(model, x_te, y_te)["rmse"]
    return {"train_rmse": losses[-1] ** 0.5, "test_rmse": test, "seconds": time.perf_counter() - start}


def static_vs_dynamic(targets=tuple(TARGETS), N: int = 12, k: int = 4, activation: str = "tanh",
                      dynamic: tuple[str, ...] = DYNAMIC, steps: int = 1500, lr: float = 1e-2,
                      seeds=(0,), n_test: int = 1000) -> list[dict]:
    """Train a dynamic UAT (N units, hypernetwork width k) and a static UAT of matched size
    on each target (default: all six of duat.theory.uat.TARGETS, 1-D and 2-D), with the same
    Adam budget; one record per (target, model, seed)."""
    records = []
    for name in targets:
        target = get_target(name)
        n_train = 256 if target.dim == 1 else 32
        for seed in seeds:
            data = make_data(target, n_train, n_test, seed=seed, dtype=torch.float32)
            g = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            dyn = DynamicUAT(target.dim, N, k, activation, dynamic)
            dyn.base.reset_parameters(generator=g)
            static = UAT(target.dim, matched_static_width(dyn), activation)
            static.reset_parameters(generator=torch.Generator().manual_seed(seed))
            for label, model in (("static", static), ("dynamic", dyn)):
                units = model.N
                records.append({"target": name, "model": label, "seed": seed, "units": units,
                                "params": count_parameters(model),
                                **_fit_and_score(model, data, steps, lr)})
    return records


def rmse_summary(records: list[dict]) -> list[dict]:
    """Mean test RMSE per target over seeds, of the static and the dynamic UAT, with their
    parameter counts and the dynamic / static ratio."""
    out = {}
    for r in records:
        row = out.setdefault(r["target"], {"target": r["target"]})
        row.setdefault(r["model"], []).append(r["test_rmse"])
        row[f"{r['model']}_params"] = r["params"]
    rows = []
    for row in out.values():
        s, d = (sum(row[m]) / len(row[m]) for m in ("static", "dynamic"))
        rows.append({"target": row["target"], "static_params": row["static_params"],
                     "dynamic_params": row["dynamic_params"], "static_rmse": s, "dynamic_rmse": d,
                     "ratio": d / s if s else float("nan")})
    return rows


def format_rmse_summary(rows: list[dict]) -> str:
    """rmse_summary's rows as a plain-text table."""
    lines = [f"{'target':<15}{'params s/d':>12}{'static rmse':>13}{'dynamic rmse':>14}{'dyn/static':>12}"]
    for r in rows:
        lines.append(f"{r['target']:<15}{str(r['static_params']) + '/' + str(r['dynamic_params']):>12}"
                     f"{r['static_rmse']:>13.3g}{r['dynamic_rmse']:>14.3g}{r['ratio']:>12.3g}")
    return "\n".join(lines)
