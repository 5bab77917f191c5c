"""Loading torchvision's Vision Transformer into Para-Former, exactly (docs/method.md section 4).

A serial ViT with L layers *is* Para-Former-L-1, so the weights of torchvision's
`VisionTransformer` (vit_b_16 and its family, or one built with any other sizes) load one
to one into `ParaFormer(depth=L, width=1)` and the logits are the same. This module holds
the exact correspondence, both ways; duat.transfer places the blocks on a layout and builds
the model (`from_torchvision`, `transfer`), with the one builder there.

    vit_config(vit, **overrides)               -> the ParaFormerConfig of Para-Former-L-1
    torchvision_parts(vit)                     -> (outer tensors, one Block-named dict per layer)
    paraformer_parts(model)                    -> the same for a ParaFormer (stage-major)
    TORCHVISION_LAYER_KEYS, TORCHVISION_OUTER_KEYS   the name tables between the two
    resample_pos_embed(pos, grid)              -> the position embedding of a new patch grid
    to_torchvision(model)                      -> VisionTransformer (serial models only)
    reference_view(model), compare_models(a, b, x)   the largest output and gradient
                                                  differences of two ParaFormers of one layout
                                                  (e.g. the batched and the reference stage)

ASSIGNMENTS names the two rules that place L blocks on an m x n layout ("stage-major",
"strided"; duat.transfer.place_blocks).

Differences kept visible: torchvision's MLP also drops out after its GELU (ours only after
the second linear layer), so outputs agree exactly in eval mode or with dropout 0.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import VisionTransformer

from duat.paraformer import STACKED, ParaFormer, ParaFormerConfig
from duat.storage import load_state_dict_checked

ASSIGNMENTS = ("stage-major", "strided")   # where block k of an m x n layout goes (duat.transfer)

# one torchvision encoder layer -> one Block (names inside Block)
TORCHVISION_LAYER_KEYS = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "self_attention.in_proj_weight": "attn.qkv.weight",   # rows q, k, v; heads contiguous
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight",
    "self_attention.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
    "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias",
}
# front end and head: torchvision name -> ParaFormer name
TORCHVISION_OUTER_KEYS = {
    "conv_proj.weight": "patch_embed.weight", "conv_proj.bias": "patch_embed.bias",
    "class_token": "cls_token",
    "encoder.pos_embedding": "pos_embed",
    "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
    "heads.head.weight": "head.weight", "heads.head.bias": "head.bias",
}


# ----------------------------------------------------------------------------- state dicts

def paraformer_parts(model: ParaFormer) -> tuple[dict, list[dict]]:
    """(outer tensors, its blocks as Block-named dicts in stage-major order)."""
    sd = model.state_dict()
    outer = {k: v for k, v in sd.items() if not k.startswith("stages.")}
    block_states = [{k: v.detach() for k, v in block.state_dict().items()}
                    for row in model.blocks() for block in row]
    return outer, block_states


# ----------------------------------------------------------------------------- torchvision

def _check_torchvision_vit(vit) -> None:
    if not isinstance(vit, VisionTransformer):
        raise TypeError(f"expected a torchvision.models.VisionTransformer, got {type(vit).__name__}")
    if not isinstance(vit.conv_proj, nn.Conv2d):
        raise ValueError("this ViT has a convolutional stem (conv_stem_configs); only the plain "
                         "patch embedding (one Conv2d) maps onto ParaFormer")
    if getattr(vit, "representation_size", None) is not None or hasattr(vit.heads, "pre_logits"):
        raise ValueError("this ViT has a pre-logits layer (representation_size="
                         f"{vit.representation_size}); ParaFormer's head is a single linear layer")
    norms = [vit.encoder.ln] + [m for layer in vit.encoder.layers for m in (layer.ln_1, layer.ln_2)]
    if not all(isinstance(m, nn.LayerNorm) and m.elementwise_affine for m in norms):
        raise ValueError("this ViT's norm_layer is not an affine nn.LayerNorm")
    if len({m.eps for m in norms}) != 1:
        raise ValueError("this ViT's LayerNorms use different eps values")
    for layer in vit.encoder.layers:
        a = layer.self_attention
        if (not a._qkv_same_embed_dim or a.in_proj_bias is None or a.bias_k is not None
                or a.add_zero_attn):
            raise ValueError("unsupported MultiheadAttention settings (separate q/k/v projections, "
                             "no in_proj bias, bias_k/bias_v or add_zero_attn)")


def vit_config(vit, **overrides) -> ParaFormerConfig:
    """The ParaFormerConfig matching a torchvision VisionTransformer: Para-Former-L-1.

    `overrides` may change num_classes (a fresh head), image_size (the position embedding is
    resampled), in_channels (1: grey images), dropout, attn_dropout, stage, debug_checks;
    duat.transfer's builder fits the weights to them.
    """
    _check_torchvision_vit(vit)
    allowed = {"num_classes", "image_size", "in_channels", "dropout", "attn_dropout", "stage",
               "debug_checks"}
    unknown = set(overrides) - allowed
    if unknown:
        raise ValueError(f"option(s) {sorted(unknown)} cannot be changed when converting a "
                         f"pre-trained ViT; allowed: {sorted(allowed)}")
    if overrides.get("in_channels", 3) not in (1, 3):
        raise ValueError(f"in_channels must be 3 (as pre-trained) or 1 (grey: the RGB filters "
                         f"are summed), got {overrides['in_channels']!r}")
    D, H = vit.hidden_dim, vit.mlp_dim
    mlp_ratio = H / D
    if int(D * mlp_ratio) != H:   # float rounding: nudge so that int(D * ratio) == H
        mlp_ratio = (H + 0.5) / D
    fields = dict(image_size=vit.image_size, patch_size=vit.patch_size, in_channels=3,
                  num_classes=vit.heads.head.out_features, dim=D,
                  heads=vit.encoder.layers[0].self_attention.num_heads, mlp_ratio=mlp_ratio,
                  depth=len(vit.encoder.layers), width=1, pool="cls", dropout=vit.dropout,
                  attn_dropout=vit.attention_dropout, norm_eps=vit.encoder.ln.eps, qkv_bias=True)
    fields.update(overrides)
    return ParaFormerConfig(**fields)


def torchvision_parts(vit) -> tuple[dict, list[dict]]:
    """(outer tensors in ParaFormer's names, one Block-named dict per encoder layer)."""
    _check_torchvision_vit(vit)
    sd = vit.state_dict()
    outer = {new: sd[old].detach() for old, new in TORCHVISION_OUTER_KEYS.items()}
    block_states = []
    for name, _ in vit.encoder.layers.named_children():
        prefix = f"encoder.layers.{name}."
        block_states.append({new: sd[prefix + old].detach()
                             for old, new in TORCHVISION_LAYER_KEYS.items()})
    return outer, block_states


def resample_pos_embed(pos: torch.Tensor, grid: int, num_prefix: int = 1) -> torch.Tensor:
    """(1, prefix + g*g, D) -> (1, prefix + grid*grid, D): the patch positions resampled
    bicubically on their 2-D grid, the class-token position kept."""
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    g = int(round(patches.shape[1] ** 0.5))
    if g * g != patches.shape[1]:
        raise ValueError(f"position embedding has {patches.shape[1]} patch positions, not a square grid")
    if g == grid:
        return pos
    D = pos.shape[-1]
    img = patches.reshape(1, g, g, D).permute(0, 3, 1, 2).float()          # (1, D, g, g)
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = img.permute(0, 2, 3, 1).reshape(1, grid * grid, D).to(pos.dtype)
    return torch.cat([prefix, patches], dim=1)


def to_torchvision(model: ParaFormer):
    """The serial ParaFormer(depth=L, width=1) as a torchvision VisionTransformer (same logits)."""
    if not isinstance(model, ParaFormer):
        raise TypeError(f"expected a ParaFormer, got {type(model).__name__}")
    c = model.config
    problems = []
    if c.width != 1:
        problems.append(f"width n = {c.width} (a ViT is Para-Former-L-1: n must be 1)")
    if c.pool != "cls":
        problems.append(f"pool = {c.pool!r} (torchvision's ViT reads the class token: 'cls')")
    if c.in_channels != 3:
        problems.append(f"in_channels = {c.in_channels} (torchvision's ViT takes 3)")
    if not c.qkv_bias:
        problems.append("qkv_bias = False (torchvision's attention has an input-projection bias)")
    if problems:
        raise ValueError("no torchvision VisionTransformer equivalent: " + "; ".join(problems))
    vit = VisionTransformer(image_size=c.image_size, patch_size=c.patch_size, num_layers=c.depth,
                            num_heads=c.heads, hidden_dim=c.dim, mlp_dim=c.hidden_dim,
                            dropout=c.dropout, attention_dropout=c.attn_dropout,
                            num_classes=c.num_classes,
                            norm_layer=partial(nn.LayerNorm, eps=c.norm_eps))
    outer, block_states = paraformer_parts(model)
    sd = {old: outer[new] for old, new in TORCHVISION_OUTER_KEYS.items()}
    for l, (name, _) in enumerate(vit.encoder.layers.named_children()):
        for old, new in TORCHVISION_LAYER_KEYS.items():
            sd[f"encoder.layers.{name}.{old}"] = block_states[l][new]
    load_state_dict_checked(vit, sd)
    like = next(model.parameters())
    return vit.to(device=like.device, dtype=like.dtype).train(model.training)


# ----------------------------------------------------------------------------- checks

def reference_view(model: ParaFormer, grads: bool = False) -> dict[str, torch.Tensor]:
    """The parameters (or their gradients) under reference-stage names, whatever the stage
    implementation: a batched stage's stacked tensor is split into its n branches."""
    stacked_paths = dict(STACKED)
    out = {}
    for name, p in model.named_parameters():
        if grads and not p.requires_grad:   # frozen: nothing to compare
            continue
        t = p.grad if grads else p.detach()
        if t is None:
            raise ValueError(f"{name} has no gradient; run a backward pass first")
        parts = name.split(".")
        if parts[0] == "stages" and len(parts) == 3 and parts[2] in stacked_paths:
            for i in range(t.shape[0]):
                out[f"stages.{parts[1]}.blocks.{i}.{stacked_paths[parts[2]]}"] = t[i]
        else:
            out[name] = t
    return out


def compare_models(a: ParaFormer, b: ParaFormer, x: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Largest |a(x) - b(x)| ("forward") and largest difference of corresponding gradients of
    the loss sum((logits - target)^2), target random (seeded): absolute ("grad") and relative
    to the largest entry of that gradient ("grad_rel"). Gradients are cleared afterwards."""
    for model in (a, b):
        if not isinstance(model, ParaFormer):
            raise TypeError(f"expected ParaFormer models, got {type(model).__name__}")
        model.zero_grad(set_to_none=True)
    try:
        ya, yb = a(x), b(x)
        if ya.shape != yb.shape:
            raise ValueError(f"the models' outputs differ in shape: {tuple(ya.shape)} vs "
                             f"{tuple(yb.shape)}")
        g = torch.Generator().manual_seed(seed)
        target = torch.randn(ya.shape, generator=g).to(ya.device, ya.dtype)
        ((ya - target) ** 2).sum().backward()
        ((yb - target) ** 2).sum().backward()
        ga, gb = reference_view(a, grads=True), reference_view(b, grads=True)
        if ga.keys() != gb.keys():
            raise ValueError(f"the models' parameters do not correspond: only in a: "
                             f"{sorted(set(ga) - set(gb))}, only in b: {sorted(set(gb) - set(ga))}")
        grad = max((ga[k] - gb[k]).abs().max().item() for k in ga)
        grad_rel = max((ga[k] - gb[k]).abs().max().item() / max(gb[k].abs().max().item(), 1e-30)
                       for k in ga)
        forward = (ya - yb).abs().max().item()
    finally:
        a.zero_grad(set_to_none=True), b.zero_grad(set_to_none=True)
    return {"forward": forward, "grad": grad, "grad_rel": grad_rel}
