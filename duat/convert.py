"""Loading torchvision's Vision Transformer into Para-Former, exactly (PAPER.md section 4).

A serial ViT with L layers *is* Para-Former-L-1, so the weights of torchvision's
`VisionTransformer` (vit_b_16 and its family, or one built with any other sizes) load one
to one into `ParaFormer(depth=L, width=1)` and the logits are the same. The same L
pre-trained blocks can also be laid out as Para-Former-m-n, as the starting point for
fine-tuning (that model computes a different function: its branches read one input).

Where block l goes in an m x n layout is a rule, `assignment`:

    "stage-major"  k -> stage k // n, branch k % n   consecutive blocks share a stage:
                                                    stage s holds blocks s*n .. s*n + n-1
    "strided"      k -> stage k % m,  branch k // m  stage s holds blocks s, s+m, s+2m, ...

where k runs over `blocks`, the list of m*n source blocks (default: all L of them, in
order, so m*n must equal L). An explicit `blocks=[...]` selects, reorders or repeats
blocks, e.g. blocks=[0, 1, 2, 3] keeps the first four of twelve.

    place_blocks(L, m, n, assignment, blocks)  -> placement[stage][branch] = source block
    from_torchvision(vit, depth, width, ...)   -> ParaFormer
    redistribute(model, depth, width, ...)     -> a ParaFormer's blocks in a new layout
    to_torchvision(model)                      -> VisionTransformer (serial models only)
    load_state_dict_checked(model, sd)         -> load, or a ValueError listing every
                                                  missing, unexpected and mis-shaped key
    compare_models(a, b, x)                    -> the largest output and gradient differences
                                                  of two ParaFormers of one layout (e.g. the
                                                  batched and the reference stage)

For fine-tuning on another task, from_torchvision(vit, num_classes=..., image_size=...,
in_channels=1) gives a fresh head, resamples the position embedding to the new patch grid
(bicubic) and sums the RGB patch filters for grey images; all else is copied.

Differences kept visible: torchvision's MLP also drops out after its GELU (ours only after
the second linear layer), so outputs agree exactly in eval mode or with dropout 0.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from duat.paraformer import _STACKED, ParaFormer, ParaFormerConfig, _init_weights

ASSIGNMENTS = ("stage-major", "strided")

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


# ----------------------------------------------------------------------------- placement

def _check_int(name: str, value, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def resolve_layout(num_layers: int, depth: int | None = None, width: int | None = None,
                   blocks=None) -> tuple[int, int]:
    """(m, n) from what was given: both, one (the other divides the block count), or none
    (the serial layout L x 1)."""
    count = len(blocks) if blocks is not None else _check_int("num_layers", num_layers)
    if depth is None and width is None:
        return count, 1
    if depth is not None:
        _check_int("depth (m)", depth)
    if width is not None:
        _check_int("width (n)", width)
    if depth is None or width is None:
        given, name = (depth, "depth (m)") if width is None else (width, "width (n)")
        if count % given:
            raise ValueError(f"{name}={given} does not divide the {count} blocks to place; "
                             f"give both depth and width, and blocks=[...] to choose them")
        other = count // given
        return (depth, other) if width is None else (other, width)
    return depth, width


def place_blocks(num_layers: int, depth: int, width: int, assignment: str = "stage-major",
                 blocks=None) -> list[list[int]]:
    """placement[s][i]: the index of the source block that becomes branch i of stage s.

    `blocks` (default range(num_layers)) is the sequence of m*n source blocks; item k of it
    goes to (k // n, k % n) for "stage-major" and to (k % m, k // m) for "strided".
    """
    L = _check_int("num_layers", num_layers)
    m, n = _check_int("depth (m)", depth), _check_int("width (n)", width)
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    if blocks is None:
        if m * n != L:
            raise ValueError(f"a {m} x {n} layout holds m*n = {m * n} blocks but the source has "
                             f"{L}; choose m*n = {L}, or pass blocks=[...] with {m * n} indices")
        blocks = list(range(L))
    else:
        if isinstance(blocks, (str, bytes)) or not hasattr(blocks, "__len__"):
            raise TypeError(f"blocks must be a sequence of block indices, got {type(blocks).__name__}")
        blocks = list(blocks)
        if len(blocks) != m * n:
            raise ValueError(f"blocks has {len(blocks)} indices; a {m} x {n} layout needs "
                             f"m*n = {m * n}")
        for b in blocks:
            if not isinstance(b, int) or isinstance(b, bool) or not 0 <= b < L:
                raise ValueError(f"block index {b!r} is not an int in [0, {L})")
    placement = [[-1] * n for _ in range(m)]
    for k, b in enumerate(blocks):
        s, i = (k // n, k % n) if assignment == "stage-major" else (k % m, k // m)
        placement[s][i] = b
    return placement


# ----------------------------------------------------------------------------- state dicts

def assemble_state_dict(outer: dict, block_states: list[dict], placement: list[list[int]],
                        stage: str = "batched") -> dict[str, torch.Tensor]:
    """A ParaFormer state dict from its outer tensors (patch_embed.*, cls_token, pos_embed,
    norm.*, head.*), the source blocks (each a dict in Block's names) and a placement.

    stage "reference": keys stages.{s}.blocks.{i}.{name};  "batched": stages.{s}.{stacked}
    with the n branches' tensors stacked on a leading axis (ParallelStage's layout).
    """
    if stage not in ("batched", "reference"):
        raise ValueError(f"stage must be 'batched' or 'reference', got {stage!r}")
    sd = dict(outer)
    for s, row in enumerate(placement):
        if stage == "reference":
            for i, b in enumerate(row):
                for key, value in block_states[b].items():
                    sd[f"stages.{s}.blocks.{i}.{key}"] = value
        else:
            for name, path in _STACKED:
                if path in block_states[row[0]]:
                    sd[f"stages.{s}.{name}"] = torch.stack([block_states[b][path] for b in row])
    return sd


def load_state_dict_checked(model: nn.Module, state_dict: dict, assign: bool = False) -> None:
    """model.load_state_dict, but every missing, unexpected or mis-shaped key is named in one
    ValueError (nothing is loaded then). assign=True: the model takes the given tensors
    themselves (for a model built on the meta device)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state_dict[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if problems:
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=True, assign=assign)


def paraformer_parts(model: ParaFormer) -> tuple[dict, list[dict]]:
    """(outer tensors, its blocks as Block-named dicts in stage-major order)."""
    sd = model.state_dict()
    outer = {k: v for k, v in sd.items() if not k.startswith("stages.")}
    block_states = [{k: v.detach() for k, v in block.state_dict().items()}
                    for row in model.blocks() for block in row]
    return outer, block_states


# ----------------------------------------------------------------------------- torchvision

def _check_torchvision_vit(vit) -> None:
    from torchvision.models import VisionTransformer

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


def vit_config(vit, depth: int | None = None, width: int | None = None, blocks=None,
               **overrides) -> ParaFormerConfig:
    """The ParaFormerConfig matching a torchvision VisionTransformer, laid out m x n.

    `overrides` may change num_classes (a fresh head), image_size (the position embedding is
    resampled), in_channels (1: grey images), dropout, attn_dropout, stage, debug_checks.
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
    L = len(vit.encoder.layers)
    m, n = resolve_layout(L, depth, width, blocks)
    D, H = vit.hidden_dim, vit.mlp_dim
    mlp_ratio = H / D
    if int(D * mlp_ratio) != H:   # float rounding: nudge so that int(D * ratio) == H
        mlp_ratio = (H + 0.5) / D
    fields = dict(image_size=vit.image_size, patch_size=vit.patch_size, in_channels=3,
                  num_classes=vit.heads.head.out_features, dim=D,
                  heads=vit.encoder.layers[0].self_attention.num_heads, mlp_ratio=mlp_ratio,
                  depth=m, width=n, pool="cls", dropout=vit.dropout,
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


def _build(config: ParaFormerConfig, outer: dict, block_states: list[dict], placement,
           like: torch.Tensor) -> ParaFormer:
    """ParaFormer(config) holding copies of the given tensors. It is built on the meta device
    (no random initialisation of weights that are overwritten at once); only a new head is
    initialised, as ParaFormer initialises its own."""
    with torch.device("meta"):
        model = ParaFormer(config)
    D, C = config.dim, config.num_classes
    outer = dict(outer)
    if tuple(outer["head.weight"].shape) != (C, D):                # a new task: a new head
        head = nn.Linear(D, C)
        _init_weights(head)
        outer["head.weight"], outer["head.bias"] = head.weight.detach(), head.bias.detach()
    if outer["pos_embed"].shape[1] != config.num_tokens:           # a new image size
        outer["pos_embed"] = resample_pos_embed(outer["pos_embed"], config.image_size // config.patch_size)
    w = outer["patch_embed.weight"]
    if w.shape[1] != config.in_channels:
        if config.in_channels != 1:
            raise ValueError(f"cannot adapt a {w.shape[1]}-channel patch embedding to "
                             f"{config.in_channels} channels (1 is supported)")
        outer["patch_embed.weight"] = w.sum(dim=1, keepdim=True)   # grey x -> RGB (x, x, x)
    sd = assemble_state_dict(outer, block_states, placement, config.stage)
    sources = {t.data_ptr() for t in outer.values()}
    sources |= {t.data_ptr() for b in block_states for t in b.values()}
    sd = {k: v.detach().to(device=like.device, dtype=like.dtype) for k, v in sd.items()}
    sd = {k: v.clone() if v.data_ptr() in sources else v for k, v in sd.items()}  # never alias the source
    load_state_dict_checked(model, sd, assign=True)
    return model


def from_torchvision(vit, depth: int | None = None, width: int | None = None,
                     assignment: str = "stage-major", blocks=None, **overrides) -> ParaFormer:
    """A ParaFormer carrying a torchvision VisionTransformer's weights.

    depth=width=None: ParaFormer(depth=L, width=1), the same function (the same logits).
    Otherwise the L blocks are placed on an m x n layout by `assignment` (module docstring);
    m*n must equal L unless blocks=[...] lists the m*n source blocks to use. `overrides`:
    num_classes, image_size, in_channels (1 or 3), dropout, attn_dropout, stage, debug_checks.
    The result is in vit's mode (train/eval), on its device and in its dtype.
    """
    config = vit_config(vit, depth, width, blocks, **overrides)
    outer, block_states = torchvision_parts(vit)
    placement = place_blocks(len(block_states), config.depth, config.width, assignment, blocks)
    model = _build(config, outer, block_states, placement, vit.class_token)
    return model.train(vit.training)


def redistribute(model: ParaFormer, depth: int | None = None, width: int | None = None,
                 assignment: str = "stage-major", blocks=None) -> ParaFormer:
    """A new ParaFormer with `model`'s blocks (taken stage-major: stage 0's branches, then
    stage 1's, ...) laid out as depth x width; the front end and head are copied."""
    if not isinstance(model, ParaFormer):
        raise TypeError(f"expected a ParaFormer, got {type(model).__name__}")
    outer, block_states = paraformer_parts(model)
    m, n = resolve_layout(len(block_states), depth, width, blocks)
    fields = model.config.to_dict()
    fields.update(depth=m, width=n)
    config = ParaFormerConfig(**fields)
    placement = place_blocks(len(block_states), m, n, assignment, blocks)
    like = next(model.parameters())
    return _build(config, outer, block_states, placement, like).train(model.training)


def to_torchvision(model: ParaFormer):
    """The serial ParaFormer(depth=L, width=1) as a torchvision VisionTransformer (same logits)."""
    from functools import partial

    from torchvision.models import VisionTransformer

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
    stacked_paths = dict(_STACKED)
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
