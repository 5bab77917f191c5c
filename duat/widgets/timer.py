"""What the depth/width explorer measures of a device, in one place: DeviceTimer times
through the benchmark's own code (duat.bench.timing), and DepthWidthExplorer(timer=...)
takes any object with its four methods, so that a test can hand it set readings.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from duat.bench.harness import BenchSpec
from duat.bench.timing import (Case, count_ops, latency_stats, make_callable, matmul_peak,
                               op_overhead, time_cases)


@dataclass(frozen=True)
class ModelTiming:
    """One model's timing: `warmup` untimed calls first, then one entry of `seconds` per
    timed call."""
    warmup: int
    seconds: list[float]

    @property
    def stats(self) -> dict:
        """latency_stats of the timed calls: median_ms, p25_ms, p75_ms, ... (milliseconds)."""
        return latency_stats(self.seconds)


class DeviceTimer:
    """The explorer's measurements of a device, taken by duat.bench.timing:

    - matmul_gflops(device) -> float: the device's measured float32 matmul rate, GFLOP/s.
    - op_overhead(device, reps) -> dict: the fixed cost of one operation, from `reps` timed
      calls of a probe whose arithmetic is negligible: `us_per_op` (the median, in
      microseconds), `us_p25`, `us_p75`, `ops` (the probe's), `calls`, `probe` (in words).
    - count_ops(fn, warm=True) -> int: the aten operations one call of fn() dispatches
      (warm: after one uncounted call).
    - time_models(models, x, ...) -> list[ModelTiming]: each model's forward pass on `x`,
      timed: warm-up calls, then the timed calls in alternating rounds (one ModelTiming per
      model, in order). Every model is called at least once before its timed calls, so it is
      warm afterwards.
    """

    def matmul_gflops(self, device: str) -> float:
        sizes = (512, 1024) if device == "cpu" else None   # small GEMMs: a quick reading
        return matmul_peak(device, "float32", sizes=sizes, reps=5)["gflops"]

    def op_overhead(self, device: str, reps: int) -> dict:
        return op_overhead(device, "float32", reps=reps)

    def count_ops(self, fn: Callable[[], object], warm: bool = True) -> int:
        return count_ops(fn, warm=warm)

    def time_models(self, models: list[nn.Module], x: torch.Tensor, warmup: int, reps: int,
                    rounds: int, seconds_per_model: float) -> list[ModelTiming]:
        """Up to `warmup` untimed calls per model (fewer when they take over a third of
        `seconds_per_model`), then between 3 and `reps` timed calls per model, as many as
        fit in `seconds_per_model`, split into `rounds` rounds that alternate the models, with
        garbage collection off (the benchmark's loop, duat.bench.timing.time_cases)."""
        spec = BenchSpec(warmup=warmup, reps=max(3, reps), min_reps=3, rounds=rounds,
                         max_case_seconds=seconds_per_model)
        cases = [Case(type(m).__name__, "eager", m.config.layers, len(x), m, make_callable(m, x, "eager"))
                 for m in models]
        time_cases(cases, spec, x.device, say=lambda _: None)
        return [ModelTiming(case.warmup, list(case.seconds)) for case in cases]
