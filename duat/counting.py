"""Counting what a model costs: parameters, and FLOPs of one forward pass.

FLOPs are counted as 2 per multiply-add of the matrix products (the convention of
torch.utils.flop_counter); norms, activations, softmax and additions are left out, as they
are a few percent at these sizes. The analytic count below is checked against a measured
count in the tests (`measured_flops`).
"""
from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from duat.paraformer import ParaFormerConfig


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_breakdown(config: ParaFormerConfig, batch: int = 1) -> dict[str, int]:
    """FLOPs of one forward pass of ParaFormer(config) on `batch` images, by part."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    c = config
    B, T, D, H, L = batch, c.num_tokens, c.dim, c.hidden_dim, c.layers
    per_layer = {
        "qkv": 2 * B * T * D * 3 * D,
        "attention": 2 * 2 * B * T * T * D,      # Q K^T and softmax(.) V, all heads
        "proj": 2 * B * T * D * D,
        "mlp": 2 * 2 * B * T * D * H,
    }
    out = {"patch_embed": 2 * B * c.num_patches * c.in_channels * c.patch_size ** 2 * D}
    out.update({k: v * L for k, v in per_layer.items()})
    out["head"] = 2 * B * D * c.num_classes
    out["total"] = sum(out.values())
    return out


def flops(config: ParaFormerConfig, batch: int = 1) -> int:
    return flops_breakdown(config, batch)["total"]


def layer_flops(config: ParaFormerConfig, batch: int = 1) -> int:
    """FLOPs of the encoder layers alone (what grows with m * n)."""
    b = flops_breakdown(config, batch)
    return b["qkv"] + b["attention"] + b["proj"] + b["mlp"]


def measured_flops(model, x) -> int:
    """FLOPs counted by torch.utils.flop_counter while running model(x).

    Attention runs on PyTorch's math backend here, so its two matrix products are seen by
    the counter on every device.
    """
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()
