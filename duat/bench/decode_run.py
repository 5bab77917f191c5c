"""Timing decode: sequences of decode steps, interleaved in rounds, and the run.

duat.bench.decode holds what is timed (the spec, the record, the models, the decoders and
the costs); here: each step timed on its own (`run_sequence`), the cases of one (D, batch)
in interleaved rounds with the three probes between them (`time_decode_cases`), the memory
check, and `run_decode`, which sweeps the spec and puts every record on the model
t = max(ops x tau, bytes / bandwidth, FLOPs / peak).
"""
from __future__ import annotations

import gc
import importlib.metadata
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from duat.bench.decode import (DecodeRecord, DecodeSpec, GRAPH_TOLERANCE, GraphDecoder,
                               KitDecoder, PeerDecoder, add_prediction, build_kit_model,
                               build_peer, check_graph, decode_cost, kit_config, layer_params,
                               model_name, peer_available)
from duat.bench.harness import environment, free_bytes, load_average
from duat.bench.timing import (DTYPES, PEAK_CALLS_PER_ROUND, Probe, bandwidth_probe,
                               bandwidth_reading, count_ops, gemm_probe,
                               latency_stats, matmul_peak, overhead_reading, peak_reading)
from duat.language import ParaFormerLM, ParaFormerLMConfig
from duat.runtime import select_device, threads


# ----------------------------------------------------------------------------- timing

def _timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    """fn()'s result and its seconds, started on an idle device (CUDA events on GPUs)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3
    if device.type == "mps":
        torch.mps.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "mps":
        torch.mps.synchronize()
    return out, time.perf_counter() - t0


@dataclass
class DecodeCase:
    """One thing to time: a decoder and what the record needs; the loop fills the rest."""
    implementation: str
    variant: str
    layers: int
    batch: int
    dim: int
    decoder: object
    params: int
    ops: int | None = None
    graph_diff: float | None = None
    warmup: int = 0
    reps: int = 0
    prefill: list = field(default_factory=list)
    steps: list = field(default_factory=list)


def run_sequence(case: DecodeCase, spec: DecodeSpec, device: torch.device) -> tuple[float, list[float]]:
    """One sequence: the prefill's seconds, and each decode step's."""
    dec = case.decoder
    token, first = _timed(dec.prefill, device)
    times = []
    for t in range(spec.prompt_tokens, spec.positions):
        token, s = _timed(lambda: dec.step(token, t), device)  # noqa: B023 (called at once)
        times.append(s)
    return first, times


# Calls of each probe per round: the overhead probe in a burst, as decode steps come one
# after another (its first call after the models' is slow: cold caches, sleeping threads);
# the others as the image benchmark times them (PEAK_CALLS_PER_ROUND).
PROBE_CALLS = {"op-overhead": 16}


def time_decode_cases(cases: list[DecodeCase], spec: DecodeSpec, device: torch.device,
                      probes: list[Probe], say) -> None:
    """Warm each case up (whole sequences), set its timed sequences by the time cap, then
    time them in interleaved rounds (forward, then backward over the cases), the probes
    (peak, tau, bandwidth) timed before each round, with garbage collection off."""
    with torch.inference_mode():
        for case in cases:
            t0 = time.perf_counter()
            for _ in range(spec.warmup):
                run_sequence(case, spec, device)
                case.warmup += 1
            per = (time.perf_counter() - t0) / case.warmup
            case.reps = max(spec.min_reps, min(spec.reps, int(spec.max_case_seconds / max(per, 1e-7))))
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            for r in range(spec.rounds):
                for probe in probes:
                    for _ in range(PROBE_CALLS.get(probe.name, PEAK_CALLS_PER_ROUND)):
                        probe.seconds.append(_timed(probe.fn, device)[1])
                for case in (cases if r % 2 == 0 else reversed(cases)):
                    done = len(case.prefill)
                    for _ in range(min(math.ceil(case.reps / spec.rounds), case.reps - done)):
                        first, steps = run_sequence(case, spec, device)
                        case.prefill.append(first)
                        case.steps += steps
        finally:
            if was_enabled:
                gc.enable()
    for case in cases:
        s = latency_stats(case.steps)
        say(f"  D {case.dim:>4}  batch {case.batch:>2}  n {case.layers:>2}  {case.implementation:<8} "
            f"{case.variant:<6} {s['median_ms']:9.3f} ms/token  (p25-p75 {s['p25_ms']:.3f}-"
            f"{s['p75_ms']:.3f}, {len(case.prefill)} x {spec.new_tokens} steps)")


# ----------------------------------------------------------------------------- the run

# The overhead probe of decoding: one decode step of a GPT-1 so narrow (D = 8, one head,
# 8 tokens of vocabulary, 4 positions, batch 1) that its arithmetic and its bytes are
# nothing, so its time is the fixed cost of its operations: the same kinds of operations,
# through the same Python, as the decode steps timed (not the image models' probe).
STEP_PROBE = dict(vocab_size=8, positions=4, dim=8, heads=1, mlp_ratio=1.0)


def step_overhead_probe(device: torch.device, dtype: str) -> Probe:
    """The overhead probe of decoding: one decode step of STEP_PROBE (`work`: its operations;
    duat.bench.timing.overhead_reading turns its timed calls into tau)."""
    torch.manual_seed(0)
    model = ParaFormerLM(ParaFormerLMConfig(**STEP_PROBE, activation="gelu_tanh"))
    model = model.eval().to(device, DTYPES[dtype])
    prompt = torch.zeros(1, 2, dtype=torch.long, device=device)
    with torch.inference_mode():
        dec = KitDecoder(model, prompt, STEP_PROBE["positions"])
        token = dec.prefill()
    fn = lambda: dec.step(token, 2)  # noqa: E731
    return Probe("op-overhead", fn, count_ops(fn),
                 "one decode step of GPT-1 at D={dim}, {heads} head, vocabulary {vocab_size}, "
                 "{positions} positions, batch 1".format(**STEP_PROBE))


def _prompt(spec: DecodeSpec, batch: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(spec.seed)
    return torch.randint(0, spec.vocab_size, (batch, spec.prompt_tokens), generator=gen).to(device)


def _cases(models: dict, spec: DecodeSpec, dim: int, batch: int, device: torch.device,
           skipped: dict, say) -> list[DecodeCase]:
    prompt, cases = _prompt(spec, batch, device), []
    for (impl, n), model in models.items():
        params = sum(p.numel() for p in model.parameters())
        for variant in (spec.variants if impl != "hf-gpt2" else ("eager",)):
            key, diff = f"{model_name(impl, n)}+{variant} at D={dim}, batch {batch}", None
            try:
                with torch.inference_mode():
                    if impl == "hf-gpt2":
                        dec = PeerDecoder(model, prompt)
                    elif variant == "graph":
                        dec = GraphDecoder(model, prompt, spec.positions)
                        diff = check_graph(dec)  # before timing: the same logits as eager
                        if not diff <= GRAPH_TOLERANCE:
                            raise RuntimeError(f"graph logits differ from eager ones by {diff:.2e} "
                                               f"(> {GRAPH_TOLERANCE:g})")
                    else:
                        dec = KitDecoder(model, prompt, spec.positions)
            except RuntimeError as err:  # a capture that fails: noted, the others go on
                skipped[key] = f"{type(err).__name__}: {err}"
                say(f"  skipped {key}: {skipped[key]}")
                continue
            case = DecodeCase(impl, variant, n, batch, dim, dec, params, graph_diff=diff)
            if variant == "eager":
                with torch.inference_mode():
                    token = dec.prefill()
                    case.ops = count_ops(lambda: dec.step(token, spec.prompt_tokens))  # noqa: B023
            cases.append(case)
    return cases


def decode_record(case: DecodeCase, spec: DecodeSpec, env: dict) -> dict:
    """The record of a timed decode case (a DecodeRecord, as a dict), without the model's
    terms (add_prediction adds them)."""
    c = kit_config(case.implementation, case.layers, case.dim, spec)
    # the kit's step attends over all S_max positions (masked); HF's cache grows a step at a time
    attended = (spec.prompt_tokens + (spec.new_tokens + 1) / 2 if case.implementation == "hf-gpt2"
                else spec.positions)
    cost = decode_cost(c, case.batch, attended, case.params, spec.positions, spec.dtype)
    s, p = latency_stats(case.steps), latency_stats(case.prefill)
    return asdict(DecodeRecord(
        implementation=case.implementation, variant=case.variant,
        label=case.implementation if case.variant == "eager" else f"{case.implementation}+{case.variant}",
        model=model_name(case.implementation, case.layers), layers=case.layers, batch=case.batch,
        dim=case.dim, heads=c.heads, mlp_ratio=spec.mlp_ratio, vocab_size=spec.vocab_size,
        prompt_tokens=spec.prompt_tokens, new_tokens=spec.new_tokens, positions=spec.positions,
        dtype=spec.dtype, device=env["device"], device_name=env["device_name"], torch=env["torch"],
        threads=env["threads"], date=env["date"], params=case.params, flops=cost["flops"],
        weights_bytes=cost["weights_bytes"], kv_bytes=cost["kv_bytes"],
        bytes=cost["weights_bytes"] + cost["kv_bytes"], ops=case.ops, warmup=case.warmup,
        reps=len(case.prefill), steps=len(case.steps),
        **{k: s[k] for k in ("median_ms", "mean_ms", "min_ms", "p10_ms", "p25_ms", "p75_ms",
                             "p90_ms", "iqr_ms", "rel_iqr")},
        prefill_median_ms=p["median_ms"], prefill_p25_ms=p["p25_ms"], prefill_p75_ms=p["p75_ms"],
        tokens_per_s=case.batch / s["median_ms"] * 1e3, graph_max_abs_diff=case.graph_diff,
        samples_ms=[round(x * 1e3, 5) for x in case.steps]))


def _models(spec: DecodeSpec, dim: int, peer: bool, device: torch.device) -> dict:
    """Every model timed at width D, built once for all batch sizes: {(implementation, n): model}.
    Built on the device itself (a GPU initialises a billion weights in a blink, a CPU does not)."""
    dtype = DTYPES[spec.dtype]
    gpt = sorted(set(spec.layers) | (set(spec.peer_layers) if peer else set()))
    want = ([("gpt", n) for n in gpt] + [("pf", n) for n in spec.layers]
            + ([("hf-gpt2", n) for n in spec.peer_layers] if peer else []))
    with torch.device(device):
        return {(impl, n): (build_peer(n, dim, spec) if impl == "hf-gpt2"
                            else build_kit_model(impl, n, dim, spec)).to(device, dtype)
                for impl, n in want}


def check_decode_memory(spec: DecodeSpec, device: torch.device) -> None:
    """Refuse, before anything is timed, a sweep whose widest group of models (every model
    of one D is held at once, built once for all batch sizes) would not fit."""
    free = free_bytes(device)
    if free is None:
        return
    D = max(spec.dims)
    H, size = int(D * spec.mlp_ratio), torch.finfo(DTYPES[spec.dtype]).bits // 8
    layers = 2 * sum(set(spec.layers) | set(spec.peer_layers)) + sum(spec.peer_layers)
    models = 2 * len(spec.layers) + 2 * len(spec.peer_layers)
    need = size * (layers * layer_params(D, H) + models * (spec.vocab_size + spec.positions + 2) * D
                   + layers * 2 * spec.positions * D * max(spec.batches))
    if need > 0.8 * free:
        raise ValueError(f"the models at D={D} need about {need / 2**30:.1f} GiB, but {device} "
                         f"has {free / 2**30:.1f} GiB free; give fewer --layers or smaller --dims")


def resolve_decode_device(spec: DecodeSpec) -> torch.device:
    device = select_device(spec.device)  # a wrong or absent device: one clear ValueError
    if "graph" in spec.variants and device.type != "cuda":
        raise ValueError(f"variant 'graph' (a CUDA graph of one decode step) needs a CUDA "
                         f"device, got {device}")
    if spec.dtype == "float16" and device.type == "cpu":
        raise ValueError("dtype float16 is not benchmarked on the CPU (slow emulation); "
                         "use float32 or bfloat16")
    return device


def run_decode(spec: DecodeSpec | None = None, progress: Callable[[str], None] | None = None,
               measure_rates: bool = True) -> dict:
    """Time every (D, batch, n, implementation, variant) of `spec`; the results dict.

    {"kind": "decode", "spec", "environment", "peak", "overhead", "bandwidth", "skipped",
    "records", "wall_s"}: one record (DecodeRecord, as a dict) per case, with its per-token
    latency, prefill, costs and the model's terms. All models of one width D are built
    once; within a (D, batch) the sequences are split into rounds cycling over every case,
    and the three probes are timed before each round, so drifts in the machine's load hit
    the cases and the rates alike. measure_rates=False: no probes, no predictions."""
    spec = spec if spec is not None else DecodeSpec()
    if not isinstance(spec, DecodeSpec):
        raise TypeError(f"spec must be a DecodeSpec, got {type(spec).__name__}")
    device = resolve_decode_device(spec)
    say = progress or (lambda msg: None)
    started = time.perf_counter()
    with threads(spec.threads):
        env = environment(device, spec)
        env["transformers"] = _version("transformers")
        load_start = load_average()
        check_decode_memory(spec, device)
        skipped, peer = {}, bool(spec.peer_layers)
        if peer and peer_available() is not None:
            skipped["hf-gpt2"] = peer_available()
            say(f"  no outside peer: {skipped['hf-gpt2']}")
            peer = False
        probes, scan = [], None
        if measure_rates:
            say("measuring the matmul peak, the per-op overhead and the memory bandwidth ...")
            scan = matmul_peak(device, spec.dtype, spec.peak_sizes, reps=5)
            probes = [gemm_probe(scan["size"], device, spec.dtype),
                      step_overhead_probe(device, spec.dtype),
                      bandwidth_probe(device, spec.dtype, spec.bandwidth_bytes)]
        records = []
        for dim in spec.dims:
            say(f"D {dim}: building the models ...")
            models = _models(spec, dim, peer, device)
            for batch in spec.batches:
                cases = _cases(models, spec, dim, batch, device, skipped, say)
                time_decode_cases(cases, spec, device, probes, say)
                records += [decode_record(case, spec, env) for case in cases]
                del cases
            del models
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if not records:
            raise ValueError("no case could be run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
        peak = overhead = bandwidth = None
        if probes:
            peak, overhead, bandwidth = (peak_reading(probes[0], scan), overhead_reading(probes[1]),
                                         bandwidth_reading(probes[2]))
        for r in records:
            add_prediction(r, overhead and overhead["us_per_op"], bandwidth and bandwidth["gbps"],
                           peak and peak["gflops"])
        env["load_average"] = [load_start, load_average()]   # at the start and at the end
    return {"kind": "decode", "spec": spec.to_dict(), "environment": env, "peak": peak,
            "overhead": overhead, "bandwidth": bandwidth, "skipped": skipped,
            "records": records, "wall_s": round(time.perf_counter() - started, 1)}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except Exception:  # not installed, or broken metadata
        return None
