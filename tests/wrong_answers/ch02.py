"""Wrong answers to the exercises of notebook 02."""
import torch
import torch.nn.functional as F


def _conv(kernel, L, padding, flip=False):
    k = kernel.shape[0]
    W = torch.zeros(L + 2 * padding - k + 1, L, dtype=kernel.dtype)
    taps = kernel.flip(0) if flip else kernel
    for i in range(W.shape[0]):
        for j in range(k):
            col = i - padding + j
            if 0 <= col < L:
                W[i, col] = taps[j]
    return W


def _heads(W_v, W_o, H):
    dh = W_v.shape[0] // H
    return [W_o[:, h * dh:(h + 1) * dh] @ W_v[h * dh:(h + 1) * dh] for h in range(H)]


WRONG = {
    "2.1": [
        lambda kernel, L, padding: _conv(kernel, L, padding, flip=True),   # a true convolution
        lambda kernel, L, padding: _conv(kernel, L, padding).T,            # transposed
        lambda kernel, L, padding: _conv(kernel, L, 0),                    # padding ignored
    ],
    "2.2": [
        lambda x: torch.diag(F.gelu(x)),                                   # the output, not the gate
        lambda x: torch.diag(torch.sigmoid(1.702 * x)),                    # an approximation
        lambda x: torch.diag((x > 0).to(x.dtype)),                         # ReLU's gate
        lambda x: 0.5 * (1 + torch.erf(x / 2 ** 0.5)),                     # the diagonal only, (n,)
    ],
    "2.3": [
        lambda A, W_v, W_o: sum(torch.kron(m, A[h]) for h, m in enumerate(_heads(W_v, W_o, A.shape[0]))),
        lambda A, W_v, W_o: sum(torch.kron(A[h], W_o @ W_v) for h in range(A.shape[0])),
        lambda A, W_v, W_o: sum(torch.kron(A[h].T.contiguous(), m) for h, m in enumerate(_heads(W_v, W_o, A.shape[0]))),
    ],
}
