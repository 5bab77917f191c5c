"""The Matrix-Vector Method (docs/method.md section 2): every layer as y = W x + b.

`mvm(module, x)` returns (W, b) with

    module(x).flatten() == W @ x.flatten() + b

exactly (to float rounding) for fixed operations, and - for operations whose matrix depends
on the input (ReLU, GELU, max pooling, layer norm, attention) - with W computed at this x.

    Linear                  W = kron(I_M, W_lin) over the M leading positions (tokens)
    Conv2d                  sparse block-Toeplitz; any stride, padding (incl. 'same' and the
                            reflect / replicate / circular modes), dilation, groups, bias
    AvgPool2d               fixed sparse averaging matrix (ceil_mode, count_include_pad,
                            divisor_override honoured)
    MaxPool2d               input-dependent 0/1 selection matrix
    BatchNorm2d (eval)      diagonal scale and a bias
    ReLU / GELU / SiLU      gated diagonals: ReLU = diag(1[x > 0]), GELU = diag(Phi(x)),
    / Tanh                  SiLU = diag(sigmoid(x)), Tanh = diag(tanh(x) / x) (1 at x = 0)
    LayerNorm               diag(gamma / s(x)) C: a fixed centring matrix C, then an
                            input-dependent diagonal; block-diagonal over positions
    MultiheadAttention and  W = sum_h kron(A_h(x), W_o^h W_v^h): the attention maps A_h are the
    duat.paraformer.Attention input-dependent weights
    Flatten, Unflatten, Identity, Dropout (eval)   the identity
    Sequential              the product of its members' matrices

Input `x` is ONE example. Operations with a batch axis (Conv2d, pooling, BatchNorm2d,
attention) take it with a leading batch of 1 or - where the module itself accepts that -
without. Token-wise operations (Linear, LayerNorm, activations) act on every leading index
of x as one position of the same vector, so W is block-diagonal over those positions.

Size policy: W is dense when it has at most DENSE_LIMIT entries, else a coalesced
torch.sparse_coo_tensor; when even the stored nonzeros would exceed SPARSE_LIMIT (or a
matrix that is dense by nature, like attention's, exceeds DENSE_LIMIT) a
MatrixTooLargeError names the sizes. Pass sparse=True/False to force a format.
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from duat.paraformer import Attention

DENSE_LIMIT = 2**24   # entries of a dense W: 16.8 M (64 MiB in float32, 128 MiB in float64)
SPARSE_LIMIT = 2**25  # stored nonzeros of a sparse W: 33.6 M (about 0.7 GiB with int64 indices)


class MatrixTooLargeError(MemoryError):
    """The matrix of an operation would not fit under the documented limits."""


# ----------------------------------------------------------------------------- matrices

def _check_nnz(nnz: int, shape: tuple[int, int], what: str) -> None:
    if nnz > SPARSE_LIMIT:
        raise MatrixTooLargeError(
            f"{what}: W would be {shape[0]} x {shape[1]} with {nnz:,} stored nonzeros, over "
            f"SPARSE_LIMIT = {SPARSE_LIMIT:,}; use a smaller input (H, W, tokens) or channels")


def _want_sparse(shape: tuple[int, int], sparse: bool | None, what: str) -> bool:
    entries = shape[0] * shape[1]
    if sparse is None:
        return entries > DENSE_LIMIT
    if not sparse and entries > DENSE_LIMIT:
        raise MatrixTooLargeError(f"{what}: a dense W of {shape[0]} x {shape[1]} = {entries:,} entries "
                                  f"is over DENSE_LIMIT = {DENSE_LIMIT:,}; use sparse=None or True")
    return bool(sparse)


def _from_coo(rows, cols, vals, shape, sparse, what) -> torch.Tensor:
    """A matrix from (row, col, value) triples; duplicates are summed."""
    _check_nnz(vals.numel(), shape, what)
    if _want_sparse(shape, sparse, what):
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape, check_invariants=False).coalesce()
    W = torch.zeros(shape, dtype=vals.dtype, device=vals.device)
    return W.index_put_((rows, cols), vals, accumulate=True)


def _from_dense(W: torch.Tensor, sparse, what) -> torch.Tensor:
    shape = tuple(W.shape)
    if _want_sparse(shape, sparse, what):
        _check_nnz(int((W != 0).sum()), shape, what)
        return W.to_sparse().coalesce()
    return W


def _block_diag(blocks: torch.Tensor, sparse, what) -> torch.Tensor:
    """blockdiag(blocks[0], ..., blocks[M-1]) for blocks (M, p, q)."""
    M, p, q = blocks.shape
    if M == 1:
        return _from_dense(blocks[0], sparse, what)
    _check_nnz(M * p * q, (M * p, M * q), what)
    m, i, j = torch.meshgrid(torch.arange(M), torch.arange(p), torch.arange(q), indexing="ij")
    return _from_coo((m * p + i).flatten(), (m * q + j).flatten(), blocks.flatten(), (M * p, M * q), sparse, what)


def _diag(d: torch.Tensor, sparse, what) -> torch.Tensor:
    idx = torch.arange(d.numel(), device=d.device)
    return _from_coo(idx, idx, d.flatten(), (d.numel(), d.numel()), sparse, what)


def matvec(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W @ v for a dense or sparse W and a vector v."""
    return torch.sparse.mm(W, v[:, None])[:, 0] if W.is_sparse else W @ v


def matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A @ B for dense or sparse matrices; sparse if either is sparse or the result is large."""
    shape = (A.shape[0], B.shape[1])
    if not A.is_sparse and not B.is_sparse and shape[0] * shape[1] <= DENSE_LIMIT:
        return A @ B
    A = A if A.is_sparse else A.to_sparse()
    B = B if B.is_sparse else B.to_sparse()
    with warnings.catch_warnings():  # torch notes that its internal CSR path is 'beta'
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        C = torch.sparse.mm(A, B).coalesce()
    _check_nnz(C._nnz(), shape, "matrix product")
    return C


def apply(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """W @ x.flatten() + b: what the MVM says module(x).flatten() is."""
    return matvec(W, x.flatten()) + b


def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x); nn.MultiheadAttention is called as self-attention, module(x, x, x)[0]."""
    if isinstance(module, nn.MultiheadAttention):
        return module(x, x, x, need_weights=False)[0]
    return module(x)


def mvm_error(module: nn.Module, x: torch.Tensor, **kwargs) -> float:
    """max |module(x).flatten() - (W x + b)|: the check every MVM rule must pass."""
    with torch.no_grad():
        W, b = mvm(module, x, **kwargs)
        return (forward(module, x).flatten() - apply(W, b, x)).abs().max().item()


# ----------------------------------------------------------------------------- checks

def _one_image(module: nn.Module, x: torch.Tensor, channels: int | None, allow_unbatched: bool = True) -> torch.Tensor:
    """Validate one (C, H, W) or (1, C, H, W) image (C = channels unless None); return (1, C, H, W)."""
    name = type(module).__name__
    c = "C" if channels is None else channels
    expected = f"(1, {c}, H, W)" + (f" or ({c}, H, W)" if allow_unbatched else "")
    if x.ndim == 3 and allow_unbatched:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{name}: MVM expects one image of shape {expected}, got {tuple(x.shape)}")
    return x


def _one_sequence(module: nn.Module, x: torch.Tensor, dim: int, batch_axis: int | None) -> torch.Tensor:
    """Validate one token sequence (T, D), or with a batch of 1 on batch_axis; return (T, D)."""
    if x.ndim == 3 and batch_axis is not None and x.shape[batch_axis] == 1:
        x = x.select(batch_axis, 0)
    if x.ndim != 2 or x.shape[1] != dim:
        batched = "(1, T, D)" if batch_axis == 0 else "(T, 1, D)"
        allowed = f"(T, {dim}) or {batched}" if batch_axis is not None else f"(T, {dim})"
        raise ValueError(f"{type(module).__name__}: MVM expects one sequence of shape {allowed} "
                         f"with D = {dim}, got {tuple(x.shape)}")
    return x


def _no_training(module: nn.Module, why: str) -> None:
    if module.training:
        raise ValueError(f"{type(module).__name__} is in training mode; the MVM needs eval mode "
                         f"({why}): call module.eval() first")


# ----------------------------------------------------------------------------- rules

def _linear(m: nn.Linear, x, sparse):
    if x.ndim == 0 or x.shape[-1] != m.in_features:
        raise ValueError(f"Linear: expects x of shape (..., {m.in_features}), got {tuple(x.shape)}")
    M = x.numel() // m.in_features
    W = _block_diag(m.weight.detach().expand(M, -1, -1), sparse, "Linear")
    b = m.bias.detach().repeat(M) if m.bias is not None else x.new_zeros(M * m.out_features)
    return W, b


def _pad_index(i: torch.Tensor, n: int, mode: str):
    """Map an index into the padded axis (already shifted by -pad) to a source index and a mask."""
    if mode == "zeros":
        ok = (i >= 0) & (i < n)
        return i.clamp(0, n - 1), ok
    if mode == "replicate":
        i = i.clamp(0, n - 1)
    elif mode == "circular":
        i = i.remainder(n)
    elif mode == "reflect":
        i = i.abs()
        i = torch.where(i >= n, 2 * (n - 1) - i, i)
    else:
        raise NotImplementedError(f"Conv2d padding_mode {mode!r}")
    return i, torch.ones_like(i, dtype=torch.bool)


def _conv2d(m: nn.Conv2d, x, sparse):
    x = _one_image(m, x, m.in_channels)
    _, C, H, Wd = x.shape
    _, Co, Ho, Wo = m(x).shape
    (kh, kw), (sh, sw), (dh, dw), g = m.kernel_size, m.stride, m.dilation, m.groups
    if isinstance(m.padding, str):  # 'valid' or 'same' (torch puts the odd pixel at the end)
        ph, pw = (0, 0) if m.padding == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    else:
        ph, pw = m.padding
    cin_g, cout_g = C // g, Co // g
    _check_nnz(Co * Ho * Wo * cin_g * kh * kw, (Co * Ho * Wo, C * H * Wd), "Conv2d")
    ar = lambda n, axis: torch.arange(n, device=x.device).view([-1 if a == axis else 1 for a in range(6)])
    co, ci, ki, kj, oh, ow = (ar(n, a) for a, n in enumerate((Co, cin_g, kh, kw, Ho, Wo)))
    ih, okh = _pad_index(oh * sh - ph + ki * dh, H, m.padding_mode)
    iw, okw = _pad_index(ow * sw - pw + kj * dw, Wd, m.padding_mode)
    cin = (co // cout_g) * cin_g + ci
    full = (Co, cin_g, kh, kw, Ho, Wo)
    rows = (co * Ho * Wo + oh * Wo + ow).expand(full)
    cols = (cin * H * Wd + ih * Wd + iw).expand(full)
    vals = m.weight.detach().view(Co, cin_g, kh, kw, 1, 1).expand(full)
    keep = (okh & okw).expand(full)
    W = _from_coo(rows[keep], cols[keep], vals[keep], (Co * Ho * Wo, C * H * Wd), sparse, "Conv2d")
    b = (m.bias.detach().repeat_interleave(Ho * Wo) if m.bias is not None else x.new_zeros(Co * Ho * Wo))
    return W, b


def _avgpool2d(m: nn.AvgPool2d, x, sparse):
    x = _one_image(m, x, None)
    _, C, H, Wd = x.shape
    _, _, Ho, Wo = m(x).shape
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)
    (kh, kw), (ph, pw) = pair(m.kernel_size), pair(m.padding)
    sh, sw = pair(m.stride if m.stride is not None else m.kernel_size)

    def axis(n_out, n_in, k, s, p):  # per output index: window start, clipped bounds, padded size
        start = torch.arange(n_out) * s - p
        end = torch.minimum(start + k, torch.tensor(n_in + p))
        return start, start.clamp(min=0), end.clamp(max=n_in), end - start

    hs0, hs, he, hsize = axis(Ho, H, kh, sh, ph)
    ws0, ws, we, wsize = axis(Wo, Wd, kw, sw, pw)
    if m.divisor_override:
        div = torch.full((Ho, Wo), float(m.divisor_override), dtype=torch.float64)
    elif m.count_include_pad:
        div = (hsize[:, None] * wsize[None, :]).double()
    else:
        div = ((he - hs)[:, None] * (we - ws)[None, :]).double()
    c = torch.arange(C).view(C, 1, 1, 1, 1)
    ki, kj = torch.arange(kh).view(1, kh, 1, 1, 1), torch.arange(kw).view(1, 1, kw, 1, 1)
    oh, ow = torch.arange(Ho).view(1, 1, 1, Ho, 1), torch.arange(Wo).view(1, 1, 1, 1, Wo)
    ih, iw = hs0.view(1, 1, 1, Ho, 1) + ki, ws0.view(1, 1, 1, 1, Wo) + kj
    full = (C, kh, kw, Ho, Wo)
    keep = ((ih >= hs.view(1, 1, 1, Ho, 1)) & (ih < he.view(1, 1, 1, Ho, 1))
            & (iw >= ws.view(1, 1, 1, 1, Wo)) & (iw < we.view(1, 1, 1, 1, Wo))).expand(full)
    rows = (c * Ho * Wo + oh * Wo + ow).expand(full)[keep]
    cols = (c * H * Wd + ih * Wd + iw).expand(full)[keep]
    vals = (1.0 / div).to(x.dtype).view(1, 1, 1, Ho, Wo).expand(full)[keep]
    return _from_coo(rows, cols, vals, (C * Ho * Wo, C * H * Wd), sparse, "AvgPool2d"), x.new_zeros(C * Ho * Wo)


def _maxpool2d(m: nn.MaxPool2d, x, sparse):
    x = _one_image(m, x, None)
    _, C, H, Wd = x.shape
    _, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
    idx = idx[0]  # (C, Ho, Wo): the winner's position in its H*W plane
    cols = (idx + torch.arange(C).view(C, 1, 1) * H * Wd).flatten()
    rows = torch.arange(cols.numel())
    W = _from_coo(rows, cols, x.new_ones(cols.numel()), (cols.numel(), C * H * Wd), sparse, "MaxPool2d")
    return W, x.new_zeros(cols.numel())


def _batchnorm2d(m: nn.BatchNorm2d, x, sparse):
    _no_training(m, "training mode normalises by the batch's own statistics")
    if m.running_mean is None:
        raise ValueError("BatchNorm2d with track_running_stats=False normalises by batch statistics "
                         "even in eval mode; the MVM needs running statistics")
    x = _one_image(m, x, m.num_features, allow_unbatched=False)
    HW = x.shape[2] * x.shape[3]
    scale = torch.rsqrt(m.running_var + m.eps)
    if m.weight is not None:
        scale = scale * m.weight.detach()
    shift = -m.running_mean * scale + (m.bias.detach() if m.bias is not None else 0)
    return _diag(scale.repeat_interleave(HW), sparse, "BatchNorm2d"), shift.repeat_interleave(HW)


def _gate(m: nn.Module, x):
    """The diagonal of a gated activation act(x) = x * gate(x)."""
    if isinstance(m, nn.ReLU):
        return (x > 0).to(x.dtype)
    if isinstance(m, nn.SiLU):
        return torch.sigmoid(x)
    if isinstance(m, nn.Tanh):  # tanh(x) / x, with its limit 1 at x = 0
        return torch.where(x == 0, torch.ones_like(x), torch.tanh(x) / x)
    if m.approximate == "tanh":
        return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * (1 + torch.erf(x * (1 / math.sqrt(2))))  # GELU: Phi(x)


def _activation(m, x, sparse):
    return _diag(_gate(m, x), sparse, type(m).__name__), x.new_zeros(x.numel())


def _identity(m, x, sparse):
    if isinstance(m, nn.Dropout) and m.p > 0:
        _no_training(m, "training-mode dropout is random")
    return _diag(x.new_ones(x.numel()), sparse, type(m).__name__), x.new_zeros(x.numel())


def _layernorm(m: nn.LayerNorm, x, sparse):
    k = len(m.normalized_shape)
    if tuple(x.shape[x.ndim - k:]) != tuple(m.normalized_shape):
        raise ValueError(f"LayerNorm: expects x of shape (..., {', '.join(map(str, m.normalized_shape))}), "
                         f"got {tuple(x.shape)}")
    n = math.prod(m.normalized_shape)
    v = x.reshape(-1, n)  # (M, n): one row per position
    inv_s = torch.rsqrt(v.var(dim=1, unbiased=False) + m.eps)  # (M,)  input-dependent
    C = torch.eye(n, dtype=x.dtype, device=x.device) - 1.0 / n  # fixed centring matrix
    gamma = m.weight.detach().flatten() if m.weight is not None else x.new_ones(n)
    beta = m.bias.detach().flatten() if m.bias is not None else x.new_zeros(n)
    blocks = (gamma[None, :, None] * inv_s[:, None, None]) * C  # (M, n, n) = diag(gamma / s) C
    return _block_diag(blocks, sparse, "LayerNorm"), beta.repeat(v.shape[0])


def attention_matrix(A: torch.Tensor, W_v: torch.Tensor, b_v, W_o: torch.Tensor, b_o, sparse=None,
                     what: str = "attention"):
    """(W, b) of Y = sum_h A_h (X W_v^h.T + b_v^h) W_o^h.T + b_o on the row-major vec(X).

    A (H, T, T) attention maps, W_v (D, D) value rows (heads contiguous), W_o (D, D).
    Row-major vec(A X B) = kron(A, B.T) vec(X), so W = sum_h kron(A_h, W_o^h W_v^h).
    """
    H, T, _ = A.shape
    D = W_v.shape[1]
    dh = W_v.shape[0] // H
    if T * D * T * D > DENSE_LIMIT:  # dense by nature: sparse storage would not help
        raise MatrixTooLargeError(f"{what}: W is dense, {T * D} x {T * D} = {(T * D) ** 2:,} entries "
                                  f"(T = {T} tokens, D = {D}), over DENSE_LIMIT = {DENSE_LIMIT:,}")
    M = torch.einsum("ihd,hdj->hij", W_o.view(D, H, dh), W_v.view(H, dh, D))  # (H, D, D) = W_o^h W_v^h
    W = torch.einsum("hts,hij->tisj", A, M).reshape(T * D, T * D)
    b = torch.zeros(T, D, dtype=A.dtype, device=A.device)
    if b_v is not None:  # rows of A sum to 1, but keep the general form A_h 1 (x) W_o^h b_v^h
        b = b + torch.einsum("hts,hi->ti", A, torch.einsum("ihd,hd->hi", W_o.view(D, H, dh), b_v.view(H, dh)))
    if b_o is not None:
        b = b + b_o
    return _from_dense(W, sparse, what), b.flatten()


def _multihead_attention(m: nn.MultiheadAttention, x, sparse):
    if m.dropout > 0:
        _no_training(m, "attention dropout is random")
    if m.bias_k is not None or m.add_zero_attn:
        raise NotImplementedError("MultiheadAttention with add_bias_kv or add_zero_attn has no MVM rule here")
    if not m._qkv_same_embed_dim:
        raise ValueError(f"MultiheadAttention: the MVM treats self-attention, which needs kdim == vdim == "
                         f"embed_dim = {m.embed_dim}; got kdim = {m.kdim}, vdim = {m.vdim}")
    X = _one_sequence(m, x, m.embed_dim, 0 if m.batch_first else 1)
    _, A = m(X, X, X, need_weights=True, average_attn_weights=False)  # (H, T, T)
    D = m.embed_dim
    W_v = m.in_proj_weight[2 * D:]
    b_v = m.in_proj_bias[2 * D:] if m.in_proj_bias is not None else None
    return attention_matrix(A.detach(), W_v.detach(), None if b_v is None else b_v.detach(),
                            m.out_proj.weight.detach(),
                            None if m.out_proj.bias is None else m.out_proj.bias.detach(), sparse,
                            "MultiheadAttention")


def kit_attention_maps(m, X):
    """Attention maps softmax(Q_h K_h^T / sqrt(d)) of duat.paraformer.Attention for X (T, D);
    a causal attention's scores are -inf above the diagonal (a query sees itself and before)."""
    T, D = X.shape
    q, k, _ = m.qkv(X).view(T, 3, m.heads, m.head_dim).permute(1, 2, 0, 3)  # each (H, T, dh)
    scores = q @ k.transpose(-1, -2) / math.sqrt(m.head_dim)                 # (H, T, T)
    if getattr(m, "causal", False):
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=X.device).tril(),
                                    float("-inf"))
    return torch.softmax(scores, dim=-1)                                     # (H, T, T)


def _kit_attention(m, x, sparse):
    if m.training and (m.attn_dropout > 0 or m.proj_drop.p > 0):
        _no_training(m, "attention dropout is random")
    D = m.qkv.in_features
    if x.ndim != 3 or x.shape[0] != 1:  # its forward needs the batch axis
        raise ValueError(f"Attention: MVM expects one sequence of shape (1, T, {D}), got {tuple(x.shape)}")
    X = _one_sequence(m, x, D, 0)
    D = X.shape[1]
    A = kit_attention_maps(m, X).detach()
    b_v = m.qkv.bias[2 * D:].detach() if m.qkv.bias is not None else None
    return attention_matrix(A, m.qkv.weight[2 * D:].detach(), b_v, m.proj.weight.detach(),
                            None if m.proj.bias is None else m.proj.bias.detach(), sparse, "Attention")


def _sequential(m: nn.Sequential, x, sparse):
    W = b = None
    for i, layer in enumerate(m):
        Wi, bi = mvm(layer, x, sparse=None if sparse is None else True)
        x = forward(layer, x)
        W, b = (Wi, bi) if W is None else (matmul(Wi, W), matvec(Wi, b) + bi)
    if W is None:
        return _identity(nn.Identity(), x, sparse)
    if sparse is None and W.is_sparse and W.shape[0] * W.shape[1] <= DENSE_LIMIT:
        W = W.to_dense()
    elif sparse is False and W.is_sparse:
        W = _from_dense(W.to_dense(), False, "Sequential")
    return W, b


RULES = ((nn.Linear, _linear), (nn.Conv2d, _conv2d), (nn.AvgPool2d, _avgpool2d),
         (nn.MaxPool2d, _maxpool2d), (nn.BatchNorm2d, _batchnorm2d),
         ((nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh), _activation), (nn.LayerNorm, _layernorm),
         (nn.MultiheadAttention, _multihead_attention), (Attention, _kit_attention),
         ((nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout), _identity),
         (nn.Sequential, _sequential))


SUPPORTED = ("Linear, Conv2d, AvgPool2d, MaxPool2d, BatchNorm2d (eval), ReLU, GELU, SiLU, Tanh, LayerNorm, "
             "MultiheadAttention, duat.paraformer.Attention, Flatten, Unflatten, Identity, "
             "Dropout (eval), Sequential of these")


def mvm(module: nn.Module, x: torch.Tensor, sparse: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) such that module(x).flatten() == W @ x.flatten() + b (W taken at this x).

    x: one example (see the module docstring for the accepted shapes). sparse: None picks
    dense up to DENSE_LIMIT entries and sparse COO beyond; True / False force a format.
    Raises NotImplementedError naming the module type when there is no rule for it.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"mvm expects a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"mvm expects a floating-point torch.Tensor x, got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    p = next(module.parameters(), None)
    if p is not None and p.dtype != x.dtype:
        raise TypeError(f"{type(module).__name__} has {p.dtype} parameters but x is {x.dtype}; "
                        f"convert one of them (e.g. module.double() and x.double())")
    for kind, rule in RULES:
        if isinstance(module, kind):
            with torch.no_grad():
                return rule(module, x, sparse)
    raise NotImplementedError(f"no MVM rule for module type {type(module).__name__}; supported: {SUPPORTED}")
