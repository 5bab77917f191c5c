"""Exercises of notebook 09 (the explorer, docs/method.md sections 4-5): reading repeated
timings as the benchmark does (median and quartiles), the serial / parallel speed ratio with
its range, and the FLOP bound with the fraction of the peak reached."""
from __future__ import annotations

import statistics

import torch

from duat.bench import add_roofline, check_targets, summarize
from duat.counting import flops
from duat.exercises.core import BadAnswer, call, cases, compare, exercise, need_callable
from duat.registry import model_config

F64 = torch.float64


def _timings(g: torch.Generator, n: int, base_ms: float) -> list[float]:
    """n per-call times in milliseconds around base_ms: a skewed spread and one slow outlier."""
    ms = base_ms * torch.exp(0.15 * torch.randn(n, generator=g, dtype=torch.float64))
    ms[int(torch.randint(n, (1,), generator=g))] *= 4.0      # a call the machine interrupted
    return [float(t) for t in ms]


def _triple(got, case: str, what: str) -> torch.Tensor:
    if isinstance(got, dict) or isinstance(got, (str, bytes)) or not hasattr(got, "__len__"):
        raise BadAnswer(f"on {case} it returned {type(got).__name__}, not three numbers {what}.")
    if len(got) != 3:
        raise BadAnswer(f"on {case} it returned {len(got)} values, not three numbers {what}.")
    try:
        return torch.tensor([float(v) for v in got], dtype=torch.float64)
    except (TypeError, ValueError):
        raise BadAnswer(f"on {case} it returned {got!r:.60}, not three numbers {what}.") from None


def _nearest_rank(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, int(q * len(s)))]


@exercise("9.1", "median and quartiles of repeated timings",
          "a function spread(seconds) returning (median_ms, p25_ms, p75_ms) of a list of "
          "per-call times in seconds, in milliseconds, quartiles interpolated linearly")
def spread(answer) -> str:
    need_callable(answer, "a function spread(seconds)")
    for i, g in cases(6):
        n = 4 + 3 * i                                   # odd and even counts, 7 .. 22
        ms = _timings(g, n, base_ms=0.5 + i)
        seconds = [t / 1e3 for t in ms]
        case = f"case {i}: {n} timings"
        got = _triple(call(answer, list(seconds), case=case), case, "(median_ms, p25_ms, p75_ms)")
        s = summarize(seconds)
        expected = torch.tensor([s["median_ms"], s["p25_ms"], s["p75_ms"]], dtype=torch.float64)
        exclusive = statistics.quantiles(ms, n=4)       # statistics' default method
        compare(got, expected, case=case, what="(median_ms, p25_ms, p75_ms)", rtol=1e-9,
                atol=1e-12, mistakes=[
                    (expected / 1e3, "the times are in seconds: multiply by 1000 for milliseconds."),
                    (torch.tensor([statistics.fmean(ms), s["p25_ms"], s["p75_ms"]], dtype=F64),
                     "the mean, not the median: one interrupted call pulls the mean up."),
                    (torch.tensor([exclusive[1], exclusive[0], exclusive[2]], dtype=F64),
                     "statistics.quantiles uses the 'exclusive' method by default; the benchmark "
                     "interpolates linearly between sorted values (numpy.percentile, "
                     "torch.quantile, or statistics.quantiles(..., method='inclusive'))."),
                    (torch.tensor([s["median_ms"], _nearest_rank(ms, 0.25), _nearest_rank(ms, 0.75)],
                                  dtype=F64),
                     "a quartile between two sorted values is interpolated, not the nearer one."),
                    (torch.tensor([s["median_ms"], min(ms), max(ms)], dtype=F64),
                     "p25 and p75 are the quartiles, not the smallest and largest time."),
                ], hint="sort the times (in ms); the q-quantile sits at position q (n - 1), "
                        "interpolated linearly between its two neighbours.")
    return "6 unseen sets of timings"


def _record(implementation: str, seconds: list[float]) -> dict:
    """A benchmark record of one case (batch 1, 12 layers), as duat.bench writes it."""
    return dict(implementation=implementation, variant="eager", batch=1, layers=12, dim=192,
                tokens=65, **summarize(seconds))


def _kit_ratio(serial_ms: list[float], parallel_ms: list[float]) -> dict:
    """The speed-up the benchmark's target reports (duat.bench.check_targets)."""
    results = {"environment": {"device": "cpu"},
               "records": [_record("vit", [t / 1e3 for t in serial_ms]),
                           _record("pf-batched", [t / 1e3 for t in parallel_ms])]}
    (target,) = [c for c in check_targets(results) if "serial ViT" in c["target"]]
    return target


@exercise("9.2", "the serial / parallel speed ratio with its range",
          "a function speed_ratio(serial_ms, parallel_ms) returning (ratio, low, high): the "
          "median of the serial times over the median of the parallel ones, and its range "
          "from the two models' quartiles, for two lists of per-call times in ms")
def speed_ratio(answer) -> str:
    need_callable(answer, "a function speed_ratio(serial_ms, parallel_ms)")
    for i, g in cases(6):
        serial = _timings(g, 9 + 2 * i, base_ms=1.0 + 0.4 * i)
        parallel = _timings(g, 8 + 3 * i, base_ms=0.7 + 0.5 * i)
        case = f"case {i}: {len(serial)} serial and {len(parallel)} parallel timings"
        got = _triple(call(answer, list(serial), list(parallel), case=case), case,
                      "(ratio, low, high)")
        kit = _kit_ratio(serial, parallel)
        expected = torch.tensor([kit["value"], kit["low"], kit["high"]], dtype=torch.float64)
        s, p = summarize([t / 1e3 for t in serial]), summarize([t / 1e3 for t in parallel])
        compare(got, expected, case=case, what="(ratio, low, high)", rtol=1e-9, atol=1e-12,
                mistakes=[
                    (1 / expected[[0, 2, 1]], "upside down: the speed-up is serial / parallel "
                     "(above 1 when Para-Former is faster)."),
                    (torch.tensor([kit["value"], kit["high"], kit["low"]], dtype=F64),
                     "low and high are swapped: low is the smallest the ratio can be."),
                    (torch.tensor([kit["value"], s["p25_ms"] / p["p25_ms"], s["p75_ms"] / p["p75_ms"]],
                                  dtype=F64),
                     "the range pairs opposite quartiles: low = serial p25 / parallel p75 "
                     "(the serial at its fastest over the parallel at its slowest), high = "
                     "serial p75 / parallel p25."),
                    (torch.tensor([s["mean_ms"] / p["mean_ms"], kit["low"], kit["high"]],
                                  dtype=F64),
                     "the ratio of the means, not of the medians: an interrupted call moves "
                     "a mean a lot, a median hardly."),
                ], hint="median, p25 and p75 of each list (as in exercise 9.1); ratio = "
                        "median_serial / median_parallel, low = p25_serial / p75_parallel, "
                        "high = p75_serial / p25_parallel.")
    return "6 unseen pairs of timings"


ROOFLINE_CASES = [("pf-1-6", dict(dim=96, heads=3), 1), ("vit-8", dict(dim=128, heads=4), 4),
                  ("pf-2-4", dict(dim=64, heads=2), 16), ("pf-3-5", dict(dim=192, heads=6), 2),
                  ("vit-2", dict(dim=32, heads=1), 64)]


@exercise("9.3", "the FLOP bound and the fraction of the peak",
          "a function roofline(flops, median_ms, peak_gflops) returning (bound_ms, "
          "achieved_gflops, peak_fraction) for a forward pass of `flops` FLOPs that took "
          "median_ms milliseconds on a device whose matmul rate is peak_gflops GFLOP/s")
def roofline(answer) -> str:
    need_callable(answer, "a function roofline(flops, median_ms, peak_gflops)")
    for (i, g), (name, size, batch) in zip(cases(len(ROOFLINE_CASES)), ROOFLINE_CASES):
        fl = flops(model_config(name, image_size=32, in_channels=3, patch_size=4, **size), batch)
        peak = float(20 + 400 * torch.rand(1, generator=g, dtype=F64))
        slower = float(1.2 + 8 * torch.rand(1, generator=g, dtype=F64))   # than the bound
        median = fl / (peak * 1e6) * slower
        case = f"case {i}: {name} at batch {batch}, {fl / 1e9:.3g} GFLOP, {peak:.4g} GFLOP/s peak"
        got = _triple(call(answer, fl, median, peak, case=case), case,
                      "(bound_ms, achieved_gflops, peak_fraction)")
        r = add_roofline({"flops": fl, "median_ms": median}, peak)
        expected = torch.tensor([r["flop_bound_ms"], r["achieved_gflops"], r["peak_fraction"]],
                                dtype=torch.float64)
        compare(got, expected, case=case, what="(bound_ms, achieved_gflops, peak_fraction)",
                rtol=1e-9, atol=1e-12, mistakes=[
                    (expected * torch.tensor([1e3, 1.0, 1.0], dtype=F64),
                     "the bound is 1000 times too large: "
                     "flops / (peak_gflops * 1e9) is in seconds; times 1e3 (not 1e6) for ms."),
                    (expected * torch.tensor([1e-3, 1.0, 1.0], dtype=F64),
                     "the bound is off by 1000: "
                     "flops / (peak_gflops * 1e9) seconds, times 1e3 for milliseconds."),
                    (expected * torch.tensor([1.0, 1e3, 1e3], dtype=F64),
                     "achieved GFLOP/s: flops / "
                     "(median_ms / 1e3) / 1e9; the median is in milliseconds."),
                    (expected * torch.tensor([1.0, 1e-3, 1e-3], dtype=F64),
                     "achieved GFLOP/s is off by "
                     "1000: flops / (median_ms / 1e3 seconds) / 1e9."),
                    (torch.tensor([r["flop_bound_ms"], r["achieved_gflops"], 1 / r["peak_fraction"]],
                                  dtype=F64),
                     "the fraction is achieved / peak (at most 1), not peak / achieved."),
                ], hint="bound_ms = flops / (peak_gflops * 1e9) * 1e3; achieved_gflops = flops / "
                        "(median_ms / 1e3) / 1e9; peak_fraction = achieved_gflops / peak_gflops.")
    return f"{len(ROOFLINE_CASES)} unseen models, latencies and peaks"
