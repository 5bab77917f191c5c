"""A benchmark record: one timed case of the latency-against-depth benchmark, typed.

bench_record builds it from a timed Case (the case, the model's sizes and FLOPs, the
machine, the latency statistics and the raw samples); add_roofline and
duat.bench.timing.add_overhead_model return it extended by the roofline and the overhead
model. results.json holds each as a dict (`asdict`): its fields in the order declared here,
which is the order of the columns of results.csv (duat.bench.report.CSV_FIELDS).
"""
from __future__ import annotations

from dataclasses import dataclass

from duat.bench.timing import Case, extended, latency_stats, value_of
from duat.counting import flops, layer_flops


@dataclass(frozen=True)
class BenchRecord:
    implementation: str          # duat.bench.harness.IMPLEMENTATIONS
    variant: str                 # eager, graph or compile
    label: str                   # implementation, or implementation+variant
    layers: int                  # L: serial layers, or parallel branches
    batch: int
    model: str                   # registry name: vit-L or pf-1-L
    dim: int                     # token width D
    heads: int
    mlp_ratio: float
    tokens: int
    image_size: int
    patch_size: int
    dtype: str
    device: str
    device_name: str
    torch: str
    threads: int
    date: str
    flops: int                   # one forward pass (duat.counting.flops)
    layer_flops: int
    ops: int | None              # aten operations one call dispatches (count_ops)
    warmup: int                  # untimed calls
    reps: int                    # timed calls
    median_ms: float             # latency_stats of the timed calls
    mean_ms: float
    min_ms: float
    p10_ms: float
    p25_ms: float
    p75_ms: float
    p90_ms: float
    iqr_ms: float
    rel_iqr: float
    samples_ms: list             # each timed call, ms, rounded to 10 ns
    achieved_gflops: float | None = None   # add_roofline: flops / median
    peak_gflops: float | None = None       # ... the matmul peak P
    flop_bound_ms: float | None = None     # ... flops / P
    peak_fraction: float | None = None     # ... achieved / P
    overhead_ms: float | None = None       # add_overhead_model: ops x tau
    predicted_ms: float | None = None      # ... max(ops x tau, flops / P)
    bound_by: str | None = None            # ... "overhead" or "flops"


def model_name(implementation: str, layers: int) -> str:
    """The registry name of the model an implementation times at depth L: vit-L or pf-1-L."""
    return f"vit-{layers}" if implementation == "vit" else f"pf-1-{layers}"


def bench_record(case: Case, dtype: str, env: dict) -> BenchRecord:
    """The record of a timed case: its model's sizes and FLOPs (case.model.config), the
    machine of `env` (duat.bench.harness.environment), latency_stats of its calls."""
    c = case.model.config
    return BenchRecord(
        implementation=case.implementation, variant=case.variant,
        label=case.implementation if case.variant == "eager" else f"{case.implementation}+{case.variant}",
        layers=case.layers, batch=case.batch, model=model_name(case.implementation, case.layers),
        dim=c.dim, heads=c.heads, mlp_ratio=c.mlp_ratio, tokens=c.num_tokens,
        image_size=c.image_size, patch_size=c.patch_size, dtype=dtype, device=env["device"],
        device_name=env["device_name"], torch=env["torch"], threads=env["threads"], date=env["date"],
        flops=flops(c, case.batch), layer_flops=layer_flops(c, case.batch), ops=case.ops,
        warmup=case.warmup, reps=len(case.seconds), **latency_stats(case.seconds),
        samples_ms=[round(s * 1e3, 5) for s in case.seconds])


def add_roofline(record, peak_gflops: float | None):
    """The record with its roofline added: achieved GFLOP/s (flops / median), the peak, the
    FLOP-bound latency flops / peak and the achieved fraction of the peak (the last two None
    without a peak). `record`: a BenchRecord, or a dict with its flops and median_ms; a new
    one is returned."""
    achieved = value_of(record, "flops") / value_of(record, "median_ms") / 1e6
    if not peak_gflops:
        return extended(record, achieved_gflops=achieved, peak_gflops=peak_gflops,
                        flop_bound_ms=None, peak_fraction=None)
    return extended(record, achieved_gflops=achieved, peak_gflops=peak_gflops,
                    flop_bound_ms=value_of(record, "flops") / peak_gflops / 1e6,
                    peak_fraction=achieved / peak_gflops)
