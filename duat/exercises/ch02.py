"""Exercises of notebook 02 (the Matrix-Vector Method, docs/method.md section 2): the matrix of
a 1-D convolution, GELU's gated diagonal, and the matrix of multi-head attention."""
from __future__ import annotations

import torch
from torch import nn

from duat.exercises.core import call, cases, compare, exercise
from duat.theory.mvm import attention_matrix, mvm


@exercise("2.1", "the matrix of a 1-D convolution",
          "a function conv1d_matrix(kernel, L, padding) returning the matrix W of shape "
          "(L + 2*padding - k + 1, L) with W @ x == conv1d(x, kernel, padding) (PyTorch's "
          "cross-correlation, stride 1, zero padding) for a kernel of shape (k,)")
def conv1d_matrix(answer) -> str:
    for i, g in cases():
        k, L = (2, 3, 3, 4, 5)[i - 1], 6 + i
        padding = (0, 1, 2, 1, 2)[i - 1]
        kernel = torch.randn(k, generator=g, dtype=torch.float64)
        # the kit's reference: the MVM of the same convolution as a 1 x k Conv2d on a 1 x L image
        conv = nn.Conv2d(1, 1, (1, k), padding=(0, padding), bias=False).double()
        with torch.no_grad():
            conv.weight.copy_(kernel.view(1, 1, 1, k))
        W, _ = mvm(conv, torch.zeros(1, 1, 1, L, dtype=torch.float64), sparse=False)
        flipped = nn.Conv2d(1, 1, (1, k), padding=(0, padding), bias=False).double()
        with torch.no_grad():
            flipped.weight.copy_(kernel.flip(0).view(1, 1, 1, k))
        case = f"case {i}: kernel of size {k}, L = {L}, padding = {padding}"
        got = call(answer, kernel, L, padding, case=case)
        compare(got, W, case=case, what="W", mistakes=[
            (lambda: mvm(flipped, torch.zeros(1, 1, 1, L, dtype=torch.float64), sparse=False)[0],
             "the kernel is flipped: PyTorch's conv1d is a cross-correlation, row i holds "
             "kernel[0], ..., kernel[k-1] from column i - padding on, unflipped."),
            (lambda: W.T,
             "W is transposed: row i of W is output i, column j input j."),
        ])
    return "5 unseen kernels, lengths and paddings"


@exercise("2.2", "GELU as a gated diagonal",
          "a function gelu_matrix(x) returning the matrix W = diag(Phi(x)) of shape (n, n), "
          "with Phi the standard normal CDF, so that W @ x == GELU(x), for x of shape (n,)")
def gelu_matrix(answer) -> str:
    for i, g in cases():
        n = 4 + 2 * i
        x = torch.randn(n, generator=g, dtype=torch.float64) * (1 + i)
        x[0] = 0.0  # the gate at exactly zero: Phi(0) = 1/2
        W, _ = mvm(nn.GELU(), x, sparse=False)
        case = f"case {i}: x of shape ({n},)"
        got = call(answer, x, case=case)
        compare(got, W, case=case, what="W", mistakes=[
            (lambda: torch.diag(nn.functional.gelu(x)), "that is diag(GELU(x)), the outputs: the "
             "diagonal holds the gate Phi(x), which multiplied by x gives GELU(x)."),
            (lambda: torch.diag((x > 0).to(x.dtype)), "that is ReLU's 0/1 gate; GELU's is the soft "
             "one, Phi(x) = (1 + erf(x / sqrt(2))) / 2."),
            (lambda: torch.diag(torch.sigmoid(x)), "sigmoid(x) is SiLU's gate; GELU's is the normal "
             "CDF, Phi(x) = (1 + erf(x / sqrt(2))) / 2."),
            (lambda: torch.diag(torch.sigmoid(1.702 * x)), "sigmoid(1.702 x) only approximates "
             "Phi(x); nn.GELU() uses the exact erf form."),
            (lambda: torch.diag(0.5 * (1 + torch.erf(x))), "erf needs x / sqrt(2): "
             "Phi(x) = (1 + erf(x / sqrt(2))) / 2."),
        ])
    return "5 unseen inputs (an exact zero in each)"


@exercise("2.3", "the matrix of multi-head attention",
          "a function attention_W(A, W_v, W_o) returning W = sum_h kron(A_h, W_o^h W_v^h) of shape "
          "(T*D, T*D), for attention maps A (H, T, T) and weights W_v, W_o (D, D) whose head h "
          "owns rows h*dh:(h+1)*dh of W_v and the same columns of W_o (dh = D / H)")
def attention_W(answer) -> str:
    for i, g in cases():
        H, dh, T = (1, 2, 2, 3, 4)[i - 1], (3, 2, 3, 2, 1)[i - 1], 2 + i % 3
        D = H * dh
        A = torch.softmax(torch.randn(H, T, T, generator=g, dtype=torch.float64) * 2, dim=-1)
        W_v = torch.randn(D, D, generator=g, dtype=torch.float64)
        W_o = torch.randn(D, D, generator=g, dtype=torch.float64)
        W, _ = attention_matrix(A, W_v, None, W_o, None, sparse=False)
        heads = [W_o[:, h * dh:(h + 1) * dh] @ W_v[h * dh:(h + 1) * dh] for h in range(H)]
        case = f"case {i}: H = {H} heads, T = {T} tokens, D = {D}"
        got = call(answer, A, W_v, W_o, case=case)
        compare(got, W, case=case, what="W", mistakes=[
            (lambda: sum(torch.kron(m, A[h]) for h, m in enumerate(heads)),
             "the Kronecker factors are swapped: row-major vec(A X B) = kron(A, B.T) vec(X), so the "
             "(T, T) attention map comes first, kron(A_h, W_o^h W_v^h)."),
            (lambda: sum(torch.kron(A[h], W_o @ W_v) for h in range(H)),
             "every head uses the whole W_o @ W_v: head h sees only its own value rows "
             "W_v[h*dh:(h+1)*dh] and output columns W_o[:, h*dh:(h+1)*dh]."),
            (lambda: sum(torch.kron(A[h], m.T.contiguous()) for h, m in enumerate(heads)),
             "W_o^h W_v^h is transposed: in y = W x the weights act from the left, (out, in)."),
            (lambda: sum(torch.kron(A[h].T.contiguous(), m) for h, m in enumerate(heads)),
             "A_h is transposed: row t of A_h says how much output token t takes from each input token."),
        ])
    return "5 unseen sets of maps and weights"
