"""Do W data-parallel processes end with the one-process weights? How to compare them.

In exact arithmetic they would: every rank takes its rows of the same global batch, and
DDP's average of the ranks' gradients is the global batch's gradient (docs/method.md
section 8). In float32 the two runs add up the same numbers in different orders, so their
gradients differ by rounding, and every optimiser step after the first starts from
slightly different weights: training grows the gap. Two things follow.

- **A tolerance from measurement.** Notebook 12's live run (Para-Former-1-2, tiny, 500
  digits, batch 32, 15 epochs: 240 AdamW steps at lr 5e-3) ended 2 processes and 1 apart
  by 1.0e-5 to 3.4e-5 of the largest weight (1.3e-5 to 4.5e-5 absolute), over the native
  (AVX-512), AVX2 and scalar CPU kernels with 1 and 2 threads each (2-core AMD EPYC, torch
  2.14.1). DDP_TOLERANCE below is 1e-3: 29x the largest gap seen, for CPUs we could not
  try. A real bug is far larger: with no gradient all-reduce (each rank steps on its own
  half of the batch) the same run ends 0.42 of the largest weight apart, 420x the
  tolerance, and every rank taking the same rows gives the same. tests/test_distributed.py
  checks that a subtler bug, the ranks' mean losses weighted alike when a global batch
  does not split evenly, also lands far outside its (10-step) bound.
- **The key bias is apart.** Attention scores q . (k + b_k) = q . k + q . b_k: the key
  bias b_k adds the same number to every key's score of a query, which the softmax
  ignores. So its gradient is zero in exact arithmetic, and what a run computes for it is
  rounding noise (1e-10 in float32 where the query bias gets 1e-3). AdamW divides every
  gradient by its own running size, so it turns that noise into steps of up to about the
  learning rate, different in the two runs: the key biases end 1e-2 to 1.7e-2 apart in
  the run above, and change no output. `weight_gap` measures them apart from the rest.

A constant factor on every gradient (a sum over ranks where a mean belongs) is a bug no
comparison of weights can see here: AdamW's step does not depend on the gradient's scale
(and clipping to norm 1 removes most of it first). The weights come out the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

DDP_TOLERANCE = 1e-3      # max |weight difference| / max |weight|, the key bias aside (above)
_QKV_BIAS = ("qkv_bias", "qkv.bias")   # the batched stage's (n, 3D) and a Block's (3D,): q, k, v


@dataclass(frozen=True)
class WeightGap:
    """How far apart two state dicts of the same model are."""

    tensors: int          # tensors compared
    scale: float          # the largest |weight| of the reference
    rest: float           # max |difference| over every weight but the key biases
    key_bias: float       # max |difference| of the key biases (0.0 when the model has none)
    worst: str            # the tensor where `rest` is reached

    @property
    def relative(self) -> float:
        """`rest` relative to the largest weight: what DDP_TOLERANCE bounds."""
        return self.rest / self.scale if self.scale > 0 else self.rest

    def within(self, tolerance: float = DDP_TOLERANCE) -> bool:
        return self.relative < tolerance


def is_qkv_bias(name: str) -> bool:
    return name.endswith(_QKV_BIAS)


def _split_key_bias(name: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(everything but the key bias, the key bias) of one tensor: the key bias is the
    middle third of the last dimension of a qkv bias (rows q, k, v)."""
    if not is_qkv_bias(name):
        return t, None
    D = t.shape[-1] // 3
    return torch.cat([t[..., :D], t[..., 2 * D:]], -1), t[..., D:2 * D]


def weight_gap(reference: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> WeightGap:
    """Compare two state dicts of one model (e.g. a one-process and a DDP checkpoint's
    "model_state"), the key biases apart from the rest (see the module's notes)."""
    if sorted(reference) != sorted(other):
        missing, extra = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
        raise ValueError(f"the state dicts hold different tensors: missing {missing[:5]}, "
                         f"extra {extra[:5]}")
    rest, key_bias, scale, worst = 0.0, 0.0, 0.0, ""
    for name, a in reference.items():
        b = other[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: shape {tuple(a.shape)} against {tuple(b.shape)}")
        a, b = a.detach().float().cpu(), b.detach().float().cpu()
        if a.numel() == 0:
            continue
        scale = max(scale, a.abs().max().item())
        (a_rest, a_key), (b_rest, b_key) = _split_key_bias(name, a), _split_key_bias(name, b)
        gap = (a_rest - b_rest).abs().max().item() if a_rest.numel() else 0.0
        if gap > rest or not worst:
            rest, worst = gap, name
        if a_key is not None:
            key_bias = max(key_bias, (a_key - b_key).abs().max().item())
    return WeightGap(len(reference), scale, rest, key_bias, worst)
