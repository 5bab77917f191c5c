"""Timing, honestly: per-call times on an idle device, the matmul peak, and the fixed cost
of one operation.

- time_calls / latency_stats: each call's seconds (CUDA events on GPUs, perf_counter
  elsewhere) and their median and spread; latency_ratio: one case's median over another's,
  with its range from the two interquartile ranges; time_cases: warm-up, then interleaved
  rounds over the cases with garbage collection off, the probes timed between rounds. The
  benchmark (duat.bench.harness), the decode benchmark and the explorer time through these.
- Probe: a device rate timed between the rounds (not a model case): gemm_probe (the matmul
  peak P), overhead_probe (the fixed cost of one operation, tau), bandwidth_probe (the
  memory read rate); peak_reading, overhead_reading and bandwidth_reading turn its timed
  calls into the rate, with its quartiles.
- matmul_peak: the device's measured GEMM rate P, for the FLOP bound F / P.
- count_ops / op_overhead: how many operations a call dispatches, and what one costs
  (tau), for the overhead floor ops x tau; add_overhead_model puts a record on
  t = max(ops x tau, F / P) (duat.bench.regime reads the map it draws).
- memory_bandwidth: the device's measured read rate (the sum of a large tensor), for the
  bytes term bytes / bandwidth of decoding (duat.bench.decode).
- check_dtype: the one refusal of a dtype the benchmarks do not know; extended / value_of:
  a record (a dict, or a dataclass such as duat.bench.records.BenchRecord) copied with new
  values, and one of its values read.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode  # counts dispatched ops

from duat.checks import whole, wholes
from duat.registry import create_model
from duat.runtime import select_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# eager: plain calls. graph: one CUDA graph replay per call (CUDA only).
# compile: torch.compile(model), default mode (needs a working compiler toolchain).
VARIANTS = ("eager", "graph", "compile")


def check_dtype(dtype: str) -> str:
    """`dtype` if it is one of DTYPES; else one ValueError naming the known ones."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    return dtype


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_calls(fn: Callable[[], object], n: int, device: torch.device) -> list[float]:
    """Seconds taken by each of n calls of fn, each started on an idle device.

    CUDA: a pair of CUDA events around each call, after a synchronize, so each time is one
    call's latency including its launch gaps. Elsewhere: perf_counter around the call
    (and a synchronize on MPS).
    """
    if device.type == "cuda":
        times = []
        for _ in range(n):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)  # ms -> s
        return times
    times = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _cuda_graph(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """Capture model(x) once as a CUDA graph; the returned callable replays it."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as CUDA graph capture requires
        for _ in range(3):
            model(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        model(static_x)
    return graph.replay


def make_callable(model: nn.Module, x: torch.Tensor, variant: str) -> Callable[[], object]:
    """fn() running one forward pass of `model` on `x` in the given variant."""
    if variant == "eager":
        return lambda: model(x)
    if variant == "graph":
        if x.device.type != "cuda":
            raise ValueError(f"variant 'graph' needs a CUDA tensor, got one on {x.device}")
        return _cuda_graph(model, x)
    if variant == "compile":
        compiled = torch.compile(model, dynamic=False)
        compiled(x)  # compile now, so that a missing toolchain fails here and not mid-timing
        return lambda: compiled(x)
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def latency_stats(seconds: list[float]) -> dict:
    """Median and spread (p10, p25, p75, p90, IQR) of per-call times, in milliseconds:
    median_ms, mean_ms, min_ms, p10_ms, p25_ms, p75_ms, p90_ms, iqr_ms (p75 - p25) and
    rel_iqr (iqr / median)."""
    if len(seconds) < 1:
        raise ValueError("no timings to summarize")
    ms = np.asarray(seconds, dtype=float) * 1e3
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return {"median_ms": float(p50), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "p10_ms": float(p10), "p25_ms": float(p25), "p75_ms": float(p75),
            "p90_ms": float(p90), "iqr_ms": float(p75 - p25),
            "rel_iqr": float((p75 - p25) / p50) if p50 > 0 else float("nan")}


def latency_ratio(a: dict, b: dict) -> dict:
    """median(a) / median(b) as `value`, with the range the two interquartile ranges allow:
    `low` = p25(a) / p75(b), `high` = p75(a) / p25(b). `a`, `b`: latency_stats, or records
    holding its median_ms, p25_ms and p75_ms."""
    return {"value": a["median_ms"] / b["median_ms"], "low": a["p25_ms"] / b["p75_ms"],
            "high": a["p75_ms"] / b["p25_ms"]}


def _rates(work: float, stats: dict) -> tuple[float, float, float]:
    """`work` per call (FLOPs, bytes) over latency_stats `stats`, in giga-units per second:
    the median rate, and the rates at the slow (p75) and the fast (p25) quartile."""
    return (work / stats["median_ms"] / 1e6, work / stats["p75_ms"] / 1e6,
            work / stats["p25_ms"] / 1e6)


@dataclass
class Probe:
    """A device rate timed between the rounds of a benchmark: a call whose time is set by
    one resource alone, and how much of it one call uses. `name`: matmul-peak (`work`: the
    FLOPs of one product), op-overhead (the operations one call dispatches) or
    memory-bandwidth (the bytes one call reads); `about`: what is timed, in words. The
    timing loop (time_cases) fills in `seconds`."""
    name: str
    fn: Callable[[], object]
    work: int
    about: str
    seconds: list = field(default_factory=list)


def gemm_probe(n: int, device: torch.device, dtype: str) -> Probe:
    """The matmul probe: one (n x n) @ (n x n) product at `dtype` on `device` (2 n^3 FLOPs)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    return Probe("matmul-peak", lambda: a @ b, 2 * n ** 3, f"{n}^2 GEMMs")


def peak_reading(probe: Probe, scan: dict) -> dict:
    """The matmul peak from a gemm_probe's timed calls: gflops (median) with gflops_p25 and
    gflops_p75, the GEMM size and dtype of `scan` (the matmul_peak that chose the size),
    the calls timed, and the scan itself."""
    gflops, p25, p75 = _rates(probe.work, latency_stats(probe.seconds))
    return {"gflops": gflops, "gflops_p25": p25, "gflops_p75": p75, "size": scan["size"],
            "dtype": scan["dtype"], "calls": len(probe.seconds), "scan": scan}


def matmul_peak(device: torch.device | str = "cpu", dtype: str = "float32",
                sizes: tuple[int, ...] | None = None, reps: int = 10) -> dict:
    """The device's measured matmul rate: square GEMMs (n x n) @ (n x n) at `dtype`.

    Returns the best median rate over the sizes as `gflops` (2 n^3 FLOPs per product, the
    convention of duat.counting), with the rate of each size and its spread. run_benchmark
    uses it to choose the size, then times that product between the models' calls, so the
    peak and the models see the same machine load.
    """
    device = select_device(str(device))  # a wrong or absent device: one clear ValueError
    check_dtype(dtype)
    if sizes is None:
        sizes = (1024, 2048) if device.type == "cpu" else (2048, 4096, 8192)
    sizes = wholes("sizes", sizes)
    by_size = {}
    with torch.inference_mode():
        for n in sizes:
            probe = gemm_probe(n, device, dtype)
            time_calls(probe.fn, 2, device)  # warm-up
            s = latency_stats(time_calls(probe.fn, reps, device))
            gflops, p25, p75 = _rates(probe.work, s)
            by_size[str(n)] = {"gflops": gflops, "gflops_p25": p25, "gflops_p75": p75,
                               "median_ms": s["median_ms"], "reps": reps}
            del probe
    best = max(by_size, key=lambda k: by_size[k]["gflops"])
    return {"gflops": by_size[best]["gflops"], "size": int(best), "dtype": dtype,
            "by_size": by_size}


class _OpCounter(TorchDispatchMode):
    """Counts the aten operations that reach the kernels (views included: each one is a
    dispatch too)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object], warm: bool = True) -> int:
    """How many aten operations one call of fn() dispatches (under inference_mode).

    warm: call fn() once, uncounted, first: a model's first call may do one-off work, and
    what is counted is a steady call (False when fn has just been run)."""
    if not callable(fn):
        raise TypeError(f"count_ops needs a callable (e.g. lambda: model(x)), got {type(fn).__name__}")
    counter = _OpCounter()
    with torch.inference_mode():
        if warm:
            fn()
        with counter:
            fn()
    return counter.ops


# The overhead probe: a ViT-8 so narrow (D = 8, 2 tokens, batch 1) that its arithmetic is
# nothing, so its time is the fixed cost of its operations. The same kinds of operations,
# through the same Python, as the benchmarked models: no assumed figure.
OVERHEAD_PROBE = dict(name="vit-8", dim=8, heads=1, mlp_ratio=1.0, image_size=4, patch_size=4,
                      in_channels=1, num_classes=2)


def overhead_probe(device: torch.device, dtype: str) -> Probe:
    """The overhead probe of the image models: one forward pass of OVERHEAD_PROBE (`work`:
    the operations it dispatches)."""
    kw = dict(OVERHEAD_PROBE)
    torch.manual_seed(0)
    model = create_model(kw.pop("name"), **kw).eval().to(device, DTYPES[dtype])
    x = torch.zeros(1, 1, 4, 4, device=device, dtype=DTYPES[dtype])
    fn = lambda: model(x)  # noqa: E731
    return Probe("op-overhead", fn, count_ops(fn),
                 "{name} at D={dim}, {heads} head, 2 tokens, batch 1".format(**OVERHEAD_PROBE))


def overhead_reading(probe: Probe) -> dict:
    """The fixed cost of one operation from an overhead probe's timed calls: us_per_op (the
    median call over its operations) with us_p25 and us_p75, the ops, the calls timed and
    the probe in words."""
    s = latency_stats(probe.seconds)
    per = 1e3 / probe.work  # ms per call -> us per op
    return {"us_per_op": s["median_ms"] * per, "us_p25": s["p25_ms"] * per,
            "us_p75": s["p75_ms"] * per, "ops": probe.work, "calls": len(probe.seconds),
            "probe": probe.about}


def op_overhead(device: torch.device | str = "cpu", dtype: str = "float32", reps: int = 50) -> dict:
    """The fixed cost of one operation on `device`, measured: the time of a forward pass of
    a model whose arithmetic is negligible (OVERHEAD_PROBE), divided by the operations it
    dispatches. Returns us_per_op (median) with its quartiles, and the op count."""
    device = select_device(str(device))  # a wrong or absent device: one clear ValueError
    probe = overhead_probe(device, check_dtype(dtype))
    with torch.inference_mode():
        time_calls(probe.fn, 5, device)  # warm-up
        probe.seconds = time_calls(probe.fn, whole("reps", reps), device)
    return overhead_reading(probe)


def extended(record, **values):
    """A copy of `record` (a dict, or a dataclass such as a BenchRecord) with `values` set;
    the record itself is left as it was."""
    if dataclasses.is_dataclass(record):
        return dataclasses.replace(record, **values)
    return {**record, **values}


def value_of(record, key: str):
    """record[key] of a dict, or the field `key` of a dataclass; None where it has none."""
    return getattr(record, key, None) if dataclasses.is_dataclass(record) else record.get(key)


def add_overhead_model(record, us_per_op: float | None):
    """The record with the simple latency model t = max(ops x overhead, FLOPs / peak) added:
    the overhead floor `overhead_ms`, the prediction `predicted_ms`, and which term sets it
    (`bound_by`), all None without a `us_per_op` or an op count. Needs the record's `ops`
    and, from add_roofline, its `flop_bound_ms`. `record`: a dict or a BenchRecord; a new
    one is returned."""
    if us_per_op is not None and not (us_per_op >= 0):  # NaN fails too
        raise ValueError(f"us_per_op must be a time >= 0 (microseconds), got {us_per_op!r}")
    ops = value_of(record, "ops")
    if us_per_op is None or ops is None:
        return extended(record, overhead_ms=None, predicted_ms=None, bound_by=None)
    overhead_ms = ops * us_per_op / 1e3
    flop_ms = value_of(record, "flop_bound_ms") or 0.0
    return extended(record, overhead_ms=overhead_ms, predicted_ms=max(overhead_ms, flop_ms),
                    bound_by="overhead" if overhead_ms >= flop_ms else "flops")


# The bandwidth probe: the sum of one large tensor reads every byte of it once, and its
# arithmetic (one add per element) is far below any device's rate, so its time is the time
# to stream those bytes from memory. Larger than any cache: 256 MiB on a CPU, 1 GiB on a GPU.
def _bandwidth_bytes(device: torch.device) -> int:
    return 2 ** 28 if device.type == "cpu" else 2 ** 30


def bandwidth_probe(device: torch.device, dtype: str, nbytes: int | None = None) -> Probe:
    """The bandwidth probe: the sum of a tensor of about `nbytes` (default: past every cache
    of `device`); `work`: the bytes one call reads."""
    nbytes = _bandwidth_bytes(device) if nbytes is None else whole("nbytes", nbytes)
    dt = DTYPES[dtype]
    x = torch.ones(max(1, nbytes // (torch.finfo(dt).bits // 8)), device=device, dtype=dt)
    read = x.numel() * x.element_size()
    return Probe("memory-bandwidth", lambda: x.sum(), read,
                 f"sum of a {read / 2 ** 20:.0f} MiB tensor (each byte read once)")


def bandwidth_reading(probe: Probe) -> dict:
    """The memory read rate from a bandwidth probe's timed calls: gbps (median, 1e9 bytes
    per second) with gbps_p25 and gbps_p75, the bytes, the calls timed, the probe in words."""
    gbps, p25, p75 = _rates(probe.work, latency_stats(probe.seconds))
    return {"gbps": gbps, "gbps_p25": p25, "gbps_p75": p75, "bytes": probe.work,
            "calls": len(probe.seconds), "probe": probe.about}


def memory_bandwidth(device: torch.device | str = "cpu", dtype: str = "float32",
                     nbytes: int | None = None, reps: int = 10) -> dict:
    """The device's measured memory read rate: the time of `x.sum()` over a tensor of
    `nbytes` (default 256 MiB on a CPU, 1 GiB elsewhere: past every cache), the bytes read
    divided by it. Returns `gbps` (median; 1e9 bytes per second) with its quartiles, the
    bytes and the calls timed: the bytes term bytes / bandwidth of a decode step."""
    device = select_device(str(device))  # a wrong or absent device: one clear ValueError
    probe = bandwidth_probe(device, check_dtype(dtype), nbytes)
    with torch.inference_mode():
        time_calls(probe.fn, 2, device)  # warm-up: the pages are touched, the kernel loaded
        probe.seconds = time_calls(probe.fn, whole("reps", reps), device)
    return bandwidth_reading(probe)


@dataclass
class Case:
    """One model case to time: a model at a depth and batch, and the call that runs it; the
    timing loop fills in its warm-up count and samples."""
    implementation: str
    variant: str
    layers: int
    batch: int
    model: nn.Module
    fn: Callable[[], object]
    ops: int | None = None      # aten operations one call dispatches (count_ops)
    reps: int = 0
    warmup: int = 0
    seconds: list = field(default_factory=list)


PEAK_CALLS_PER_ROUND = 2  # calls of each probe timed before each round of each (D, batch, L)


def time_cases(cases: list[Case], spec, device: torch.device, say,
               probes: list[Probe] | Probe | None = None) -> None:
    """Warm every case up, then time them in interleaved rounds (spec.rounds), so that slow
    drifts of the machine's load hit all cases alike; `probes` (the matmul peak, the per-op
    overhead) are timed before each round, PEAK_CALLS_PER_ROUND calls each. `spec`: a BenchSpec, or anything with its
    warmup, reps, min_reps, rounds and max_case_seconds. The benchmark and the explorer both
    time through this loop."""
    probes = [] if probes is None else [probes] if isinstance(probes, Probe) else list(probes)
    with torch.inference_mode():
        for case in cases:  # warm-up: at least one call, at most spec.warmup, within a budget
            t0 = time.perf_counter()
            while case.warmup < spec.warmup - 1:
                time_calls(case.fn, 1, device)
                case.warmup += 1
                if time.perf_counter() - t0 > spec.max_case_seconds / 3:
                    break
            last = time_calls(case.fn, 1, device)  # one more: the first may have compiled
            case.warmup += 1
            per_call = max(last[0], 1e-7)
            case.reps = max(spec.min_reps, min(spec.reps, int(spec.max_case_seconds / per_call)))
        gc.collect()  # as timeit does: no garbage collection pauses inside the timed calls
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for r in range(spec.rounds):
                for probe in probes:
                    probe.seconds += time_calls(probe.fn, PEAK_CALLS_PER_ROUND, device)
                for case in (cases if r % 2 == 0 else reversed(cases)):
                    todo = min(math.ceil(case.reps / spec.rounds), case.reps - len(case.seconds))
                    if todo > 0:
                        case.seconds += time_calls(case.fn, todo, device)
        finally:
            if was_enabled:
                gc.enable()
    for case in cases:
        s = latency_stats(case.seconds)
        say(f"  D {case.model.config.dim:>3}  batch {case.batch:>3}  L {case.layers:>2}  {case.implementation:<14} "
            f"{case.variant:<7} {s['median_ms']:9.2f} ms  (p25-p75 {s['p25_ms']:.2f}-"
            f"{s['p75_ms']:.2f}, {len(case.seconds)} reps)")
