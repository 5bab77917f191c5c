"""Named model configurations: `create_model("pf-1-8")`, `create_model("vit-12")`.

A name is "vit-L" (the serial ViT with L layers, i.e. Para-Former-L-1) or "pf-m-n"
(Para-Former with m stages of n parallel layers; docs/method.md section 4). A size preset sets
the token width; the input (image size, channels, classes) defaults to the bundled 8x8
digits and is overridden by keyword, as is any other ParaFormerConfig field.
"""
from __future__ import annotations

import re

from duat.paraformer import ParaFormer, ParaFormerConfig

# size -> (dim, heads, mlp_ratio)
SIZES: dict[str, dict] = {
    "tiny": dict(dim=64, heads=4, mlp_ratio=2.0),    # CPU-friendly, for 8x8 digits
    "small": dict(dim=192, heads=3, mlp_ratio=4.0),  # ViT-Ti widths, for 28x28 / 32x32
    "base": dict(dim=384, heads=6, mlp_ratio=4.0),   # ViT-S widths, for GPU runs
}

# image size -> default patch size (8x8 -> 16 patches, 28x28 -> 49, 32x32 -> 64)
PATCH_FOR_IMAGE = {8: 2, 28: 4, 32: 4, 224: 16}

# The named configurations tests parametrize over; any vit-L / pf-m-n is also accepted.
NAMED = (
    ["vit-1", "vit-2", "vit-4", "vit-6", "vit-8", "vit-12", "vit-16", "vit-24"]
    + [f"pf-1-{n}" for n in (1, 2, 4, 6, 8, 12, 16, 24)]
    + ["pf-2-2", "pf-2-4", "pf-2-6", "pf-3-4", "pf-4-2", "pf-4-3", "pf-6-2"]
)

_PATTERN = re.compile(r"^(?:vit-(?P<L>\d+)|pf-(?P<m>\d+)-(?P<n>\d+))$")


def list_models() -> list[str]:
    return list(NAMED)


def parse_name(name: str) -> tuple[int, int]:
    """'vit-12' -> (12, 1); 'pf-3-4' -> (3, 4): (depth m, width n)."""
    match = _PATTERN.match(name.strip().lower()) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"unknown model name {name!r}: expected 'vit-L' or 'pf-m-n' "
                         f"(L, m, n >= 1); named ones: {', '.join(NAMED)}")
    depth, width = (int(match["L"]), 1) if match["L"] else (int(match["m"]), int(match["n"]))
    if depth < 1 or width < 1:
        raise ValueError(f"model {name!r}: depth and width must be >= 1")
    return depth, width


def model_config(name: str, size: str = "tiny", **overrides) -> ParaFormerConfig:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    depth, width = parse_name(name)
    fields = dict(SIZES[size], depth=depth, width=width)
    image_size = overrides.get("image_size", ParaFormerConfig.image_size)
    if "patch_size" not in overrides and image_size in PATCH_FOR_IMAGE:
        fields["patch_size"] = PATCH_FOR_IMAGE[image_size]
    known = set(ParaFormerConfig.__dataclass_fields__)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name!r}; "
                         f"options: {', '.join(sorted(known))}")
    for key in ("depth", "width"):
        if key in overrides and overrides[key] != fields[key]:
            raise ValueError(f"{key}={overrides[key]} contradicts the model name {name!r}")
    fields.update(overrides)
    return ParaFormerConfig(**fields)


def create_model(name: str, size: str = "tiny", **overrides) -> ParaFormer:
    """Build a named model, e.g. create_model("pf-2-4", size="small", image_size=32, in_channels=3)."""
    return ParaFormer(model_config(name, size, **overrides))
