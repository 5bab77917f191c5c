"""Exercises of notebook 04 (the Para-Former stage and its cost, docs/method.md section 4)."""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from duat.counting import count_parameters
from duat.exercises.core import call, cases, compare, exercise, pick, same_number
from duat.paraformer import Attention, ParaFormer, ParaFormerConfig


def _attention(h, qkv_w, qkv_b, proj_w, proj_b, heads, *, scale=None, softmax_dim=-1,
               proj=True, qkv_order="3h"):
    """A variant of batched attention, for naming a learner's likely mistake (the correct
    answer is the kit's `Attention`, one per branch)."""
    n, B, T, D = h.shape
    hd = D // heads
    qkv = torch.einsum("nbtd,ned->nbte", h, qkv_w) + qkv_b[:, None, None]       # (n, B, T, 3D)
    if qkv_order == "3h":
        q, k, v = qkv.view(n, B, T, 3, heads, hd).permute(3, 0, 1, 4, 2, 5)      # (n, B, h, T, hd)
    else:  # heads outermost: the rows read as (h, 3, hd)
        q, k, v = qkv.view(n, B, T, heads, 3, hd).permute(4, 0, 1, 3, 2, 5)
    s = q @ k.transpose(-1, -2) * (1 / math.sqrt(hd) if scale is None else scale)
    o = (s.softmax(softmax_dim) @ v).transpose(2, 3).reshape(n, B, T, D)
    if not proj:
        return o
    return torch.einsum("nbtd,ned->nbte", o, proj_w) + proj_b[:, None, None]


@exercise("4.1", "the attention of all n branches at once",
          "a function branch_attention(h, qkv_weight, qkv_bias, proj_weight, proj_bias, heads) "
          "returning a_i = Attn_i(h_i) for every branch i as a tensor of shape (n, B, T, D), for "
          "h (n, B, T, D), qkv_weight (n, 3D, D), qkv_bias (n, 3D), proj_weight (n, D, D), "
          "proj_bias (n, D) and an int heads dividing D")
def branch_attention(answer) -> str:
    for i, g in cases():
        n, B, T = 1 + i % 4, 1 + i % 3, 2 + i
        heads, hd = 1 + (i + 1) % 4, 2 + i % 3
        D = heads * hd
        modules = [Attention(D, heads).double() for _ in range(n)]
        with torch.no_grad():
            for m in modules:
                for p in m.parameters():
                    p.normal_(generator=g).mul_(D ** -0.5 if p.dim() == 2 else 0.3)
        h = torch.randn(n, B, T, D, generator=g, dtype=torch.float64)
        W = [torch.stack([m.get_parameter(path).detach() for m in modules])
             for path in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")]
        with torch.no_grad():
            expected = torch.stack([m(h[b]) for b, m in enumerate(modules)])    # (n, B, T, D)
        case = f"case {i}: n = {n} branches, h of shape ({n}, {B}, {T}, {D}), {heads} heads"
        got = call(answer, h, *W, heads, case=case)
        compare(got, expected, case=case, what="the attention outputs a", mistakes=[
            (lambda: _attention(h, *W, heads, scale=1.0), "the scores q k^T are not divided "
             "by sqrt(d), d = D / heads the width of one head."),
            (lambda: _attention(h, *W, heads, scale=D ** -0.5), "the scores are divided by "
             "sqrt(D); the scale is sqrt(d) with d = D / heads, the width of one head."),
            (lambda: _attention(h, *W, heads, softmax_dim=-2), "the softmax runs over the "
             "queries; it normalises each query's row of scores, over the keys (the last axis)."),
            (lambda: _attention(h, *W, heads, proj=False), "the output projection "
             "proj_weight o + proj_bias is missing."),
            (lambda: _attention(h, *W, heads, qkv_order="h3"), "the 3D rows of qkv are q "
             "(D rows), then k, then v, each made of `heads` blocks of D / heads: view the "
             "last axis as (3, heads, D / heads), not (heads, 3, D / heads)."),
            (lambda: _attention(h, *W, 1), "the attention is computed as one head of width D; "
             "split q, k and v into `heads` heads of width D / heads."),
        ])
    return "5 unseen sets of branches, widths and head counts"


def _numel(model, keep) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if keep(name))


def _meta_model(c: ParaFormerConfig) -> ParaFormer:
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        return ParaFormer(c)


@exercise("4.2", "the parameter count of Para-Former-m-n",
          "a function paraformer_parameters(config) returning the number of parameters (an int) "
          "of ParaFormer(config), for a duat.paraformer.ParaFormerConfig config")
def paraformer_parameters(answer) -> str:
    for i, g in cases():
        heads = pick((1, 2, 3, 4), g)
        patch = pick((2, 4), g)
        c = ParaFormerConfig(
            image_size=patch * pick((2, 3, 4), g), patch_size=patch, in_channels=pick((1, 3), g),
            num_classes=pick((2, 10, 100), g), dim=heads * pick((4, 8, 16), g), heads=heads,
            mlp_ratio=pick((1.0, 1.5, 2.0, 4.0), g), depth=1 + i % 3, width=1 + (i + 1) % 4,
            pool="mean" if i % 2 == 0 else "cls", qkv_bias=i != 3)
        model = _meta_model(c)
        total = count_parameters(model)
        case = (f"case {i}: Para-Former-{c.depth}-{c.width}, dim {c.dim}, mlp_ratio "
                f"{c.mlp_ratio}, {c.num_tokens} tokens, pool {c.pool!r}, qkv_bias {c.qkv_bias}, "
                f"{c.in_channels} channel(s), {c.num_classes} classes")
        got = call(answer, replace(c), case=case)
        D, L = c.dim, c.layers
        same_number(got, total, case=case, what="the parameter count", mistakes=[
            (count_parameters(_meta_model(replace(c, width=1))), "only m layers are counted; "
             "Para-Former-m-n has m * n encoder layers (n in each of its m stages)."),
            (count_parameters(_meta_model(replace(c, depth=1))), "only n layers are counted; "
             "Para-Former-m-n has m stages of n layers, m * n in all."),
            (total - _numel(model, lambda k: k.endswith("bias")), "the biases are missing "
             "(every linear layer and every layer norm has one, of its output width)."),
            (total - _numel(model, lambda k: "norm" in k), "the layer norms are missing: two "
             "per layer and one final, each with a weight and a bias of width D."),
            (total - _numel(model, lambda k: k in ("cls_token", "pos_embed")), "the class "
             "token and the position embedding (num_tokens x D) are parameters too."),
            (total - _numel(model, lambda k: k == "pos_embed"), "the position embedding has "
             "one row of D per token: num_tokens x D."),
            (total - (D if c.pool == "cls" else 0), "the position embedding covers the class "
             "token too: num_tokens rows (num_patches + 1 with pool 'cls'), not num_patches."),
            (total + (D if c.pool == "mean" else 0), "there is no class token when pool is "
             "'mean': num_tokens = num_patches and no cls_token parameter."),
            (total + (0 if c.qkv_bias else 3 * D * L), "with qkv_bias=False the query, key and "
             "value projections have no bias."),
            (count_parameters(_meta_model(replace(c, mlp_ratio=1.0))), "the MLP's hidden width "
             "is config.hidden_dim = int(dim * mlp_ratio), not dim."),
            (total - _numel(model, lambda k: k.startswith(("patch_embed", "head"))), "the patch "
             "embedding (a convolution, C p^2 D + D) and the classifier head (D K + K) count too."),
        ])
    return "5 unseen configurations (m, n, widths, pooling, qkv bias)"
