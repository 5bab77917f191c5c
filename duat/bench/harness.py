"""The benchmark harness: build the models, time them honestly, and put each on a roofline.

docs/method.md section 4 ends with a note on hardware: the n branches of a Para-Former stage do
the same arithmetic as n serial layers, so "time does not grow with n" holds only where the
device has idle parallel capacity; elsewhere time is bounded below by FLOPs / peak rate.
This module measures both sides of that sentence in one run:

- latency of each implementation at each depth L (warm-up, many repetitions, median and
  spread, under torch.inference_mode; CUDA events on GPUs, perf_counter on CPUs), and
- the device's own matmul peak P (a square GEMM at the same dtype), so that every row gets
  its FLOP-bound latency flops / P and its achieved fraction (flops / latency) / P, and
- the fixed cost of one operation tau, so that every row also gets its overhead floor
  ops x tau and the prediction max(ops x tau, flops / P) (the timing is duat.bench.timing).

A sweep over token widths (BenchSpec.dims: the regime preset) times the same cases at each
width D; a sweep whose largest case would not fit the device's free memory is refused
before anything is timed (check_memory).

Implementations (`IMPLEMENTATIONS`): the serial ViT-L, Para-Former-1-L with batched branches
(ParallelStage) and with the reference loop (ReferenceStage), and timm's
ParallelThingsBlock(num_parallel=L) behind the same patch embedding and head, where timm is
installed. All four do the same FLOPs at the same L (duat.counting.flops). timm's block is
a timing peer, not the same function: it sums L attentions, then L MLPs applied to that
sum, where a Para-Former branch is a whole layer (attention, then its own MLP).
"""
from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from duat.bench.records import BenchRecord, add_roofline, bench_record, model_name
from duat.bench.timing import (DTYPES, VARIANTS, Case, add_overhead_model, check_dtype,
                               count_ops, gemm_probe, make_callable, matmul_peak,
                               overhead_probe, overhead_reading, peak_reading, time_cases)
from duat.checks import real, whole, wholes
from duat.counting import count_parameters
from duat.paraformer import ParaFormer, ParaFormerConfig, ParallelStage
from duat.registry import SIZES, create_model, model_config
from duat.runtime import environment_info, select_device, threads

IMPLEMENTATIONS: dict[str, str] = {
    "vit": "serial ViT-L: L encoder layers one after another",
    "pf-batched": "Para-Former-1-L, batched branches (ParallelStage)",
    "pf-reference": "Para-Former-1-L, reference loop over branches (ReferenceStage)",
    "timm-parallel": "timm ParallelThingsBlock(num_parallel=L), same embedding and head",
}


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
        check_dtype(self.dtype)
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


# ----------------------------------------------------------------------------- the device

def resolve_device(spec: BenchSpec) -> torch.device:
    device = select_device(spec.device)
    if "graph" in spec.variants and device.type != "cuda":
        raise ValueError(f"variant 'graph' (CUDA graphs) needs a CUDA device, got {device}")
    if spec.dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 is not benchmarked on the CPU (slow emulation); "
                         "use float32 or bfloat16")
    return device


# ----------------------------------------------------------------------------- memory

def estimate_bytes(config: ParaFormerConfig, batch: int, dtype: str = "float32") -> int:
    """A generous estimate of what one forward pass of `config` holds at its peak: the
    weights (counted on the meta device, allocating nothing), and one stage's activations
    for all its branches at once (qkv, attention scores, MLP hidden, outputs), as the
    batched stage computes them."""
    if not isinstance(config, ParaFormerConfig):
        raise TypeError(f"config must be a ParaFormerConfig, got {type(config).__name__}")
    c, B = config, whole("batch", batch)
    check_dtype(dtype)
    with torch.device("meta"):
        weights = count_parameters(ParaFormer(c))
    T, D, H, n = c.num_tokens, c.dim, c.hidden_dim, c.width
    activations = n * B * T * (3 * D + 4 * D + 2 * H) + n * B * c.heads * T * T + 4 * B * T * D
    return torch.finfo(DTYPES[dtype]).bits // 8 * (weights + activations)


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
    worst, batch, L = None, max(spec.batches), max(spec.layers)  # the estimate grows with both
    for width in spec.widths():
        for impl in implementations:
            name = model_name(impl, L)
            c = model_config(name, **model_kwargs(spec, width))
            need = estimate_bytes(c, batch, spec.dtype)
            if worst is None or need > worst[0]:
                worst = (need, name, width[0], batch, c.num_tokens)
    if worst[0] > 0.8 * free:
        need, name, D, batch, T = worst
        raise ValueError(f"{name} at D={D}, {T} tokens, batch {batch} needs about "
                         f"{need / 2**30:.1f} GiB, but {device} has {free / 2**30:.1f} GiB free; "
                         f"give a smaller --batch (or fewer --layers / --dims)")


# ----------------------------------------------------------------------------- the run


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


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes, all cores together), or None
    where the system does not say: on a shared machine, what the timings competed with."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not a POSIX system that says
        return None


def run_benchmark(spec: BenchSpec | None = None, progress: Callable[[str], None] | None = None,
                  measure_peak: bool = True) -> dict:
    """Time every (D, batch, L, implementation, variant) of `spec`; return the results dict.

    {"spec", "environment", "peak", "overhead", "skipped", "records"}: one record per case
    (a BenchRecord, as a dict), each with its latency statistics, FLOPs, dispatched op count, the FLOP-bound latency
    flops / peak, the achieved fraction of the peak, and the overhead model's prediction
    max(ops x overhead, flops / peak). Within a (D, batch, L) the timed calls are split
    into `rounds` that cycle over the cases, so slow drifts in machine load hit every case
    alike; the matmul peak and the per-op overhead are timed between those rounds, so they
    see the same machine. A sweep whose largest case would not fit in memory is refused
    before anything is timed. The environment records the machine's load average at the
    start and at the end (load_average), what the timings competed with.
    """
    spec = spec if spec is not None else BenchSpec()
    if not isinstance(spec, BenchSpec):
        raise TypeError(f"spec must be a BenchSpec, got {type(spec).__name__}")
    device = resolve_device(spec)
    say = progress or (lambda msg: None)
    with threads(spec.threads):
        env = environment(device, spec)
        load_start = load_average()
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
            probes = [gemm_probe(scan["size"], device, spec.dtype), overhead_probe(device, spec.dtype)]
        records: list[BenchRecord] = []
        for width in spec.widths():
            for batch in spec.batches:
                for L in spec.layers:
                    cases = _build_cases(spec, impls, L, batch, device, skipped, say, width)
                    time_cases(cases, spec, device, say, probes)
                    records += [bench_record(case, spec.dtype, env) for case in cases]
                    del cases
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        if not records:  # every variant failed to build: as refused as "nothing to time"
            raise ValueError("no case could be run: " +
                               "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        peak = peak_reading(probes[0], scan) if probes else None
        overhead = overhead_reading(probes[1]) if probes else None
        records = [add_overhead_model(add_roofline(r, peak and peak["gflops"]),
                                      overhead and overhead["us_per_op"]) for r in records]
        env["load_average"] = [load_start, load_average()]   # at the start and at the end
        return {"spec": spec.to_dict(), "environment": env, "peak": peak, "overhead": overhead,
                "skipped": skipped, "records": [asdict(r) for r in records]}


def _build_cases(spec, impls, L, batch, device, skipped, say, width=None) -> list[Case]:
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size, generator=gen)
    x = x.to(device, DTYPES[spec.dtype])
    cases = []
    for impl in impls:
        model = build_model(impl, L, spec, width).to(device, DTYPES[spec.dtype])
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
