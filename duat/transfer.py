"""Starting Para-Former from a pre-trained serial ViT: weight sources, block transfer, new
head, resized position embedding. PAPER.md section 5, claim 4 ("fine-tuning from
pre-trained ViT weights helps when data is limited").

A serial ViT-L is Para-Former-L-1 (PAPER.md section 4), so its L trained blocks can fill
any Para-Former-m-n with m * n = L. Where block l goes is the rule of duat.convert:

    assignment="stage-major" (default)  consecutive blocks share a stage: stage s holds
        blocks s*n .. s*n + n-1, so early blocks stay early. With n = 1 this is the ViT.
    assignment="strided"                stage s holds blocks s, s+m, s+2m, ...

If m * n != L a selection rule must say which m * n blocks to use, explicitly:

    select="first"   blocks 0 .. m*n-1         select="last"  the last m*n blocks
    select="spread"  m*n blocks evenly spaced from the first to the last
    blocks=[...]     any list of m*n block indices (repeats allowed)

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

The new model never shares tensors with the source. Different image sizes: the patch size
is the source's (its filters are kept), the position embedding of the patch grid is
resampled bicubically and the class-token position is kept.
"""
from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from duat.convert import (assemble_state_dict, from_torchvision, load_state_dict_checked,
                          paraformer_parts, place_blocks, resample_pos_embed, resolve_layout,
                          torchvision_parts, vit_config)
from duat.paraformer import ParaFormer, ParaFormerConfig
from duat.storage import CHECKPOINT_FORMAT, load_tensors

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
        from torchvision.models import WeightsEnum

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
    import torchvision.models as tvm

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
    from urllib.parse import urlparse

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
    import torchvision.models as tvm

    vits = [m for m in tvm.list_models(module=tvm) if m.startswith("vit_")]
    if arch in vits:
        return tvm.get_model(arch, weights=None, **options)
    from duat.registry import create_model

    try:
        return create_model(arch, size=size, **options)
    except ValueError as err:
        raise ValueError(f"unknown arch {arch!r}: expected a torchvision ViT builder "
                         f"({', '.join(vits)}) or a kit model name ({err})") from None


def _arch_name(arch) -> str:
    return repr(arch) if isinstance(arch, str) else type(arch).__name__


# ----------------------------------------------------------------------------- placement

def select_blocks(num_layers: int, count: int, rule: str) -> list[int]:
    """Which `count` of `num_layers` source blocks to keep: "first", "last" or "spread"."""
    if rule not in SELECTIONS:
        raise ValueError(f"select must be one of {SELECTIONS}, got {rule!r}")
    for name, v in (("num_layers", num_layers), ("count", count)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
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


def plan(num_layers: int, depth: int, width: int, assignment: str = "stage-major",
         select: str | None = None, blocks: Sequence[int] | None = None) -> list[list[int]]:
    """placement[s][i] = the source block that becomes branch i of stage s (module docstring)."""
    if select is not None and blocks is not None:
        raise ValueError("give either select= (a rule) or blocks= (a list), not both")
    if select is not None:
        blocks = select_blocks(num_layers, depth * width, select)
    elif blocks is None and depth * width != num_layers:
        raise ValueError(f"a {depth} x {width} layout holds m*n = {depth * width} blocks but the "
                         f"source has L = {num_layers}: choose m*n = {num_layers}, or say which "
                         f"blocks to use with select={SELECTIONS} or blocks=[...]")
    return place_blocks(num_layers, depth, width, assignment, blocks)


def _is_torchvision_vit(module) -> bool:
    if not isinstance(module, nn.Module):
        return False
    from torchvision.models import VisionTransformer

    return isinstance(module, VisionTransformer)


def _layout(layout, depth, width) -> tuple[int | None, int | None]:
    if layout is None:
        return depth, width
    if depth is not None or width is not None:
        raise ValueError("give the layout either by name (layout='pf-2-2') or by depth/width")
    from duat.registry import parse_name

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

    layout: "pf-m-n" / "vit-L" / (m, n), or depth= and width=; none: the source's own
        blocks in series, Para-Former-L-1 (for a ViT source: the same function exactly).
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
        base = source.config
        like = next(source.parameters())
        training = source.training
    elif _is_torchvision_vit(source):
        base = vit_config(source)
        outer, block_states = torchvision_parts(source)
        like, training = source.class_token, source.training
    else:
        raise TypeError(f"source must be a ParaFormer or a torchvision VisionTransformer, got "
                        f"{type(source).__name__} (load_source turns weights and files into one)")
    L = len(block_states)
    m, n = _layout(layout, depth, width)
    if m is None or n is None:
        if select is not None:
            raise ValueError("select= needs the whole layout: layout='pf-m-n', or depth= and width=")
        m, n = resolve_layout(L, m, n, blocks)     # none given: the serial layout L x 1
    placement = plan(L, m, n, assignment, select, blocks)

    fields = base.to_dict()
    fields.update(depth=m, width=n)
    for key, value in (("num_classes", num_classes), ("image_size", image_size),
                       ("in_channels", in_channels), ("stage", stage)):
        if value is not None:
            fields[key] = value
    if image_size is not None and isinstance(image_size, int) and image_size % base.patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by the source's patch size "
                         f"{base.patch_size}: expected a multiple of {base.patch_size} "
                         f"(the pre-trained patch filters are {base.patch_size}x{base.patch_size})")
    config = ParaFormerConfig(**fields)

    outer = _adapt_outer(dict(outer), config, new_head, like)
    return _build(config, outer, block_states, placement, like).train(training)


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
           like: torch.Tensor) -> ParaFormer:
    """ParaFormer(config) holding copies of the given tensors (built on the meta device: no
    random initialisation of weights that are overwritten at once)."""
    with torch.device("meta"):
        model = ParaFormer(config)
    sd = assemble_state_dict(outer, block_states, placement, config.stage)
    sd = {k: v.detach().to(device=like.device, dtype=like.dtype).clone() for k, v in sd.items()}
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
