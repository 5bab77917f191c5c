"""Checkpoints of duat.training.fit: what one holds, reading one back (tensors and plain
data only, duat.storage.load_tensors), and the check that it fits a model.

A checkpoint holds the model's config and weights, the optimiser state, the step, epoch,
seed, RNG states and the history, so a run resumed from it ends with exactly the weights
an uninterrupted run would have (on CPU, same seed).
"""
from __future__ import annotations

import random
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from duat.storage import CHECKPOINT_FORMAT, CHECKPOINT_KEYS, load_tensors

# Config fields that do not change the weights' layout: a checkpoint may differ in these.
_LAYOUT_FREE = ("dropout", "attn_dropout", "debug_checks")


def model_config_of(model: nn.Module) -> dict | None:
    """The model's config as a plain dict (what a checkpoint stores), None without one."""
    config = getattr(model, "config", None)
    return asdict(config) if is_dataclass(config) else None


def rng_state() -> dict:
    """Every random generator a run draws from (Python, NumPy, torch, CUDA), as plain data
    that a checkpoint saves and set_rng_state restores."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore the generators from rng_state()'s record (CUDA only on the same device count)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, model: nn.Module | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by fit(); with `model`, check it fits and load its weights.

    Raises FileNotFoundError for a missing file, ValueError for a file that is not a
    readable duat checkpoint (tensors and plain data only: see duat.storage.load_tensors)
    or one written by a different architecture.
    """
    path = Path(path)
    state = load_tensors(path, "duat checkpoint (a file written by `duat train` or "
                               "duat.training.fit)", map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a duat checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is an incomplete duat checkpoint: it lacks {', '.join(missing)}")
    if model is not None:
        check_compatible(state, model, path)
        model.load_state_dict(state["model_state"])
    return state


def check_compatible(state: dict, model: nn.Module, path: str | Path = "checkpoint") -> None:
    """ValueError naming the differences if the checkpoint's model is not this model's."""
    saved, current = state.get("model_config"), model_config_of(model)
    if saved is not None and current is not None:
        diff = [f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} here"
                for k in sorted(set(saved) | set(current))
                if k not in _LAYOUT_FREE and saved.get(k) != current.get(k)]
        if diff:
            raise ValueError(f"{path} was written by a different architecture "
                             f"({state.get('model_name') or saved}); differences: " + "; ".join(diff))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state["model_state"].items()}
    if own != theirs:
        missing = sorted(set(own) - set(theirs))[:5]
        extra = sorted(set(theirs) - set(own))[:5]
        shapes = [f"{k}: {theirs[k]} vs {own[k]}" for k in own if k in theirs and own[k] != theirs[k]][:5]
        raise ValueError(f"{path} does not fit this model: missing {missing}, unexpected {extra}, "
                         f"shape mismatches {shapes}")
