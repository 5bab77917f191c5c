"""Exercises of notebook 09 (the explorer, docs/method.md sections 4-5): reading repeated
timings as the benchmark does (median and quartiles), the serial / parallel speed ratio with
its range, and the rule that flags a reading as too noisy to trust."""
from __future__ import annotations

import statistics

import numpy as np
import torch

from duat.bench import check_targets, latency_stats
from duat.exercises.core import BadAnswer, Wrong, as_numbers, call, cases, compare, exercise
from duat.widgets.explorer import SLOWDOWN_LIMIT, SPREAD_LIMIT, noise_reason

F64 = torch.float64


def _timings(g: torch.Generator, n: int, base_ms: float) -> list[float]:
    """n per-call times in milliseconds around base_ms: a skewed spread and one slow outlier."""
    ms = base_ms * torch.exp(0.15 * torch.randn(n, generator=g, dtype=torch.float64))
    ms[int(torch.randint(n, (1,), generator=g))] *= 4.0      # a call the machine interrupted
    return [float(t) for t in ms]


def _nearest_rank(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, int(q * len(s)))]


@exercise("9.1", "median and quartiles of repeated timings",
          "a function spread(seconds) returning (median_ms, p25_ms, p75_ms) of a list of "
          "per-call times in seconds, in milliseconds, quartiles interpolated linearly")
def spread(answer) -> str:
    for i, g in cases(6):
        n = 4 + 3 * i                                   # odd and even counts, 7 .. 22
        ms = _timings(g, n, base_ms=0.5 + i)
        seconds = [t / 1e3 for t in ms]
        case = f"case {i}: {n} timings"
        got = as_numbers(call(answer, list(seconds), case=case), 3, f"(median_ms, p25_ms, p75_ms) on {case}")
        s = latency_stats(seconds)
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


def _case_record(implementation: str, seconds: list[float]) -> dict:
    """A benchmark record of one case (batch 1, 12 layers), as duat.bench writes it."""
    return dict(implementation=implementation, variant="eager", batch=1, layers=12, dim=192,
                tokens=65, **latency_stats(seconds))


def _kit_ratio(serial_ms: list[float], parallel_ms: list[float]) -> dict:
    """The speed-up the benchmark's target reports (duat.bench.check_targets)."""
    results = {"environment": {"device": "cpu"},
               "records": [_case_record("vit", [t / 1e3 for t in serial_ms]),
                           _case_record("pf-batched", [t / 1e3 for t in parallel_ms])]}
    (target,) = [c for c in check_targets(results) if "serial ViT" in c["target"]]
    return target


@exercise("9.2", "the serial / parallel speed ratio with its range",
          "a function speed_ratio(serial_ms, parallel_ms) returning (ratio, low, high): the "
          "median of the serial times over the median of the parallel ones, and its range "
          "from the two models' quartiles, for two lists of per-call times in ms")
def speed_ratio(answer) -> str:
    for i, g in cases(6):
        serial = _timings(g, 9 + 2 * i, base_ms=1.0 + 0.4 * i)
        parallel = _timings(g, 8 + 3 * i, base_ms=0.7 + 0.5 * i)
        case = f"case {i}: {len(serial)} serial and {len(parallel)} parallel timings"
        got = as_numbers(call(answer, list(serial), list(parallel), case=case), 3,
                         f"(ratio, low, high) on {case}")
        kit = _kit_ratio(serial, parallel)
        expected = torch.tensor([kit["value"], kit["low"], kit["high"]], dtype=torch.float64)
        s, p = latency_stats([t / 1e3 for t in serial]), latency_stats([t / 1e3 for t in parallel])
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


def _reading(g: torch.Generator) -> tuple[float, float, float, list[float]]:
    """A (p25, median, p75) reading and earlier medians, often near the explorer's limits."""
    median = float(1 + 20 * torch.rand(1, generator=g, dtype=F64))
    spread = float(1.0 + 0.9 * torch.rand(1, generator=g, dtype=F64))   # p75 / p25, around 1.5
    p25 = median / spread ** 0.5
    earlier = [median / float(0.6 + 2.2 * torch.rand(1, generator=g, dtype=F64))
               for _ in range(int(torch.randint(0, 4, (1,), generator=g)))]
    return p25, median, p25 * spread, earlier


@exercise("9.3", "when is a reading too noisy to trust?",
          "a function too_noisy(p25_ms, median_ms, p75_ms, earlier_medians) returning True when "
          "the explorer flags the reading: its p75 / p25 is above SPREAD_LIMIT (1.5), or its "
          "median is above SLOWDOWN_LIMIT (2) times the lowest of earlier_medians (a list of ms, "
          "maybe empty), and False otherwise")
def too_noisy(answer) -> str:
    n = 40
    for i, g in cases(n):
        p25, median, p75, earlier = _reading(g)
        case = (f"case {i}: p25 {p25:.4g} ms, median {median:.4g} ms, p75 {p75:.4g} ms, "
                f"earlier medians {[round(m, 4) for m in earlier]}")
        got = call(answer, p25, median, p75, list(earlier), case=case)
        if isinstance(got, torch.Tensor) and got.numel() == 1 and got.dtype == torch.bool:
            got = bool(got)
        if not isinstance(got, (bool, np.bool_)):
            raise BadAnswer(f"on {case} it returned {type(got).__name__} {str(got)[:40]!r}, "
                            "not True or False.")
        expected = noise_reason({"p25_ms": p25, "median_ms": median, "p75_ms": p75}, earlier) is not None
        if bool(got) != expected:
            spread, slow = p75 / p25, (median / min(earlier) if earlier else None)
            why = (f"here p75 / p25 = {spread:.3f} (limit {SPREAD_LIMIT})"
                   + (f" and median / lowest earlier = {slow:.3f} (limit {SLOWDOWN_LIMIT:g})"
                      if slow is not None else " and there are no earlier readings"))
            raise Wrong(f"too_noisy says {bool(got)} on {case}; the explorer says {expected}.",
                        f"{why}. Flag it when either rule fires; the spread is p75 over p25 "
                        "(not over the median), and the slowdown compares with the lowest earlier "
                        "median (not their mean), only when there are earlier readings.")
    return f"{n} unseen readings near both limits"
