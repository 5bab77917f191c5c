"""Para-Former from trained blocks: weight sources, block placement, and the one builder
(new head, resized position embedding, adapted patch filters). docs/method.md section 5, claim 4
("fine-tuning from pre-trained ViT weights helps when data is limited").

A serial ViT-L is Para-Former-L-1 (docs/method.md section 4; duat.convert holds the exact
correspondence with torchvision), so its L trained blocks can fill any Para-Former-m-n with
m * n = L. Where block k goes is a rule, `assignment` (k runs over the blocks used):

    "stage-major" (default)  k -> stage k // n, branch k % n: consecutive blocks share a
                             stage (stage s holds blocks s*n .. s*n + n-1), so early blocks
                             stay early. With n = 1 this is the ViT.
    "strided"                k -> stage k % m, branch k // m: stage s holds s, s+m, s+2m, ...

If m * n != L a selection rule must say which m * n blocks to use, explicitly:

    select="first"   blocks 0 .. m*n-1         select="last"  the last m*n blocks
    select="spread"  m*n blocks evenly spaced from the first to the last
    blocks=[...]     any list of m*n block indices (repeats allowed)

    plan(L, m, n, assignment, select, blocks)  -> placement[stage][branch] = source block
    transfer(source, "pf-m-n", ...)            -> ParaFormer from a ParaFormer or a torchvision
                                                  ViT (also: a ParaFormer's blocks re-laid out)
    from_torchvision(vit, depth, width, ...)   -> ParaFormer from a torchvision ViT, with its
                                                  dropout and other options kept or overridden

Three places the trained ViT can come from (`load_source`):

    1. torchvision's named weights, e.g. "ViT_B_16_Weights.IMAGENET1K_V1": downloaded once
       and cached under torch.hub.get_dir() (offline, a cached file still works);
    2. a local state-dict file, with its architecture: arch="vit_b_16" (a torchvision
       builder) or arch="vit-4" (a kit model name, size=...), or arch=<a module to fill>;
    3. a checkpoint written by the kit's own training (duat.training.fit / `duat train`),
       which records its architecture.

    source = load_source("ViT_B_16_Weights.IMAGENET1K_V1")       # ParaFormer(depth=12, width=1)
    model = transfer(source, "pf-3-4", num_classes=10, image_size=112)
    # then freeze and fine-tune with duat.training.tuning: freeze(model, "blocks"),
    # fine_tune(model, train, val, TrainConfig(epochs=10), head_epochs=2)

The new model never shares tensors with the source. A new head is drawn as ParaFormer
draws its own (truncated normal, std 0.02; bias 0). Different image sizes: the patch size
is the source's (its filters are kept), the position embedding of the patch grid is
resampled bicubically and the class-token position is kept. Grey from colour: the RGB
filters are summed; colour from grey: the filter is repeated and divided by 3.
"""
from __future__ import annotations

import numbers
import os
import re
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.models as tvm
from torchvision.models import VisionTransformer, WeightsEnum

from duat.checks import one_of, whole
from duat.convert import (ASSIGNMENTS, paraformer_parts, resample_pos_embed, torchvision_parts,
                          vit_config)
from duat.paraformer import STACKED, ParaFormer, ParaFormerConfig
from duat.registry import create_model, parse_name
from duat.storage import CHECKPOINT_FORMAT, load_state_dict_checked, load_tensors

SELECTIONS = ("first", "last", "spread")
DEFAULT_WEIGHTS = "ViT_B_16_Weights.IMAGENET1K_V1"
_WEIGHTS_NAME = re.compile(r"^[A-Za-z]\w*_Weights\.\w+$")


class WeightsUnavailableError(FileNotFoundError):
    """No pre-trained weights could be had from the source given (or none was given)."""


def three_ways(problem: str) -> str:
    """The error text: what went wrong, then the three ways to supply pre-trained weights."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"{problem}. Pre-trained ViT weights can come from: "
            f"(1) torchvision's named weights, e.g. load_source({DEFAULT_WEIGHTS!r}), which "
            f"needs a network once and is then cached in {cache}; "
            f"(2) a local state-dict file, e.g. load_source('vit_b_16.pth', arch='vit_b_16') "
            f"(or arch='vit-4' for a kit model); "
            f"(3) a checkpoint of the kit's own training, e.g. "
            f"load_source('runs/vit-4-digits-seed0/checkpoint.pt') (written by `duat train`).")


# ----------------------------------------------------------------------------- sources

def load_source(source, *, arch=None, size: str = "tiny", progress: bool = True,
                **arch_options) -> ParaFormer:
    """The pre-trained model as a ParaFormer (a torchvision ViT-L becomes Para-Former-L-1,
    exactly). `source`: a weights name (way 1), a file path (way 2 or 3, told apart by the
    file's contents), or a ParaFormer / torchvision VisionTransformer already in memory.
    `arch`, `size` and `arch_options` describe the architecture of a plain state-dict file.
    """
    if isinstance(source, ParaFormer):
        return source
    if isinstance(source, nn.Module):
        return from_torchvision(source)      # TypeError unless a torchvision VisionTransformer
    if source is None or (isinstance(source, str) and not source.strip()):
        raise WeightsUnavailableError(three_ways("no source of pre-trained weights was given"))
    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, WeightsEnum):
            return torchvision_weights(source, progress=progress)
        raise TypeError(f"source must be a weights name, a file path or a model, "
                        f"got {type(source).__name__}")
    text = os.fspath(source)
    if isinstance(source, str) and _WEIGHTS_NAME.match(text) and not Path(text).exists():
        return torchvision_weights(text, progress=progress)
    path = Path(text).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(three_ways(f"no file at {path}"))
    return load_file(path, arch=arch, size=size, **arch_options)


def torchvision_weights(weights, progress: bool = True) -> ParaFormer:
    """Way 1: torchvision's named ViT weights as Para-Former-L-1 (downloaded once, cached)."""
    try:
        w = tvm.get_weight(weights) if isinstance(weights, str) else weights
    except (ValueError, KeyError) as err:
        raise ValueError(f"unknown torchvision weights {weights!r}: expected a name such as "
                         f"{DEFAULT_WEIGHTS!r} ({err})") from None
    arch = type(w).__name__.lower().removesuffix("_weights")           # ViT_B_16_Weights -> vit_b_16
    if not arch.startswith("vit_"):
        raise ValueError(f"{weights!r} are not Vision Transformer weights; expected one of "
                         f"torchvision's ViT_*_Weights")
    # First the weights (offline: fail before building the model). torch.hub's cache, as
    # torchvision's get_state_dict uses it, but read by load_tensors: a planted file runs no code.
    name = f"{type(w).__name__}.{w.name}"
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)
    if not file.is_file():
        digest = torch.hub.HASH_REGEX.search(file.name)   # checked against the download
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(w.url, str(file), digest.group(1) if digest else None,
                                           progress=progress)
        except Exception as err:     # no network, proxy refused, server down, hash mismatch
            raise WeightsUnavailableError(three_ways(
                f"could not get torchvision's {name} ({w.url}): {type(err).__name__}: {err}")) from err
    sd = load_tensors(file, f"copy of torchvision's {name} (delete it to download it again)")
    image_size = int(w.meta.get("min_size", (224, 224))[0])
    vit = tvm.get_model(arch, weights=None, image_size=image_size,
                        num_classes=len(w.meta.get("categories") or range(1000)))
    load_state_dict_checked(vit, sd)
    return from_torchvision(vit.eval())


def load_file(path: str | os.PathLike, *, arch=None, size: str = "tiny",
              **arch_options) -> ParaFormer:
    """Way 2 (a plain state dict, `arch` says its architecture) or way 3 (a kit checkpoint)."""
    path = Path(path)
    obj = load_tensors(path, "state dict or checkpoint (tensors saved by torch.save, or a file "
                             "written by `duat train`)")
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return _from_checkpoint(path, obj)
    if isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):   # common wrappers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds neither a state dict (names -> tensors) nor a duat "
                         f"checkpoint; got {type(obj).__name__}")
    if arch is None:
        raise ValueError(f"{path} is a plain state dict, which does not record its architecture: "
                         f"pass arch='vit_b_16' (a torchvision builder), arch='vit-4' (a kit "
                         f"model name, with size=...) or arch=<a model to load it into>")
    model = _architecture(arch, size, **arch_options)
    try:
        load_state_dict_checked(model, obj)
    except ValueError as err:
        hint = ""
        if isinstance(model, ParaFormer) and "conv_proj.weight" in obj:
            hint = " (its key names are torchvision's: pass a torchvision arch such as 'vit_b_16')"
        elif not isinstance(model, ParaFormer) and "patch_embed.weight" in obj:
            hint = " (its key names are the kit's: pass a kit model name such as 'vit-4')"
        raise ValueError(f"the state dict in {path} does not fit the architecture {_arch_name(arch)}"
                         f"{hint}: {err}") from None
    return load_source(model.eval())


def _from_checkpoint(path: Path, state: dict) -> ParaFormer:
    config = state.get("model_config")
    if state.get("model_class") not in (None, "ParaFormer") or not isinstance(config, dict):
        raise ValueError(f"{path} is a checkpoint of a {state.get('model_class')}, not of a "
                         f"ParaFormer; only ParaFormer checkpoints carry transferable blocks")
    model = ParaFormer(ParaFormerConfig(**config))
    try:
        load_state_dict_checked(model, state["model_state"])
    except ValueError as err:
        raise ValueError(f"checkpoint {path} is inconsistent: {err}") from None
    return model.eval()


def _architecture(arch, size: str, **options) -> nn.Module:
    if isinstance(arch, nn.Module):
        if options:
            raise ValueError(f"options {sorted(options)} cannot change a model passed as arch")
        return arch
    if not isinstance(arch, str):
        raise TypeError(f"arch must be a model name or a model, got {type(arch).__name__}")
    vits = [m for m in tvm.list_models(module=tvm) if m.startswith("vit_")]
    if arch in vits:
        return tvm.get_model(arch, weights=None, **options)
    try:
        return create_model(arch, size=size, **options)
    except ValueError as err:
        raise ValueError(f"unknown arch {arch!r}: expected a torchvision ViT builder "
                         f"({', '.join(vits)}) or a kit model name ({err})") from None


def _arch_name(arch) -> str:
    return repr(arch) if isinstance(arch, str) else type(arch).__name__


# ----------------------------------------------------------------------------- placement

def _size(name: str, value) -> int:
    """A layout size m or n. (Worded "an int >= 1", as the placement tests expect, where
    duat.checks.whole would say "a positive int".)"""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def place_blocks(num_layers: int, depth: int, width: int, assignment: str = "stage-major",
                 blocks: Sequence[int] | None = None) -> list[list[int]]:
    """placement[s][i]: the index of the source block that becomes branch i of stage s.

    `blocks` (default range(num_layers)) is the sequence of m*n source blocks; item k of it
    goes to (k // n, k % n) for "stage-major" and to (k % m, k // m) for "strided".
    """
    L = whole("num_layers", num_layers)
    m, n = _size("depth (m)", depth), _size("width (n)", width)
    one_of("assignment", assignment, ASSIGNMENTS)
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
            if not isinstance(b, numbers.Integral) or isinstance(b, bool) or not 0 <= b < L:
                raise ValueError(f"block index {b!r} is not an int in [0, {L})")
    placement = [[-1] * n for _ in range(m)]
    for k, b in enumerate(blocks):
        s, i = (k // n, k % n) if assignment == "stage-major" else (k % m, k // m)
        placement[s][i] = int(b)
    return placement


def select_blocks(num_layers: int, count: int, rule: str) -> list[int]:
    """Which `count` of `num_layers` source blocks to keep: "first", "last" or "spread"."""
    one_of("select", rule, SELECTIONS)
    num_layers, count = whole("num_layers", num_layers), whole("count", count)
    if count > num_layers:
        raise ValueError(f"select={rule!r} keeps m*n = {count} of the {num_layers} source blocks: "
                         f"it needs m*n <= {num_layers}; pass blocks=[...] to repeat blocks")
    if rule == "first":
        return list(range(count))
    if rule == "last":
        return list(range(num_layers - count, num_layers))
    if count == 1:
        return [0]
    return [round(k * (num_layers - 1) / (count - 1)) for k in range(count)]  # ends included


def _fill_layout(num_layers: int, depth: int | None, width: int | None,
                 blocks: Sequence[int] | None) -> tuple[int, int]:
    """(m, n) from what was given: both, one (the other divides the number of blocks to
    place: len(blocks), else num_layers), or none (the serial layout L x 1)."""
    if depth is not None and width is not None:
        return _size("depth (m)", depth), _size("width (n)", width)
    count = len(blocks) if blocks is not None else whole("num_layers", num_layers)
    if depth is None and width is None:
        return count, 1
    name, given = ("depth (m)", depth) if width is None else ("width (n)", width)
    given = _size(name, given)
    if count % given:
        raise ValueError(f"{name}={given} does not divide the {count} blocks to place; "
                         f"give both depth and width, and blocks=[...] to choose them")
    return (given, count // given) if width is None else (count // given, given)


def plan(num_layers: int, depth: int | None = None, width: int | None = None,
         assignment: str = "stage-major", select: str | None = None,
         blocks: Sequence[int] | None = None) -> list[list[int]]:
    """placement[s][i] = the source block that becomes branch i of stage s (module docstring).

    The layout m x n is depth x width; give one and the other divides the number of blocks,
    give none for the serial L x 1. The blocks: all L in order (m*n = L), `select` (a rule)
    or `blocks` (a list). len(placement), len(placement[0]) is the layout.
    """
    if select is not None and blocks is not None:
        raise ValueError("give either select= (a rule) or blocks= (a list), not both")
    if select is not None and (depth is None or width is None):
        raise ValueError("select= needs the whole layout: layout='pf-m-n', or depth= and width=")
    m, n = _fill_layout(num_layers, depth, width, blocks)
    if select is not None:
        blocks = select_blocks(num_layers, m * n, select)
    elif blocks is None and m * n != num_layers:
        raise ValueError(f"a {m} x {n} layout holds m*n = {m * n} blocks but the source has "
                         f"L = {num_layers}: choose m*n = {num_layers}, or say which blocks to "
                         f"use with select={SELECTIONS} or blocks=[...]")
    return place_blocks(num_layers, m, n, assignment, blocks)


def _layout(layout, depth, width) -> tuple[int | None, int | None]:
    if layout is None:
        return depth, width
    if depth is not None or width is not None:
        raise ValueError("give the layout either by name (layout='pf-2-2') or by depth/width")
    if isinstance(layout, tuple):
        return layout
    return parse_name(layout)


# ----------------------------------------------------------------------------- transfer

def transfer(source: nn.Module, layout: str | tuple[int, int] | None = None, *,
             depth: int | None = None, width: int | None = None,
             assignment: str = "stage-major", select: str | None = None,
             blocks: Sequence[int] | None = None, num_classes: int | None = None,
             new_head: bool | None = None, image_size: int | None = None,
             in_channels: int | None = None, stage: str | None = None) -> ParaFormer:
    """Para-Former-m-n built from a trained model's blocks (a ParaFormer, blocks taken
    stage-major, or a torchvision VisionTransformer).

    layout: "pf-m-n" / "vit-L" / (m, n), or depth= and width= (or one of them); none: the
        source's own blocks in series, Para-Former-L-1 (for a ViT source: the same function
        exactly). A ParaFormer's blocks in a new layout: transfer(model, (m, n)).
    assignment, select, blocks: where the blocks go (module docstring).
    num_classes: a new linear head (freshly initialised) when it differs from the source's,
        or always with new_head=True.
    image_size: a new input size (a multiple of the source's patch size); the patch-grid
        position embedding is resampled, the class-token position kept.
    in_channels: 1 from a colour source (the RGB filters summed) or 3 from a grey one
        (the filter repeated, divided by 3). stage: "batched" or "reference".
    To freeze parts of the result: duat.training.tuning.freeze.
    """
    if isinstance(source, ParaFormer):
        outer, block_states = paraformer_parts(source)
        base, like = source.config, next(source.parameters())
    elif isinstance(source, VisionTransformer):
        base = vit_config(source)
        outer, block_states = torchvision_parts(source)
        like = source.class_token
    else:
        raise TypeError(f"source: expected a ParaFormer or a torchvision VisionTransformer, got "
                        f"{type(source).__name__} (load_source turns weights and files into one)")
    m, n = _layout(layout, depth, width)
    placement = plan(len(block_states), m, n, assignment, select, blocks)

    fields = base.to_dict()
    fields.update(depth=len(placement), width=len(placement[0]))
    for key, value in (("num_classes", num_classes), ("image_size", image_size),
                       ("in_channels", in_channels), ("stage", stage)):
        if value is not None:
            fields[key] = value
    if image_size is not None and isinstance(image_size, int) and image_size % base.patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by the source's patch size "
                         f"{base.patch_size}: expected a multiple of {base.patch_size} "
                         f"(the pre-trained patch filters are {base.patch_size}x{base.patch_size})")
    config = ParaFormerConfig(**fields)
    return _build(config, outer, block_states, placement, like, new_head).train(source.training)


def from_torchvision(vit, depth: int | None = None, width: int | None = None,
                     assignment: str = "stage-major", blocks: Sequence[int] | None = None,
                     **overrides) -> ParaFormer:
    """A ParaFormer carrying a torchvision VisionTransformer's weights.

    depth=width=None: ParaFormer(depth=L, width=1), the same function (the same logits).
    Otherwise the L blocks are placed on an m x n layout by `assignment` (module docstring);
    m*n must equal L unless blocks=[...] lists the m*n source blocks to use. `overrides`
    (duat.convert.vit_config): num_classes, image_size, in_channels (1 or 3), dropout,
    attn_dropout, stage, debug_checks. Built as `transfer` builds. The result is in vit's
    mode (train/eval), on its device and in its dtype.
    """
    config = vit_config(vit, **overrides)         # TypeError unless a torchvision ViT
    outer, block_states = torchvision_parts(vit)
    L = len(block_states)
    m, n = _fill_layout(L, depth, width, blocks)
    placement = place_blocks(L, m, n, assignment, blocks)
    fields = config.to_dict()
    fields.update(depth=m, width=n)
    model = _build(ParaFormerConfig(**fields), outer, block_states, placement, vit.class_token)
    return model.train(vit.training)


# ----------------------------------------------------------------------------- the builder

def assemble_state_dict(outer: dict, block_states: list[dict], placement: list[list[int]],
                        stage: str = "batched") -> dict[str, torch.Tensor]:
    """A ParaFormer state dict from its outer tensors (patch_embed.*, cls_token, pos_embed,
    norm.*, head.*), the source blocks (each a dict in Block's names) and a placement.

    stage "reference": keys stages.{s}.blocks.{i}.{name};  "batched": stages.{s}.{stacked}
    with the n branches' tensors stacked on a leading axis (ParallelStage's layout).
    """
    one_of("stage", stage, ("batched", "reference"))
    sd = dict(outer)
    for s, row in enumerate(placement):
        if stage == "reference":
            for i, b in enumerate(row):
                for key, value in block_states[b].items():
                    sd[f"stages.{s}.blocks.{i}.{key}"] = value
        else:
            for name, path in STACKED:
                if path in block_states[row[0]]:
                    sd[f"stages.{s}.{name}"] = torch.stack([block_states[b][path] for b in row])
    return sd


def _adapt_outer(outer: dict, c: ParaFormerConfig, new_head: bool | None, like) -> dict:
    """Head, position embedding and patch filters of the source, fitted to config c."""
    D, C = c.dim, c.num_classes
    if new_head is None:
        new_head = tuple(outer["head.weight"].shape) != (C, D)
    if new_head:                                            # a new task: a new linear head
        w = torch.empty(C, D, dtype=like.dtype, device=like.device)
        outer["head.weight"] = nn.init.trunc_normal_(w, std=0.02)   # as ParaFormer's own init
        outer["head.bias"] = torch.zeros(C, dtype=like.dtype, device=like.device)
    prefix = 1 if c.pool == "cls" else 0
    if outer["pos_embed"].shape[1] != c.num_tokens:         # a new image size
        outer["pos_embed"] = resample_pos_embed(outer["pos_embed"], c.image_size // c.patch_size, prefix)
    w = outer["patch_embed.weight"]                         # (D, C_in, p, p)
    if w.shape[1] != c.in_channels:
        if (w.shape[1], c.in_channels) == (3, 1):
            outer["patch_embed.weight"] = w.sum(dim=1, keepdim=True)       # grey x as (x, x, x)
        elif (w.shape[1], c.in_channels) == (1, 3):
            outer["patch_embed.weight"] = w.repeat(1, 3, 1, 1) / 3         # mean of the channels
        else:
            raise ValueError(f"cannot adapt a {w.shape[1]}-channel patch embedding to "
                             f"{c.in_channels} channels (3 -> 1 and 1 -> 3 are supported)")
    return outer


def _build(config: ParaFormerConfig, outer: dict, block_states: list[dict], placement,
           like: torch.Tensor, new_head: bool | None = None) -> ParaFormer:
    """The one builder: ParaFormer(config) holding copies of the source's tensors, its outer
    ones fitted to config (_adapt_outer), on like's device and in its dtype. Built on the
    meta device: no random initialisation of weights that are overwritten at once."""
    sources = {t.untyped_storage().data_ptr() for t in outer.values()}
    sources |= {t.untyped_storage().data_ptr() for b in block_states for t in b.values()}
    outer = _adapt_outer(dict(outer), config, new_head, like)
    with torch.device("meta"):
        model = ParaFormer(config)
    sd = assemble_state_dict(outer, block_states, placement, config.stage)
    sd = {k: v.detach().to(device=like.device, dtype=like.dtype) for k, v in sd.items()}
    sd = {k: v.clone() if v.untyped_storage().data_ptr() in sources else v  # never alias the source
          for k, v in sd.items()}
    load_state_dict_checked(model, sd, assign=True)
    return model


# ----------------------------------------------------------------------------- input size

class ResizeInput(nn.Module):
    """Images resized (bilinear) to the model's image_size before it: e.g. 32x32 CIFAR into a
    ViT-B/16 at 112x112 (a 7x7 patch grid). Freezing reaches the ParaFormer inside."""

    def __init__(self, model: ParaFormer, image_size: int | None = None):
        super().__init__()
        self.model = model
        self.image_size = image_size or model.config.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        return self.model(x)
