"""Exercises of notebook 07 (data scale and diversity, docs/method.md section 5): the mean
and spread over seeds, the difference of two models paired by seed, and a bootstrap
interval for a mean."""
from __future__ import annotations

import copy
import math

import torch

from duat.exercises.core import Wrong, as_numbers, call, cases, compare, exercise, same_number
from duat.experiments.runs import bootstrap_interval as kit_bootstrap_interval
from duat.experiments.runs import stats
from duat.experiments.twins import twin_differences


def _finite(values: tuple[float, float], case: str, what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise Wrong(f"{what} is {values} on {case}: not finite.", "a division by zero or the "
                    "square root of a negative number? Work the case by hand.")


# ----------------------------------------------------------------------------- 7.1

def _population_std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


@exercise("7.1", "the mean and the spread over seeds",
          "a function mean_and_spread(values) returning (mean, sample standard deviation with "
          "S - 1) as two numbers, for a list of S >= 2 test accuracies")
def mean_and_spread(answer) -> str:
    for i, g in cases():
        S = 2 + i
        values = [int(k) / 359 for k in torch.randint(300, 359, (S,), generator=g)]
        case = f"case {i}: {S} accuracies"
        got = as_numbers(call(answer, list(values), case=case), 2, "the result")
        _finite(got, case, "the result")
        ref = stats(values)
        same_number(got[0], ref["mean"], case=case, what="the mean", rel=1e-9,
                    hint="the mean is the sum of the values divided by S.")
        same_number(got[1], ref["std"], case=case, what="the spread", rel=1e-9, mistakes=[
            (_population_std(values), "with S seeds the sample standard deviation divides by "
             "S - 1, not S: the mean was estimated from the same values."),
            (ref["std"] ** 2, "that is the variance: take its square root."),
            (ref["std"] / math.sqrt(S), "that is the standard error of the mean (std / sqrt(S)); "
             "the spread over seeds is the standard deviation itself."),
        ])
    return "5 unseen sets of 3 to 7 accuracies"


# ----------------------------------------------------------------------------- 7.2

def _records(g: torch.Generator, i: int) -> tuple[list[dict], str, str]:
    """Records as a sweep stores them (the keys twin_differences reads), shuffled: the model,
    its twin and two other models; in some cases a seed that only one of the pair ran."""
    n, other = (2, 4, 8, 12, 4)[i - 1], (4, 8, 2, 4, 12)[i - 1]
    seeds = torch.randperm(20, generator=g)[:3 + i % 3].tolist()
    extra_model = seeds.pop() if i in (2, 4) else None   # only the Para-Former ran this seed
    extra_twin = seeds.pop() if i in (3, 4) else None    # only the ViT ran this one
    rows = []

    def add(model: str, width: int, layers: int, for_seeds: list[int]) -> None:
        for s in for_seeds:
            rows.append({"model": model, "depth": layers // width, "width": width, "layers": layers,
                         "seed": s, "fraction": 1.0, "per_class": None, "num_classes": 10,
                         "test_samples": 359,
                         "test_acc": int(torch.randint(320, 359, (1,), generator=g)) / 359})
    add(f"pf-1-{n}", n, n, seeds + ([extra_model] if extra_model is not None else []))
    add(f"vit-{n}", 1, n, seeds + ([extra_twin] if extra_twin is not None else []))
    add(f"pf-1-{other}", other, other, seeds)
    add(f"vit-{other}", 1, other, seeds)
    add("pf-1-1", 1, 1, seeds)
    order = torch.randperm(len(rows), generator=g).tolist()
    return [rows[k] for k in order], f"pf-1-{n}", f"vit-{n}"


def _accs(records: list[dict], model: str) -> list[float]:
    return [r["test_acc"] for r in records if r["model"] == model]


@exercise("7.2", "the difference of two models, paired by seed",
          "a function paired_difference(records, model, twin) returning (mean, sample standard "
          "deviation) of test_acc(model, seed s) - test_acc(twin, seed s) over the seeds s both "
          "were run with, for records = a list of dicts with keys 'model', 'seed', 'test_acc' "
          "(like results['records'])")
def paired_difference(answer) -> str:
    for i, g in cases():
        records, model, twin = _records(g, i)
        case = (f"case {i}: {len(records)} records, {model} against {twin}, "
                f"{len({r['seed'] for r in records if r['model'] == model})} and "
                f"{len({r['seed'] for r in records if r['model'] == twin})} seeds")
        got = as_numbers(call(answer, copy.deepcopy(records), model, twin, case=case), 2, "the result")
        _finite(got, case, "the result")
        pairs = [r["difference"] for r in twin_differences({"records": records})
                 if r["model"] == model and r["twin"] == twin]
        ref = stats(pairs)
        a, b = _accs(records, model), _accs(records, twin)
        by_position = [x - y for x, y in zip(a, b)]
        same_number(got[0], ref["mean"], case=case, what="the mean difference", rel=1e-9, mistakes=[
            (sum(a) / len(a) - sum(b) / len(b), "pair by seed: use only the seeds both models "
             "were run with (here one model has a seed the other lacks)."),
            (-ref["mean"], "the sign: model minus twin, test_acc(model) - test_acc(twin)."),
            (stats(by_position)["mean"], "the records are not in seed order: match each of the "
             "model's runs with the twin's run of the same seed, not the same position."),
        ], hint="build {seed: test_acc} for each model and subtract seed by seed.")
        sa, sb = stats(a)["std"], stats(b)["std"]
        same_number(got[1], ref["std"], case=case, what="the spread of the differences", rel=1e-9,
                    mistakes=[
            (_population_std(pairs), "the sample standard deviation divides by S - 1, not S."),
            (math.sqrt(sa ** 2 + sb ** 2), "that combines the two models' spreads as if they were "
             "independent; pairing takes the spread of the per-seed differences themselves."),
            (abs(sa - sb), "the spread of a difference is not the difference of the spreads: "
             "take the standard deviation of the per-seed differences."),
            (stats(by_position)["std"], "the records are not in seed order: pair the runs by "
             "their 'seed', not by their position in the list."),
        ], hint="compute the list of per-seed differences first, then its sample standard "
                "deviation.")
    return "5 unseen shuffled sweeps (some with a seed only one of the two models ran)"


# ----------------------------------------------------------------------------- 7.3

def _draws(values, level, resamples, seed, *, shape="rows", quantiles=None):
    """What a few common variants of the bootstrap compute (the mistakes of 7.3)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor(values, dtype=torch.float64)
    n = len(values)
    if shape == "columns":
        means = v[torch.randint(n, (n, resamples), generator=g)].mean(0)
    else:
        means = v[torch.randint(n, (resamples, n), generator=g)].mean(1)
    q = torch.tensor(quantiles or ((1 - level) / 2, (1 + level) / 2), dtype=torch.float64)
    return torch.quantile(means, q)


@exercise("7.3", "a bootstrap interval for a mean",
          "a function bootstrap_mean_interval(values, level, resamples, generator) returning "
          "(low, high): draw idx = torch.randint(n, (resamples, n), generator=generator) once, "
          "take the mean of each row of values[idx], and return the (1 - level)/2 and "
          "(1 + level)/2 quantiles of those means (torch.quantile)")
def bootstrap_interval(answer) -> str:
    for i, g in cases():
        n = 4 + 3 * i
        if i % 2:   # paired differences in test images (integers), or accuracies
            values = torch.randint(-6, 10, (n,), generator=g).double().tolist()
        else:
            values = [int(k) / 359 for k in torch.randint(320, 359, (n,), generator=g)]
        level = (0.95, 0.9, 0.8, 0.95, 0.99)[i - 1]
        resamples = (1000, 400, 250, 2000, 600)[i - 1]
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=g))
        case = f"case {i}: {n} values, level {level}, {resamples} resamples"
        got = as_numbers(call(answer, list(values), level, resamples,
                              torch.Generator().manual_seed(seed), case=case), 2, "the interval")
        expected = torch.tensor(kit_bootstrap_interval(values, level, resamples,
                                                       torch.Generator().manual_seed(seed)),
                                dtype=torch.float64)
        mean = sum(values) / n
        compare(torch.tensor(got, dtype=torch.float64), expected, case=case, what="(low, high)",
                atol=1e-9, rtol=1e-7, mistakes=[
            (lambda: _draws(values, level, resamples, seed, quantiles=(1 - level, level)),
             "a central interval leaves (1 - level)/2 out on each side: the quantiles are "
             "(1 - level)/2 and (1 + level)/2, not 1 - level and level."),
            (lambda: _draws(values, level, resamples, seed, shape="columns"),
             "draw the indices with shape (resamples, n), one resample per row, and average "
             "each row (dim 1)."),
            (lambda: torch.quantile(torch.tensor(values, dtype=torch.float64), torch.tensor(
                [(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)),
             "the quantiles are taken over the resampled *means*, not over the values "
             "themselves."),
            (torch.tensor([mean, mean], dtype=torch.float64), "a resample draws n values *with* "
             "replacement (torch.randint); a permutation of all n has always the same mean."),
        ], hint="use the generator you are given in exactly one call "
                "torch.randint(n, (resamples, n), generator=generator), so your resamples are "
                "the kit's; then torch.quantile over the row means.")
    return "5 unseen samples, levels and resample counts"
