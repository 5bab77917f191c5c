"""Universal approximation (docs/method.md section 1): the one-hidden-layer network

    G(x) = sum_{j=1..N} alpha_j * sigma(w_j . x + theta_j)

with a choice of sigma (sigmoid, tanh, ReLU), target functions on [-1, 1]^d in 1-D and 2-D
(smooth, kinked, oscillating), two ways to fit (least squares on random hidden units, and
gradient descent on all parameters), and `approximation_table`, which *measures* how the
error falls as the budget N grows. Nothing here asserts the theory; the table is what it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from duat.checks import whole
from duat.counting import count_parameters  # noqa: F401  (re-exported: UAT parameter counts)
from duat.runtime import threads

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
}
METHODS = ("lstsq", "adam")


# ----------------------------------------------------------------------------- the model

class UAT(nn.Module):
    """G(x) = sum_j alpha_j sigma(w_j . x + theta_j): x (B, d) -> (B,).

    Parameters, named as in the math: w (N, d), theta (N,), alpha (N,).
    """

    def __init__(self, in_dim: int, N: int, activation: str = "tanh"):
        super().__init__()
        in_dim, N = whole("in_dim", in_dim), whole("N", N)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.in_dim, self.N, self.activation = in_dim, N, activation
        self.sigma = ACTIVATIONS[activation]
        self.w = nn.Parameter(torch.empty(N, in_dim))
        self.theta = nn.Parameter(torch.empty(N))
        self.alpha = nn.Parameter(torch.zeros(N))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random hidden units whose transitions fall inside the domain [-1, 1]^d.

        Each unit is sigma(s * (u_j . (x - c_j))): a random direction u_j, a random centre
        c_j in the domain and a steepness s that grows with N (so wider networks resolve
        finer detail). alpha starts at zero.
        """
        N, d = self.N, self.in_dim
        u = torch.randn(N, d, generator=generator)
        u = u / u.norm(dim=1, keepdim=True)
        c = torch.rand(N, d, generator=generator) * 2 - 1
        s = 1.0 if self.activation == "relu" else 2.0 + math.sqrt(N) * torch.rand(N, 1, generator=generator)
        self.w.copy_(s * u)
        self.theta.copy_(-(self.w * c).sum(dim=1))
        self.alpha.zero_()

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The N hidden features sigma(w_j . x + theta_j): (B, d) -> (B, N)."""
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"UAT expects x of shape (B, {self.in_dim}), got {tuple(x.shape)}")
        return self.sigma(x @ self.w.T + self.theta)  # (B, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x) @ self.alpha  # (B,)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, N={self.N}, activation={self.activation!r}"


# ----------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """A function to approximate on [-1, 1]^dim; fn maps (B, dim) -> (B,)."""
    name: str
    dim: int
    kind: str          # 'smooth', 'kinked' or 'oscillating'
    formula: str       # LaTeX, for plots and notebooks
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"target {self.name!r} expects x of shape (B, {self.dim}), got {tuple(x.shape)}")
        return self.fn(x)


PI = math.pi
TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("smooth1d", 1, "smooth", r"\sin(\pi x)", lambda x: torch.sin(PI * x[:, 0])),
    Target("kinked1d", 1, "kinked", r"|x - 0.25| - 0.5", lambda x: (x[:, 0] - 0.25).abs() - 0.5),
    Target("oscillating1d", 1, "oscillating", r"\sin(5\pi x)", lambda x: torch.sin(5 * PI * x[:, 0])),
    Target("smooth2d", 2, "smooth", r"\sin(\pi x_1)\cos(\pi x_2 / 2)",
           lambda x: torch.sin(PI * x[:, 0]) * torch.cos(PI * x[:, 1] / 2)),
    Target("kinked2d", 2, "kinked", r"|x_1| + |x_2| - 1", lambda x: x.abs().sum(dim=1) - 1),
    Target("oscillating2d", 2, "oscillating", r"\sin(2\pi x_1)\sin(2\pi x_2)",
           lambda x: torch.sin(2 * PI * x[:, 0]) * torch.sin(2 * PI * x[:, 1])),
]}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}")
    return TARGETS[name]


def grid(dim: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """A regular grid on [-1, 1]^dim with n points per axis: (n**dim, dim)."""
    if dim not in (1, 2):
        raise ValueError(f"grid supports dim 1 or 2, got {dim!r}")
    axis = torch.linspace(-1, 1, n, dtype=dtype)
    if dim == 1:
        return axis[:, None]
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


def make_data(target: Target | str, n_train: int, n_test: int, seed: int = 0, dtype=torch.float64):
    """Train on a regular grid (n_train points per axis), test on n_test uniform random points."""
    target = get_target(target) if isinstance(target, str) else target
    g = torch.Generator().manual_seed(seed)
    x_train = grid(target.dim, n_train, dtype)
    x_test = (torch.rand(n_test, target.dim, generator=g, dtype=dtype) * 2 - 1)
    return x_train, target(x_train), x_test, target(x_test)


# ----------------------------------------------------------------------------- fitting

@torch.no_grad()
def fit_lstsq(model: UAT, x: torch.Tensor, y: torch.Tensor, rcond: float = 1e-12) -> UAT:
    """Keep the hidden units (w, theta), solve for alpha by least squares (in float64)."""
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    with threads(1):  # one thread: the same solution, bit for bit, on every run
        phi = model.hidden(x.to(model.w.dtype)).double()  # (B, N)
        alpha = torch.linalg.lstsq(phi, y.double()[:, None], rcond=rcond, driver="gelsd").solution[:, 0]
    model.alpha.copy_(alpha.to(model.alpha.dtype))
    return model


def fit_adam(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1000,
             lr: float = 1e-2) -> list[float]:
    """Full-batch Adam on the mean squared error, all parameters; returns the loss curve."""
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    losses = []
    # These models are tiny: one thread is never slower, and on a shared CPU two threads
    # that wait on each other were measured about 10x slower.
    with threads(1):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = torch.mean((model(x) - y) ** 2)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
    return losses


@torch.no_grad()
def errors(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Root-mean-square and maximum absolute error of model on (x, y)."""
    r = model(x) - y
    return {"rmse": r.pow(2).mean().sqrt().item(), "max_err": r.abs().max().item()}


def fit_uat(target: Target | str, N: int, activation: str = "tanh", method: str = "lstsq",
            n_train: int | None = None, n_test: int = 2000, steps: int = 500, lr: float = 1e-2,
            seed: int = 0) -> tuple[UAT, dict]:
    """Fit a UAT with N hidden units to a target; returns (model, record of test errors).

    method: 'lstsq' (random hidden units kept fixed, least-squares alpha) or 'adam'
    (gradient descent on all of w, theta, alpha from the same random start).
    """
    target = get_target(target) if isinstance(target, str) else target
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: expected one of {', '.join(METHODS)}")
    n_train = n_train or (512 if target.dim == 1 else 48)
    x_tr, y_tr, x_te, y_te = make_data(target, n_train, n_test, seed=seed)
    g = torch.Generator().manual_seed(seed)
    model = UAT(target.dim, N, activation).double()
    model.reset_parameters(generator=g)
    if method == "lstsq":
        fit_lstsq(model, x_tr, y_tr)
    else:
        fit_adam(model, x_tr, y_tr, steps=steps, lr=lr)
    record = {"target": target.name, "activation": activation, "method": method, "N": N,
              "params": count_parameters(model), **errors(model, x_te, y_te)}
    return model, record


def approximation_table(targets=("smooth1d", "kinked1d", "oscillating1d"), Ns=(2, 4, 8, 16, 32, 64),
                        activations=("tanh",), method: str = "lstsq", seed: int = 0, **kwargs) -> list[dict]:
    """Measure test error against N: one record per (target, activation, N)."""
    return [fit_uat(t, N, a, method=method, seed=seed, **kwargs)[1]
            for t in targets for a in activations for N in Ns]


def format_table(records: list[dict], value: str = "rmse") -> str:
    """Rows (target, activation), columns N; cells the chosen error, 3 significant digits."""
    Ns = sorted({r["N"] for r in records})
    rows: dict[tuple, dict] = {}
    for r in records:
        rows.setdefault((r["target"], r["activation"]), {})[r["N"]] = r[value]
    head = f"{'target':<15}{'sigma':<9}" + "".join(f"{'N=' + str(n):>10}" for n in Ns)
    lines = [f"test {value}", head]
    for (t, a), cells in rows.items():
        lines.append(f"{t:<15}{a:<9}" + "".join(f"{cells[n]:>10.3g}" if n in cells else f"{'':>10}" for n in Ns))
    return "\n".join(lines)
