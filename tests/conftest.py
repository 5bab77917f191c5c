"""Shared test helpers, one of each (the project-wide nbval set-up is ../conftest.py):

    randomize(model, scale, seed, replace=False)   seeded random weights, so no term is zero
    TINY_MODEL, tiny_paraformer(m, n, ...)         the tiny Para-Former-m-n the tests build
    torchvision_vit(layers, ...)                   a small randomized torchvision ViT
    run_cli(*args, ...)                            `python -m duat ...` as a separate process
    train_cli(*args)                               `duat train` on 100 digits, in this process
    interrupt_then_resume (fixture)                Ctrl-C a resumable sweep, then resume it

Plain helpers are imported by the test modules (`from conftest import randomize`), because
some are needed where no fixture can reach: inside parametrize lists and module-level
builders. Under pytest's default import mode this file is the module `conftest` when the
tests are collected (pytest imports the root conftest.py first, then this one).
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from duat import cli
from duat.paraformer import ParaFormer


# ----------------------------------------------------------------------------- weights

def randomize(model, scale=0.2, seed=0, *, replace=False):
    """Give every parameter seeded random values, from a generator of its own (torch's global
    RNG is left alone), so that no term of an equivalence check is trivially zero.

    replace=False adds N(0, scale^2) noise to each parameter: the initialisation's structure
    survives (layer-norm gains stay near 1) while zero-initialised tensors, such as
    torchvision's head, stop being zero. replace=True draws every parameter afresh from
    N(0, scale^2), biases and norm affines included.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            if replace:
                p.copy_(noise)
            else:
                p.add_(noise)
    return model


# ----------------------------------------------------------------------------- the tiny model

# The tiny size every fast test shares: 2 x 2 patches of 4 pixels on the default 8x8 grey
# images, 16 channels, 2 heads (the other fields keep ParaFormerConfig's defaults).
TINY_MODEL = dict(patch_size=4, dim=16, heads=2)


def tiny_paraformer(depth=1, width=1, *, seed=None, **overrides) -> ParaFormer:
    """A tiny Para-Former-m-n (m = depth, n = width) in eval mode; `overrides` replace any
    field of TINY_MODEL or ParaFormerConfig. With a seed, torch's global RNG is seeded first,
    so the initial weights are the same on every call."""
    if seed is not None:
        torch.manual_seed(seed)
    return ParaFormer(**{**TINY_MODEL, **overrides}, depth=depth, width=width).eval()


def torchvision_vit(layers=4, heads=2, dim=16, mlp_dim=37, image=16, patch=4, classes=5, seed=0, **kw):
    """A small torchvision VisionTransformer (3-channel image x image inputs) in eval mode,
    built after seeding torch's RNG and then randomized (noise added, so its zero head is not
    zero); `kw` goes to VisionTransformer."""
    from torchvision.models import VisionTransformer  # only the conversion tests need it

    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                            hidden_dim=dim, mlp_dim=mlp_dim, num_classes=classes, **kw)
    return randomize(vit, seed=seed).eval()


# ----------------------------------------------------------------------------- the command line

def run_cli(*args, timeout=600, **kwargs) -> subprocess.CompletedProcess:
    """`python -m duat *args` as a separate process, output captured as text; kwargs (env,
    cwd) go to subprocess.run. The exit status is returned, never raised on."""
    return subprocess.run([sys.executable, "-m", "duat", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def train_cli(*args) -> int:
    """`duat train` in this process on 10 digits per class, on the CPU, without progress
    bars; returns the exit status."""
    return cli.main(["train", "--dataset", "digits", "--per-class", "10", "--no-progress",
                     "--device", "cpu", *args])


# ----------------------------------------------------------------------------- resumable sweeps

@pytest.fixture
def interrupt_then_resume(monkeypatch):
    """The interrupt-then-resume scenario of a resumable sweep, as one call:

        resumed, calls = interrupt_then_resume(run, owner, "name", stop_at=3,
                                               after_stop=check, before_resume=check)

    1. `owner.name` (the function that does one run of the sweep) is wrapped so that its
       `stop_at`-th call raises KeyboardInterrupt (Ctrl-C during that run), and `run()`
       must stop with it; `after_stop()` then checks what the stopped sweep kept;
    2. `run()` again must refuse with FileExistsError naming --resume: an interrupted
       folder is never silently restarted; then `before_resume()`, if given;
    3. `run(resume=True)`, with `owner.name` counting its calls: returns its result and the
       number of runs it did (the caller asserts that only the missing runs were done).
    """
    def scenario(run, owner, name, stop_at, after_stop=None, before_resume=None):
        real, calls = getattr(owner, name), []

        def run_then_stop(*args, **kwargs):
            calls.append(1)
            if len(calls) == stop_at:
                raise KeyboardInterrupt                  # Ctrl-C during run number stop_at
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, run_then_stop)
        with pytest.raises(KeyboardInterrupt):
            run()
        if after_stop is not None:
            after_stop()
        with pytest.raises(FileExistsError, match="--resume"):   # not silently restarted
            run()
        if before_resume is not None:
            before_resume()

        calls.clear()
        monkeypatch.setattr(owner, name, lambda *a, **k: (calls.append(1), real(*a, **k))[1])
        return run(resume=True), len(calls)

    return scenario
