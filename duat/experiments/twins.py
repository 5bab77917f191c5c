"""Serial twins: Para-Former against the serial ViT of the same layers, parameters and FLOPs.

A sweep that runs Para-Former-m-n next to ViT-(m*n) can separate what the parallel layout
buys from what size alone buys (docs/method.md 5.1 and 5.3). `twin_differences` pairs every
Para-Former run with its twin; `pooled_twins` pools those pairs over the data variants; `width_and_size` splits the gain of Para-Former-1-n over one
layer into the arrangement (Para-Former-1-n minus ViT-n) and the size (ViT-n minus ViT-1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from duat.experiments.plots import label
from duat.experiments.runs import bootstrap_interval, stats


def twin_differences(results: dict, metric: str = "test_acc") -> list[dict]:
    """Para-Former-m-n minus its serial twin ViT-(m*n) (same parameter count), paired by seed
    and data variant: one row per Para-Former run with n > 1 whose twin was run too."""
    twins = {(r["model"], r["seed"], r["fraction"], r["per_class"], r["num_classes"]): r
             for r in results["records"] if r["width"] == 1}
    rows = []
    for r in results["records"]:
        if r["width"] == 1:
            continue
        twin = twins.get((f"vit-{r['layers']}", r["seed"], r["fraction"], r["per_class"], r["num_classes"]))
        if twin is None:
            continue
        diff = r[metric] - twin[metric]
        rows.append({"model": r["model"], "twin": twin["model"], "depth": r["depth"],
                     "width": r["width"], "layers": r["layers"], "seed": r["seed"],
                     "fraction": r["fraction"], "per_class": r["per_class"],
                     "num_classes": r["num_classes"], "difference": diff,
                     "images": round(diff * r["test_samples"]), "test_samples": r["test_samples"]})
    return rows


VARIANT_KEYS = ("fraction", "per_class", "num_classes")


def width_and_size(results: dict, n: int = 12, metric: str = "test_acc") -> list[dict]:
    """What n parallel layers buy, split in two, per data variant (one row each).

    Para-Former-1-n minus Para-Former-1-1 (= ViT-1), paired by seed, is the whole gain
    ('total'). It is the sum of two parts, each paired by seed too:
    'arrangement', Para-Former-1-n minus ViT-n: n layers side by side against the same n
    layers in series, at equal parameters and FLOPs (duat.counting; the tests check it),
    and 'size', ViT-n minus ViT-1: what n layers instead of one buy in series, i.e. what
    more parameters and FLOPs alone buy. Each row holds the mean, sample std (n - 1), min
    and max over seeds of the three models' `metric` ('parallel', 'serial', 'single') and of
    the three differences, the number of seeds where each difference is above / below zero
    ('_wins' / '_losses'), and the size of one test image in `metric` ('one_image').
    Seeds missing for any of the three models are left out of that variant."""
    names = {"parallel": f"pf-1-{n}", "serial": f"vit-{n}", "single": "pf-1-1"}
    if n < 2:
        raise ValueError(f"width_and_size compares n >= 2 parallel layers with one, got n={n!r}")
    by = {}
    for r in results["records"]:
        for role, model in names.items():
            if r["model"] == model or (role == "single" and r["model"] == "vit-1"):
                by.setdefault(tuple(r[k] for k in VARIANT_KEYS), {}).setdefault(role, {})[r["seed"]] = r
    rows = []
    for variant, runs in by.items():
        if len(runs) < 3:
            continue
        seeds = sorted(set.intersection(*(set(runs[role]) for role in names)))
        if not seeds:
            continue
        value = {role: [runs[role][s][metric] for s in seeds] for role in names}
        parts = {"total": [p - q for p, q in zip(value["parallel"], value["single"])],
                 "arrangement": [p - q for p, q in zip(value["parallel"], value["serial"])],
                 "size": [p - q for p, q in zip(value["serial"], value["single"])]}
        row = {**dict(zip(VARIANT_KEYS, variant)), "n": n, "metric": metric, "seeds": seeds,
               **{f"{role}_model": model for role, model in names.items()}}
        for key, values in {**value, **parts}.items():
            st = stats(values)
            row.update({f"{key}_{k}": st[k] for k in ("mean", "std", "min", "max")})
        for key, values in parts.items():
            row[f"{key}_wins"] = sum(v > 0 for v in values)
            row[f"{key}_losses"] = sum(v < 0 for v in values)
        test = runs["parallel"][seeds[0]]
        k = test["num_classes"]
        per_image = 1.0 / test["test_samples"]
        row["one_image"] = per_image / (1 - 1 / k) if metric == "test_acc_above_chance" else per_image
        rows.append(row)
    if not rows:
        raise ValueError(f"the results hold no variant with pf-1-{n}, vit-{n} and pf-1-1 "
                         f"run with the same seeds")
    return sorted(rows, key=lambda r: (r["fraction"], r["num_classes"], r["per_class"] or 0))


@dataclass(frozen=True)
class PooledTwins:
    """Para-Former-1-n minus ViT-n over every seed and data variant of a sweep, in points."""
    model: str
    twin: str
    metric: str
    pairs: int
    mean: float          # points
    better: int          # pairs where Para-Former is ahead
    worse: int
    low: float           # the bootstrap interval of the mean, points
    high: float
    level: float

    def __str__(self) -> str:
        return (f"{label(self.model)} - {label(self.twin)}: mean {self.mean:+.2f} points over "
                f"{self.pairs} pairs (better in {self.better}, worse in {self.worse}), "
                f"{100 * self.level:.0f} % bootstrap interval [{self.low:+.2f}, {self.high:+.2f}]")


def pooled_twins(results: dict, metric: str = "test_acc", level: float = 0.95,
                 resamples: int = 2000, seed: int = 0) -> list[PooledTwins]:
    """`twin_differences` pooled per Para-Former model, with a seeded percentile bootstrap
    interval of the mean (the same on every machine), in the order the models first appear."""
    points: dict[tuple[str, str], list[float]] = {}
    for row in twin_differences(results, metric):
        points.setdefault((row["model"], row["twin"]), []).append(100 * row["difference"])
    pooled = []
    for (model, twin), values in points.items():
        low, high = bootstrap_interval(values, level=level, resamples=resamples,
                                       generator=torch.Generator().manual_seed(seed))
        pooled.append(PooledTwins(model, twin, metric, len(values), sum(values) / len(values),
                                  sum(v > 0 for v in values), sum(v < 0 for v in values),
                                  low, high, level))
    return pooled
