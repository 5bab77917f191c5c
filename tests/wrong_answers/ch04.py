"""Wrong answers to the exercises of notebook 04."""
import torch


def _attention(h, qkv_w, qkv_b, proj_w, proj_b, heads, scale=True, softmax_dim=-1, proj=True):
    n, B, T, D = h.shape
    hd = D // heads
    qkv = torch.einsum("nbtd,ned->nbte", h, qkv_w) + qkv_b[:, None, None]
    q, k, v = qkv.view(n, B, T, 3, heads, hd).permute(3, 0, 1, 4, 2, 5)
    s = q @ k.transpose(-1, -2) / (hd ** 0.5 if scale else 1.0)
    o = (s.softmax(softmax_dim) @ v).transpose(2, 3).reshape(n, B, T, D)
    return torch.einsum("nbtd,ned->nbte", o, proj_w) + proj_b[:, None, None] if proj else o


def _parameters(c, layers=None, biases=True, cls_and_pos=True):
    D, H = c.dim, c.hidden_dim
    layers = c.layers if layers is None else layers
    b = 1 if biases else 0
    layer = 2 * (D + b * D) + 3 * D * D + b * 3 * D * c.qkv_bias + D * D + b * D + 2 * H * D + b * (H + D)
    front = c.in_channels * c.patch_size ** 2 * D + b * D
    tokens = (c.num_tokens * D + D * (c.pool == "cls")) if cls_and_pos else 0
    return front + tokens + layers * layer + D + b * D + D * c.num_classes + b * c.num_classes


WRONG = {
    "4.1": [
        lambda h, qw, qb, pw, pb, heads: _attention(h, qw, qb, pw, pb, heads, scale=False),  # no 1/sqrt(d)
        lambda h, qw, qb, pw, pb, heads: _attention(h, qw, qb, pw, pb, heads, softmax_dim=-2),  # softmax over queries
        lambda h, qw, qb, pw, pb, heads: _attention(h, qw, qb, pw, pb, heads, proj=False),  # no output projection
        lambda h, qw, qb, pw, pb, heads: _attention(h, qw, qb, pw, pb, heads)[0],  # branch 0 only: shape (B, T, D)
    ],
    "4.2": [
        lambda c: _parameters(c, layers=c.depth),          # m layers, not m * n
        lambda c: _parameters(c, biases=False),            # no biases anywhere
        lambda c: _parameters(c, cls_and_pos=False),       # no class token or position embedding
    ],
}
