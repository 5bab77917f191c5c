"""The benchmark harness: build the models, time them honestly, and put each on a roofline.

docs/method.md section 4 ends with a note on hardware: the n branches of a Para-Former stage do
the same arithmetic as n serial layers, so "time does not grow with n" holds only where the
device has idle parallel capacity; elsewhere time is bounded below by FLOPs / peak rate.
This module measures both sides of that sentence in one run:

- latency of each implementation at each depth L (warm-up, many repetitions, median and
  spread, under torch.inference_mode; CUDA events on GPUs, perf_counter on CPUs), and
- the device's own matmul peak P (a square GEMM at the same dtype), so that every row gets
  its FLOP-bound latency flops / P and its achieved fraction (flops / latency) / P.

Implementations (`IMPLEMENTATIONS`): the serial ViT-L, Para-Former-1-L with batched branches
(ParallelStage) and with the reference loop (ReferenceStage), and timm's
ParallelThingsBlock(num_parallel=L) behind the same patch embedding and head, where timm is
installed. All four do the same FLOPs at the same L (duat.counting.flops). timm's block is
a timing peer, not the same function: it sums L attentions, then L MLPs applied to that
sum, where a Para-Former branch is a whole layer (attention, then its own MLP).
"""
from __future__ import annotations

import gc
import importlib.metadata
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode  # counts dispatched ops

from duat.checks import real, whole, wholes
from duat.counting import flops, layer_flops
from duat.paraformer import ParallelStage
from duat.registry import SIZES, create_model, model_config
from duat.runtime import environment_info, select_device, threads

IMPLEMENTATIONS: dict[str, str] = {
    "vit": "serial ViT-L: L encoder layers one after another",
    "pf-batched": "Para-Former-1-L, batched branches (ParallelStage)",
    "pf-reference": "Para-Former-1-L, reference loop over branches (ReferenceStage)",
    "timm-parallel": "timm ParallelThingsBlock(num_parallel=L), same embedding and head",
}
# eager: plain calls. graph: one CUDA graph replay per call (CUDA only).
# compile: torch.compile(model), default mode (needs a working compiler toolchain).
VARIANTS = ("eager", "graph", "compile")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _names(name: str, values, known) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values)
    if not values:
        raise ValueError(f"{name} must list at least one value, got none")
    for v in values:
        if v not in known:
            raise ValueError(f"unknown {name[:-1] if name.endswith('s') else name} {v!r}; "
                             f"known: {', '.join(known)}")
    return tuple(dict.fromkeys(values))  # drop repeats, keep order


@dataclass
class BenchSpec:
    layers: tuple = (1, 2, 4, 8, 12, 16, 24)   # L: serial layers, or parallel branches
    batches: tuple = (1,)                       # images per forward pass
    implementations: tuple = tuple(IMPLEMENTATIONS)
    variants: tuple = ("eager",)                # see VARIANTS
    size: str = "small"                         # registry size: dim 192, 3 heads, MLP 4x
    image_size: int = 32                        # 32x32 in 4x4 patches: 64 patches + class token
    patch_size: int | None = None               # None: the registry's for the image size
    in_channels: int = 3
    num_classes: int = 10
    dtype: str = "float32"                      # also the dtype of the matmul peak
    device: str = "auto"                        # auto | cpu | cuda | cuda:1 | mps
    threads: int | None = None                  # CPU threads (None: torch's default)
    warmup: int = 5                             # untimed calls first (at least one)
    reps: int = 30                              # timed calls per case, at most
    min_reps: int = 5                           # ... and at least, whatever the time cap
    rounds: int = 3                             # reps split into rounds cycling the cases
    max_case_seconds: float = 5.0               # time cap per case; lowers reps (to min_reps)
    peak_sizes: tuple | None = None             # GEMM sides for the peak (None: by device)
    dims: tuple | None = None                   # token widths D to sweep (None: the size's own)
    heads: int | None = None                    # heads per layer (None: the size's; with dims,
                                                # D // 64 and at least 1: head width 64 or D)
    seed: int = 0

    def __post_init__(self):
        self.layers = wholes("layers (L)", self.layers)
        self.batches = wholes("batch", self.batches)
        self.implementations = _names("implementations", self.implementations, IMPLEMENTATIONS)
        self.variants = _names("variants", self.variants, VARIANTS)
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; known sizes: {', '.join(SIZES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        for name in ("image_size", "in_channels", "num_classes", "reps", "min_reps", "rounds"):
            setattr(self, name, whole(name, getattr(self, name)))
        self.warmup = whole("warmup", self.warmup, minimum=0)
        if self.min_reps < 3:
            raise ValueError(f"min_reps must be >= 3 so that a spread exists, got {self.min_reps}")
        if self.reps < self.min_reps:
            raise ValueError(f"reps ({self.reps}) must be >= min_reps ({self.min_reps})")
        if self.threads is not None:
            self.threads = whole("threads", self.threads)
        if self.patch_size is not None:
            self.patch_size = whole("patch_size", self.patch_size)
            if self.image_size % self.patch_size:
                raise ValueError(f"image_size {self.image_size} is not divisible by "
                                 f"patch_size {self.patch_size}")
        if self.peak_sizes is not None:
            self.peak_sizes = wholes("peak_sizes", self.peak_sizes)
        real("max_case_seconds", self.max_case_seconds, low=0, low_open=True)
        if self.dims is not None:
            self.dims = tuple(dict.fromkeys(wholes("dims (D)", self.dims)))
        if self.heads is not None:
            self.heads = whole("heads", self.heads)
        for D, h in self.widths():
            if D % h:
                raise ValueError(f"token width D={D} is not divisible by {h} heads; give "
                                 f"widths that are multiples of the heads, or other --heads")

    def widths(self) -> list[tuple[int, int]]:
        """The (D, heads) pairs to time: one per entry of dims, or the size's own."""
        if self.dims is None:
            return [(SIZES[self.size]["dim"], self.heads or SIZES[self.size]["heads"])]
        return [(D, self.heads or max(1, D // 64)) for D in self.dims]

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- models

def model_kwargs(spec: BenchSpec, width: tuple[int, int] | None = None) -> dict:
    """create_model's keywords for the spec's models; `width` (D, heads) overrides the size's."""
    kw = dict(size=spec.size, image_size=spec.image_size, in_channels=spec.in_channels,
              num_classes=spec.num_classes)
    if spec.patch_size is not None:
        kw["patch_size"] = spec.patch_size
    if width is not None:
        kw.update(dim=width[0], heads=width[1])
    return kw


def _timm_block():
    """timm's ParallelThingsBlock class, or the reason it cannot be imported (a str). timm
    is optional (the `bench` extra) and slow to import: imported here, when asked for."""
    try:
        from timm.models.vision_transformer import ParallelThingsBlock
    except Exception as err:  # ImportError, or a broken install
        return f"timm is not importable ({type(err).__name__}: {err}); pip install timm"
    return ParallelThingsBlock


def timm_available() -> str | None:
    """None if timm's ParallelThingsBlock can be imported, else the reason it cannot."""
    block = _timm_block()
    return block if isinstance(block, str) else None


def build_model(implementation: str, layers: int, spec: BenchSpec | None = None,
                width: tuple[int, int] | None = None) -> nn.Module:
    """The model timed as `implementation` at depth L, in eval mode, on the CPU in float32;
    `width` (D, heads) replaces the size's width (a regime sweep's D).

    Every model carries `.config` (a ParaFormerConfig) whose FLOPs (duat.counting.flops)
    are those of its forward pass; for timm's block that is the config of Para-Former-1-L.
    """
    spec = spec if spec is not None else BenchSpec()
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {implementation!r}; "
                         f"known: {', '.join(IMPLEMENTATIONS)}")
    whole("layers (L)", layers)
    torch.manual_seed(spec.seed)
    kw = model_kwargs(spec, width)
    if implementation == "vit":
        model = create_model(f"vit-{layers}", **kw)
    elif implementation == "pf-batched":
        model = create_model(f"pf-1-{layers}", stage="batched", **kw)
    elif implementation == "pf-reference":
        model = create_model(f"pf-1-{layers}", stage="reference", **kw)
    else:
        reason = timm_available()
        if reason is not None:
            raise RuntimeError(reason)
        ParallelThingsBlock = _timm_block()
        c = model_config(f"pf-1-{layers}", stage="reference", **kw)  # the sizes, and the FLOPs
        model = create_model("pf-1-1", **kw)  # its patch embedding, norm and head ...
        model.stages = nn.ModuleList([ParallelThingsBlock(    # ... around timm's stage
            c.dim, c.heads, num_parallel=layers, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
            norm_layer=partial(nn.LayerNorm, eps=c.norm_eps))])
        model.config = c
    return model.eval()


# ----------------------------------------------------------------------------- timing

def resolve_device(spec: BenchSpec) -> torch.device:
    device = select_device(spec.device)
    if "graph" in spec.variants and device.type != "cuda":
        raise ValueError(f"variant 'graph' (CUDA graphs) needs a CUDA device, got {device}")
    if spec.dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 is not benchmarked on the CPU (slow emulation); "
                         "use float32 or bfloat16")
    return device


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


def summarize(seconds: list[float]) -> dict:
    """Median and spread (p10, p25, p75, p90, IQR) of per-call times, in milliseconds."""
    if len(seconds) < 1:
        raise ValueError("no timings to summarize")
    ms = np.asarray(seconds, dtype=float) * 1e3
    p10, p25, p50, p75, p90 = np.percentile(ms, [10, 25, 50, 75, 90])
    return {"median_ms": float(p50), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "p10_ms": float(p10), "p25_ms": float(p25), "p75_ms": float(p75),
            "p90_ms": float(p90), "iqr_ms": float(p75 - p25),
            "rel_iqr": float((p75 - p25) / p50) if p50 > 0 else float("nan")}


def _gemm(n: int, device: torch.device, dtype: str) -> Callable[[], object]:
    """fn() computing one (n x n) @ (n x n) product at `dtype` on `device`."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    return lambda: a @ b


def matmul_peak(device: torch.device | str = "cpu", dtype: str = "float32",
                sizes: tuple[int, ...] | None = None, reps: int = 10) -> dict:
    """The device's measured matmul rate: square GEMMs (n x n) @ (n x n) at `dtype`.

    Returns the best median rate over the sizes as `gflops` (2 n^3 FLOPs per product, the
    convention of duat.counting), with the rate of each size and its spread. run_benchmark
    uses it to choose the size, then times that product between the models' calls, so the
    peak and the models see the same machine load.
    """
    device = torch.device(device)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    if sizes is None:
        sizes = (1024, 2048) if device.type == "cpu" else (2048, 4096, 8192)
    sizes = wholes("sizes", sizes)
    by_size = {}
    with torch.inference_mode():
        for n in sizes:
            fn = _gemm(n, device, dtype)
            time_calls(fn, 2, device)  # warm-up
            s = summarize(time_calls(fn, reps, device))
            fl = 2 * n ** 3
            by_size[str(n)] = {"gflops": fl / s["median_ms"] / 1e6,
                               "gflops_p25": fl / s["p75_ms"] / 1e6,
                               "gflops_p75": fl / s["p25_ms"] / 1e6,
                               "median_ms": s["median_ms"], "reps": reps}
            del fn
    best = max(by_size, key=lambda k: by_size[k]["gflops"])
    return {"gflops": by_size[best]["gflops"], "size": int(best), "dtype": dtype,
            "by_size": by_size}


# ----------------------------------------------------------------------------- per-op overhead

class _OpCounter(TorchDispatchMode):
    """Counts the aten operations that reach the kernels (views included: each one is a
    dispatch too)."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> int:
    """How many aten operations one call of fn() dispatches (under inference_mode)."""
    counter = _OpCounter()
    with torch.inference_mode(), counter:
        fn()
    return counter.ops


# The overhead probe: a ViT-8 so narrow (D = 8, 2 tokens, batch 1) that its arithmetic is
# nothing, so its time is the fixed cost of its operations. The same kinds of operations,
# through the same Python, as the benchmarked models: no assumed figure.
OVERHEAD_PROBE = dict(name="vit-8", dim=8, heads=1, mlp_ratio=1.0, image_size=4, patch_size=4,
                      in_channels=1, num_classes=2)


def _overhead_case(device: torch.device, dtype: str) -> "Case":
    kw = dict(OVERHEAD_PROBE)
    torch.manual_seed(0)
    model = create_model(kw.pop("name"), **kw).eval().to(device, DTYPES[dtype])
    x = torch.zeros(1, 1, 4, 4, device=device, dtype=DTYPES[dtype])
    fn = lambda: model(x)  # noqa: E731
    case = Case("op-overhead", "eager", 8, 1, model, fn)
    with torch.inference_mode():
        fn()
    case.ops = count_ops(fn)
    return case


def _overhead_summary(case: "Case") -> dict:
    s = summarize(case.seconds)
    per = 1e3 / case.ops  # ms per call -> us per op
    return {"us_per_op": s["median_ms"] * per, "us_p25": s["p25_ms"] * per,
            "us_p75": s["p75_ms"] * per, "ops": case.ops, "calls": len(case.seconds),
            "probe": "{name} at D={dim}, {heads} head, 2 tokens, batch 1".format(**OVERHEAD_PROBE)}


def op_overhead(device: torch.device | str = "cpu", dtype: str = "float32", reps: int = 50) -> dict:
    """The fixed cost of one operation on `device`, measured: the time of a forward pass of
    a model whose arithmetic is negligible (OVERHEAD_PROBE), divided by the operations it
    dispatches. Returns us_per_op (median) with its quartiles, and the op count."""
    device = torch.device(device)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    case = _overhead_case(device, dtype)
    with torch.inference_mode():
        time_calls(case.fn, 5, device)  # warm-up
        case.seconds = time_calls(case.fn, whole("reps", reps), device)
    return _overhead_summary(case)


def add_overhead_model(record: dict, us_per_op: float | None) -> dict:
    """Add the simple latency model t = max(ops x overhead, FLOPs / peak): the overhead
    floor `overhead_ms`, the prediction `predicted_ms`, and which term sets it (`bound_by`).
    Needs the record's `ops` and, from add_roofline, its `flop_bound_ms`."""
    if us_per_op is None or record.get("ops") is None:
        record["overhead_ms"] = record["predicted_ms"] = record["bound_by"] = None
        return record
    record["overhead_ms"] = record["ops"] * us_per_op / 1e3
    flop_ms = record.get("flop_bound_ms") or 0.0
    record["predicted_ms"] = max(record["overhead_ms"], flop_ms)
    record["bound_by"] = "overhead" if record["overhead_ms"] >= flop_ms else "flops"
    return record


# ----------------------------------------------------------------------------- memory

def estimate_bytes(config, batch: int, dtype: str = "float32") -> int:
    """A generous estimate of what one forward pass of `config` holds at its peak: the
    weights, and one stage's activations for all its branches at once (qkv, attention
    scores, MLP hidden, outputs), as the batched stage computes them."""
    c = config
    B, T, D, H, n = batch, c.num_tokens, c.dim, c.hidden_dim, c.width
    size = torch.finfo(DTYPES[dtype]).bits // 8
    weights = c.layers * (4 * D * D + 2 * D * H + 10 * D) + (c.in_channels * c.patch_size ** 2 + T + 1) * D
    activations = n * B * T * (3 * D + 4 * D + 2 * H) + n * B * c.heads * T * T + 4 * B * T * D
    return size * (weights + activations)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for the benchmark on `device` now, or None where it cannot be asked."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # not a POSIX system that says
            return None
    return None


def check_memory(spec: BenchSpec, device: torch.device, implementations) -> None:
    """Refuse, before anything is timed, a sweep whose largest case would not fit: one line
    naming the case, its estimate and what the device has free."""
    free = free_bytes(device)
    if free is None:
        return
    worst = None
    for width in spec.widths():
        for L in spec.layers:
            for impl in implementations:
                name = f"vit-{L}" if impl == "vit" else f"pf-1-{L}"
                c = model_config(name, **model_kwargs(spec, width))
                for batch in spec.batches:
                    need = estimate_bytes(c, batch, spec.dtype)
                    if worst is None or need > worst[0]:
                        worst = (need, name, width[0], batch, c.num_tokens)
    if worst[0] > 0.8 * free:
        need, name, D, batch, T = worst
        raise ValueError(f"{name} at D={D}, {T} tokens, batch {batch} needs about "
                         f"{need / 2**30:.1f} GiB, but {device} has {free / 2**30:.1f} GiB free; "
                         f"give a smaller --batch (or fewer --layers / --dims)")


# ----------------------------------------------------------------------------- the run

@dataclass
class Case:
    """One thing to time: a model (or the matmul probe) and the call that runs it; the
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


def environment(device: torch.device, spec: BenchSpec) -> dict:
    """What every record carries: duat.runtime.environment_info (versions, device, threads,
    date), and what else the timings depend on: the dtype, timm's version, the float32
    matmul precision and the batched stage's CPU row budget."""
    try:
        timm_version = importlib.metadata.version("timm")
    except Exception:  # not installed, or broken metadata
        timm_version = None
    return {**environment_info(device), "dtype": spec.dtype, "timm": timm_version,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu_row_budget": ParallelStage.cpu_row_budget}


def run_benchmark(spec: BenchSpec | None = None, progress: Callable[[str], None] | None = None,
                  measure_peak: bool = True) -> dict:
    """Time every (D, batch, L, implementation, variant) of `spec`; return the results dict.

    {"spec", "environment", "peak", "overhead", "skipped", "records"}: one record per case,
    each with its latency summary, FLOPs, dispatched op count, the FLOP-bound latency
    flops / peak, the achieved fraction of the peak, and the overhead model's prediction
    max(ops x overhead, flops / peak). Within a (D, batch, L) the timed calls are split
    into `rounds` that cycle over the cases, so slow drifts in machine load hit every case
    alike; the matmul peak and the per-op overhead are timed between those rounds, so they
    see the same machine. A sweep whose largest case would not fit in memory is refused
    before anything is timed.
    """
    spec = spec if spec is not None else BenchSpec()
    if not isinstance(spec, BenchSpec):
        raise TypeError(f"spec must be a BenchSpec, got {type(spec).__name__}")
    device = resolve_device(spec)
    say = progress or (lambda msg: None)
    with threads(spec.threads):
        env = environment(device, spec)
        skipped = {}
        impls = list(spec.implementations)
        if "timm-parallel" in impls and timm_available() is not None:
            skipped["timm-parallel"] = timm_available()
            impls.remove("timm-parallel")
        if not impls:
            raise ValueError("nothing to time: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        check_memory(spec, device, impls)
        probes, scan = [], None
        if measure_peak:  # pick the GEMM size, then time it between the models all run long
            say("measuring the matmul peak and the per-op overhead ...")
            scan = matmul_peak(device, spec.dtype, spec.peak_sizes, reps=5)
            probes.append(Case("matmul-peak", "eager", 0, 0, None, _gemm(scan["size"], device, spec.dtype)))
            probes.append(_overhead_case(device, spec.dtype))
        records = []
        for width in spec.widths():
            for batch in spec.batches:
                for L in spec.layers:
                    cases = _build_cases(spec, impls, L, batch, device, skipped, say, width)
                    time_cases(cases, spec, device, say, probes)
                    for case in cases:
                        records.append(_record(case, spec, env))
                    del cases
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        if not records:  # every variant failed to build: as refused as "nothing to time"
            raise ValueError("no case could be run: " +
                               "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        peak = overhead = None
        if probes:
            s, fl = summarize(probes[0].seconds), 2 * scan["size"] ** 3
            peak = {"gflops": fl / s["median_ms"] / 1e6, "gflops_p25": fl / s["p75_ms"] / 1e6,
                    "gflops_p75": fl / s["p25_ms"] / 1e6, "size": scan["size"],
                    "dtype": spec.dtype, "calls": len(probes[0].seconds), "scan": scan}
            overhead = _overhead_summary(probes[1])
        for r in records:
            add_roofline(r, peak["gflops"] if peak else None)
            add_overhead_model(r, overhead["us_per_op"] if overhead else None)
        return {"spec": spec.to_dict(), "environment": env, "peak": peak, "overhead": overhead,
                "skipped": skipped, "records": records}


def _build_cases(spec, impls, L, batch, device, skipped, say, width=None) -> list[Case]:
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size, generator=gen)
    x = x.to(device, DTYPES[spec.dtype])
    cases = []
    for impl in impls:
        model = build_model(impl, L, spec, width).to(device, DTYPES[spec.dtype])
        with torch.inference_mode():
            model(x)  # a first call may do one-off work; count the ops of a steady one
        ops = count_ops(lambda: model(x))
        for variant in spec.variants:
            key = f"{impl}+{variant}"
            try:
                with torch.inference_mode():
                    fn = make_callable(model, x, variant)
            except Exception as err:  # e.g. torch.compile without a compiler: note and go on
                skipped[key] = f"{type(err).__name__}: {err}"
                say(f"  skipped {key}: {skipped[key]}")
                continue
            cases.append(Case(impl, variant, L, batch, model, fn, ops=ops))
    return cases


PEAK_CALLS_PER_ROUND = 2  # calls of each probe timed before each round of each (D, batch, L)


def time_cases(cases: list[Case], spec: BenchSpec, device: torch.device, say,
               probes: list[Case] | Case | None = None) -> None:
    """Warm every case up, then time them in interleaved rounds (spec.rounds), so that slow
    drifts of the machine's load hit all cases alike; `probes` (the matmul peak, the per-op
    overhead) are timed before each round. The benchmark and the explorer both time
    through this loop."""
    probes = [] if probes is None else [probes] if isinstance(probes, Case) else list(probes)
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
        s = summarize(case.seconds)
        say(f"  D {case.model.config.dim:>3}  batch {case.batch:>3}  L {case.layers:>2}  {case.implementation:<14} "
            f"{case.variant:<7} {s['median_ms']:9.2f} ms  (p25-p75 {s['p25_ms']:.2f}-"
            f"{s['p75_ms']:.2f}, {len(case.seconds)} reps)")


def _record(case: Case, spec: BenchSpec, env: dict) -> dict:
    c = case.model.config
    rec = {
        "implementation": case.implementation, "variant": case.variant,
        "label": case.implementation if case.variant == "eager"
        else f"{case.implementation}+{case.variant}",
        "layers": case.layers, "batch": case.batch,
        "model": f"vit-{case.layers}" if case.implementation == "vit" else f"pf-1-{case.layers}",
        "dim": c.dim, "heads": c.heads, "mlp_ratio": c.mlp_ratio, "tokens": c.num_tokens,
        "image_size": c.image_size, "patch_size": c.patch_size,
        "dtype": spec.dtype, "device": env["device"], "device_name": env["device_name"],
        "torch": env["torch"], "threads": env["threads"], "date": env["date"],
        "flops": flops(c, case.batch), "layer_flops": layer_flops(c, case.batch),
        "ops": case.ops, "warmup": case.warmup, "reps": len(case.seconds),
    }
    rec.update(summarize(case.seconds))
    rec["samples_ms"] = [round(s * 1e3, 5) for s in case.seconds]
    return rec


def add_roofline(record: dict, peak_gflops: float | None) -> dict:
    """Add achieved GFLOP/s, the peak, the FLOP-bound latency and the fraction of the peak."""
    record["achieved_gflops"] = record["flops"] / record["median_ms"] / 1e6
    record["peak_gflops"] = peak_gflops
    if peak_gflops:
        record["flop_bound_ms"] = record["flops"] / peak_gflops / 1e6
        record["peak_fraction"] = record["achieved_gflops"] / peak_gflops
    else:
        record["flop_bound_ms"] = record["peak_fraction"] = None
    return record
