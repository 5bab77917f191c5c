"""Named model configurations: `create_model("pf-1-8")`, `create_model("vit-12")`,
`create_model("gpt-12")`, `create_model("pf-2-4", language=True)`.

A name is "vit-L" (the serial ViT with L layers, i.e. Para-Former-L-1), "gpt-L" (the
serial causal language model, i.e. causal Para-Former-L-1) or "pf-m-n" (Para-Former with m
stages of n parallel layers; docs/method.md section 4), for images or, with language=True,
for tokens. A size preset sets the token width; the input (image size, channels, classes;
or vocabulary and positions) defaults to the bundled data's and is overridden by keyword,
as is any other field of ParaFormerConfig or ParaFormerLMConfig.
"""
from __future__ import annotations

import re

from duat.language import ParaFormerLM, ParaFormerLMConfig
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

# ... and for language (causal): GPT-L against causal Para-Former-1-n and m-n
NAMED_LANGUAGE = (
    ["gpt-1", "gpt-2", "gpt-4", "gpt-8", "gpt-12", "gpt-24"]
    + [f"pf-1-{n}" for n in (1, 2, 4, 8, 12, 24)] + ["pf-2-4", "pf-3-4"]
)

_PATTERN = re.compile(r"^(?:(?P<serial>vit|gpt)-(?P<L>\d+)|pf-(?P<m>\d+)-(?P<n>\d+))$")


def list_models(language: bool = False) -> list[str]:
    return list(NAMED_LANGUAGE if language else NAMED)


def parse_name(name: str) -> tuple[int, int]:
    """'vit-12' -> (12, 1); 'gpt-12' -> (12, 1); 'pf-3-4' -> (3, 4): (depth m, width n)."""
    match = _PATTERN.match(name.strip().lower()) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"unknown model name {name!r}: expected 'vit-L', 'gpt-L' or 'pf-m-n' "
                         f"(L, m, n >= 1); named ones: {', '.join(NAMED)}")
    depth, width = (int(match["L"]), 1) if match["L"] else (int(match["m"]), int(match["n"]))
    if depth < 1 or width < 1:
        raise ValueError(f"model {name!r}: depth and width must be >= 1")
    return depth, width


def is_language(name: str, language: bool = False) -> bool:
    """Whether a name (with the language option) asks for a language model: 'gpt-L' always,
    'pf-m-n' with language=True; 'vit-L' never (a ValueError with language=True)."""
    parse_name(name)
    serial = name.strip().lower().split("-")[0]
    if serial == "vit" and language:
        raise ValueError(f"{name!r} is an image model; the serial language model is 'gpt-L'")
    return serial == "gpt" or bool(language)


def model_config(name: str, size: str = "tiny", language: bool = False,
                 **overrides) -> ParaFormerConfig | ParaFormerLMConfig:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known sizes: {', '.join(SIZES)}")
    depth, width = parse_name(name)
    fields = dict(SIZES[size], depth=depth, width=width)
    if is_language(name, language):
        return _fill(ParaFormerLMConfig, name, fields, overrides)
    image_size = overrides.get("image_size", ParaFormerConfig.image_size)
    if "patch_size" not in overrides and image_size in PATCH_FOR_IMAGE:
        fields["patch_size"] = PATCH_FOR_IMAGE[image_size]
    return _fill(ParaFormerConfig, name, fields, overrides)


def _fill(config_type, name: str, fields: dict, overrides: dict):
    known = set(config_type.__dataclass_fields__)
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {name!r}; "
                         f"options: {', '.join(sorted(known))}")
    for key in ("depth", "width"):
        if key in overrides and overrides[key] != fields[key]:
            raise ValueError(f"{key}={overrides[key]} contradicts the model name {name!r}")
    fields.update(overrides)
    return config_type(**fields)


def create_model(name: str, size: str = "tiny", language: bool = False,
                 **overrides) -> ParaFormer | ParaFormerLM:
    """Build a named model, e.g. create_model("pf-2-4", size="small", image_size=32,
    in_channels=3), create_model("gpt-12", vocab_size=96), create_model("pf-1-8", language=True)."""
    config = model_config(name, size, language, **overrides)
    return ParaFormerLM(config) if isinstance(config, ParaFormerLMConfig) else ParaFormer(config)
