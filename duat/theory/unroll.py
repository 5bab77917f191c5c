"""Serial residual networks unrolled into dynamic-UAT terms (docs/method.md section 3).

A serial residual network computes x_l = x_{l-1} + f_l(x_{l-1}), l = 1..L. Unrolling gives

    x_L = x_0 + sum_l term_l(x_0),
    term_l = W2_l sigma(W1_l x_0 + b~_l(x_0)) + b2_l,   b~_l(x_0) = b1_l + W1_l (x_{l-1} - x_0)

for a residual MLP or CNN (W1_l, W2_l fixed: for a CNN the MVM matrices of its convolutions,
section 2), i.e. a UAT with input-dependent biases. For a pre-norm Transformer block
f(x) = a + mlp(norm2(x + a)), a = attn(norm1(x)), the weights depend on the input too:

    term_l = A_l(x_0) x_0 + c_l(x_0) + W2_l GELU(U_l(x_0) x_0 + b~_l(x_0)) + b2_l

with A_l = W_attn(norm1(x_{l-1})) W_norm1(x_{l-1}) the attention sub-layer's matrix (built
from the attention maps), U_l = W1_l W_norm2(x_{l-1} + a_l) the MLP's first weight seen
through layer norm, and c_l, b~_l the input-dependent biases that make the identity exact.
All vectors are row-major flattenings of one example; matrices act on them.

`unroll(net, x0)` returns these terms for a batch x0; `Unrolled.reconstruct()` sums them, and
`parameter_spread` reports how much the parameters move across the batch (the "dynamic" part).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from duat.paraformer import Block, ParaFormer, ParallelStage
from duat.runtime import threads
from duat.theory.mvm import kit_attention_maps, matmul, matvec, mvm

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


# ----------------------------------------------------------------------------- networks

class ResidualMLPBlock(nn.Module):
    """x + f(x), f(x) = W2 sigma(W1 x + b1) + b2: x (B, dim) -> (B, dim)."""

    def __init__(self, dim: int, hidden: int, activation: str = "relu"):
        super().__init__()
        if activation not in ACTS:
            raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTS)}")
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), ACTS[activation](), nn.Linear(hidden, dim)

    def residual(self, x):
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x):
        return x + self.residual(x)


class ResidualConvBlock(nn.Module):
    """x + f(x), f(x) = conv2(relu(conv1(x))), 'same' padding: x (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the image size, got {kernel_size}")
        p = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=p)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=p)

    def residual(self, x):
        return self.conv2(self.act(self.conv1(x)))

    def forward(self, x):
        return x + self.residual(x)


class ResidualMLP(nn.Module):
    """A serial residual MLP of `depth` blocks: x (B, dim) -> (B, dim)."""

    def __init__(self, dim: int, hidden: int, depth: int, activation: str = "relu"):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualMLPBlock(dim, hidden, activation) for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class ResidualCNN(nn.Module):
    """A small serial residual CNN of `depth` blocks: x (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, depth: int, kernel_size: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualConvBlock(channels, kernel_size) for _ in range(depth))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


# ----------------------------------------------------------------------------- terms

def _rows(W: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """X @ W.T for a dense or sparse W: apply W to every row of X (B, n)."""
    return torch.sparse.mm(W, X.T).T if W.is_sparse else X @ W.T


@dataclass
class UATTerm:
    """term(x0) = W2 sigma(W1 x0 + b_tilde(x0)) + b2; W1, b1, W2, b2 fixed, b_tilde (B, hidden)."""
    W1: torch.Tensor
    b1: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor
    b_tilde: torch.Tensor
    sigma: nn.Module

    def value(self, x0: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, n)
        return _rows(self.W2, self.sigma(_rows(self.W1, x0) + self.b_tilde)) + self.b2


@dataclass
class TransformerTerm:
    """term(x0) = A x0 + c + W2 GELU(U x0 + b_tilde) + b2 (token-wise W2, b2), per example.

    attn_maps (B, H, T, T) and A (B, TD, TD), U (B, T*hidden, TD) depend on the input, and
    so do c (B, TD) and b_tilde (B, T*hidden); W2 (D, hidden) and b2 (D,) are fixed.
    """
    attn_maps: torch.Tensor
    A: torch.Tensor
    c: torch.Tensor
    U: torch.Tensor
    b_tilde: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor
    sigma: nn.Module

    def value(self, x0: torch.Tensor) -> torch.Tensor:  # (B, TD) -> (B, TD)
        B, T = x0.shape[0], self.attn_maps.shape[-1]
        h = self.sigma(torch.einsum("bij,bj->bi", self.U, x0) + self.b_tilde).view(B, T, -1)
        mlp = (h @ self.W2.T + self.b2).reshape(B, -1)
        return torch.einsum("bij,bj->bi", self.A, x0) + self.c + mlp


@dataclass
class Unrolled:
    """x_L = x_0 + sum_l terms[l].value(x_0); `stream` holds the forward pass x_0 .. x_L."""
    x0: torch.Tensor                      # (B, n) flattened inputs
    terms: list = field(default_factory=list)
    stream: list = field(default_factory=list)
    shape: tuple = ()                     # shape of one example

    def term_values(self) -> list[torch.Tensor]:
        return [t.value(self.x0) for t in self.terms]

    def reconstruct(self) -> torch.Tensor:
        """x_0 + sum of the terms, in the input's shape (B, *shape)."""
        with torch.no_grad(), threads(1):
            out = self.x0 + sum(self.term_values())
        return out.view(-1, *self.shape)

    def max_error(self) -> float:
        """max |reconstruct() - forward pass|: zero up to float rounding if the unrolling is right."""
        return (self.reconstruct() - self.stream[-1]).abs().max().item()


# ----------------------------------------------------------------------------- unrolling

def _mlp_term(block: ResidualMLPBlock, x0, x_prev) -> UATTerm:
    W1, b1 = block.fc1.weight.detach(), block.fc1.bias.detach()
    b_tilde = b1 + (x_prev - x0) @ W1.T  # (B, hidden)
    return UATTerm(W1, b1, block.fc2.weight.detach(), block.fc2.bias.detach(), b_tilde, block.act)


def _conv_term(block: ResidualConvBlock, x0, x_prev) -> UATTerm:
    one = x0[:1]  # convolutions are fixed: their MVM matrices do not depend on x
    W1, b1 = mvm(block.conv1, one)
    W2, b2 = mvm(block.conv2, block.conv1(one))
    b_tilde = b1 + _rows(W1, (x_prev - x0).flatten(1))
    return UATTerm(W1, b1, W2, b2, b_tilde, block.act)


def transformer_term(block, x0, x_prev) -> TransformerTerm:
    """The DUAT term of one pre-norm Transformer block (a duat.paraformer.Block) whose input
    is x_prev, written in x0 (both (B, T, D)): its A_l, b~_l and attention maps, per example."""
    B, T, D = x0.shape
    maps, As, cs, Us, bts = [], [], [], [], []
    for i in range(B):  # the MVM is per example
        x0_i, xp = x0[i:i + 1], x_prev[i:i + 1]
        W_n1, beta1 = mvm(block.norm1, xp)
        u = block.norm1(xp)
        W_a, b_a = mvm(block.attn, u)
        a = block.attn(u)
        A = matmul(W_a, W_n1)  # a = A x_prev + W_a beta1 + b_a
        c = matvec(A, (xp - x0_i).flatten()) + matvec(W_a, beta1) + b_a
        W_n2, beta2 = mvm(block.norm2, xp + a)
        W_1, b_1 = mvm(block.mlp.fc1, block.norm2(xp + a))
        U = matmul(W_1, W_n2)
        b_tilde = matvec(U, (xp + a - x0_i).flatten()) + matvec(W_1, beta2) + b_1
        maps.append(kit_attention_maps(block.attn, u[0]))
        As.append(A), cs.append(c), Us.append(U), bts.append(b_tilde)
    fc2 = block.mlp.fc2
    return TransformerTerm(torch.stack(maps), torch.stack(As), torch.stack(cs), torch.stack(Us),
                           torch.stack(bts), fc2.weight.detach(), fc2.bias.detach(), block.mlp.act)


def residual_blocks(net: nn.Module) -> list[nn.Module]:
    """The serial residual blocks of net, or a ValueError saying what a serial residual net is.

    For a ParaFormer with batched stages these are exact copies (stage.to_reference()).
    """
    expected = ("a serial residual network: ResidualMLP, ResidualCNN, a ParaFormer whose stages "
                "each have one branch (width=1), or an nn.Sequential / nn.ModuleList of "
                "ResidualMLPBlock, ResidualConvBlock or duat.paraformer.Block")
    kinds = (ResidualMLPBlock, ResidualConvBlock, Block)
    if isinstance(net, (ResidualMLP, ResidualCNN)):
        return list(net.blocks)
    if isinstance(net, ParaFormer):
        per_stage = net.blocks()                  # [stage][branch], copies of batched stages
        for s, branches in enumerate(per_stage):
            if len(branches) != 1:
                raise ValueError(f"expected {expected}; got a ParaFormer whose stage {s} has "
                                 f"{len(branches)} parallel branches (width > 1 is not serial)")
        return [branches[0] for branches in per_stage]
    if isinstance(net, (nn.Sequential, nn.ModuleList)) and len(net) > 0:
        for i, m in enumerate(net):
            if not isinstance(m, kinds):
                raise ValueError(f"expected {expected}; member {i} is a {type(m).__name__}, "
                                 f"which is not a residual block")
        kinds_used = sorted({type(m).__name__ for m in net})
        if len(kinds_used) > 1:
            raise ValueError(f"expected {expected}, all blocks of one kind; got a mix of "
                             f"{', '.join(kinds_used)}")
        return list(net)
    raise ValueError(f"expected {expected}; got {type(net).__name__}")


def _check_input(blocks, x0):
    b = blocks[0]
    if isinstance(b, ResidualMLPBlock):
        want, ok = f"(B, {b.fc1.in_features})", x0.ndim == 2 and x0.shape[1] == b.fc1.in_features
    elif isinstance(b, ResidualConvBlock):
        C = b.conv1.in_channels
        want, ok = f"(B, {C}, H, W)", x0.ndim == 4 and x0.shape[1] == C
    else:
        D = b.norm1.normalized_shape[0]
        want, ok = f"(B, T, {D}) tokens", x0.ndim == 3 and x0.shape[2] == D
    if not ok:
        raise ValueError(f"unroll: this network expects x0 of shape {want}, got {tuple(x0.shape)}")


def unroll(net: nn.Module, x0: torch.Tensor) -> Unrolled:
    """The DUAT terms of a serial residual net at a batch of inputs x0.

    x0: (B, dim) for ResidualMLP, (B, C, H, W) for ResidualCNN, (B, T, D) tokens for Transformer
    blocks (for a ParaFormer, model.forward_tokens(images); its final norm and head are outside
    the residual stream and not unrolled). Runs on one CPU thread: the work is many small
    per-example matrix products, for which extra threads only add waiting.
    """
    with torch.no_grad(), threads(1):
        return _unroll(net, x0)


def _unroll(net: nn.Module, x0: torch.Tensor) -> Unrolled:
    blocks = residual_blocks(net)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"unroll expects a floating-point tensor x0, got {type(x0).__name__}")
    _check_input(blocks, x0)
    for m in net.modules():
        rates = [getattr(m, "p", 0.0) if isinstance(m, nn.Dropout) else 0.0, getattr(m, "attn_dropout", 0.0)]
        if isinstance(m, ParallelStage):
            rates.append(m.dropout)
        if m.training and max(rates) > 0:
            raise ValueError(f"unroll needs a deterministic forward pass, but {type(m).__name__} has "
                             f"active dropout in training mode: call net.eval() first")
    steps = list(net.stages) if isinstance(net, ParaFormer) else blocks
    out = Unrolled(x0.flatten(1), shape=tuple(x0.shape[1:]))
    x = x0
    out.stream.append(x0)
    for block, step in zip(blocks, steps):
        if isinstance(block, ResidualMLPBlock):
            out.terms.append(_mlp_term(block, x0, x))
        elif isinstance(block, ResidualConvBlock):
            out.terms.append(_conv_term(block, x0, x))
        else:
            out.terms.append(transformer_term(block, x0, x))
        x = step(x)  # the network's own forward: x_l = x_{l-1} + f_l(x_{l-1})
        out.stream.append(x)
    return out


def unroll_error(net: nn.Module, x0: torch.Tensor) -> float:
    """max |x_0 + sum_l term_l(x_0) - net's residual stream output| over the batch."""
    return unroll(net, x0).max_error()


def _spread(t: torch.Tensor) -> tuple[float, float]:
    """(mean over entries of the std across the batch, mean |entry|)."""
    return t.std(dim=0, unbiased=False).mean().item(), t.abs().mean().item()


def parameter_spread(unrolled: Unrolled) -> list[dict]:
    """Per layer, how much the input-dependent parameters vary across the batch.

    b_tilde_std: std over the batch of b~_l, averaged over hidden units; relative: that over
    mean |b~_l|. For Transformer layers also the spread of the attention sub-layer's matrix
    A_l and of the attention maps, absolute (*_std) and relative to their mean size.
    """
    rows = []
    for l, t in enumerate(unrolled.terms, start=1):
        std, mag = _spread(t.b_tilde)
        row = {"layer": l, "b_tilde_std": std, "b_tilde_mean_abs": mag, "relative": std / mag if mag else 0.0}
        if isinstance(t, TransformerTerm):
            row["A_std"], row["A_mean_abs"] = _spread(t.A)
            row["A_relative"] = row["A_std"] / row["A_mean_abs"] if row["A_mean_abs"] else 0.0
            row["attn_map_std"], map_mag = _spread(t.attn_maps)
            row["attn_map_relative"] = row["attn_map_std"] / map_mag
        rows.append(row)
    return rows
