"""Wrong answers to the exercises of notebook 07."""
import statistics

import torch


def _unpaired(records, model, twin):                       # means of all runs, spreads combined
    a = [r["test_acc"] for r in records if r["model"] == model]
    b = [r["test_acc"] for r in records if r["model"] == twin]
    return (statistics.mean(a) - statistics.mean(b),
            (statistics.variance(a) + statistics.variance(b)) ** 0.5)


def _by_position(records, model, twin):                    # pairs the i-th run of each model
    a = [r["test_acc"] for r in records if r["model"] == model]
    b = [r["test_acc"] for r in records if r["model"] == twin]
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), statistics.stdev(d)


def _population(records, model, twin):                     # paired, but divides by S
    a = {r["seed"]: r["test_acc"] for r in records if r["model"] == model}
    b = {r["seed"]: r["test_acc"] for r in records if r["model"] == twin}
    d = [a[s] - b[s] for s in a if s in b]
    return statistics.mean(d), statistics.pstdev(d)


def _wrong_quantiles(values, level, resamples, generator):  # 1 - level and level
    v = torch.tensor(values, dtype=torch.float64)
    means = v[torch.randint(len(v), (resamples, len(v)), generator=generator)].mean(1)
    return torch.quantile(means, 1 - level).item(), torch.quantile(means, level).item()


def _transposed_draw(values, level, resamples, generator):  # indices drawn as (n, resamples)
    v = torch.tensor(values, dtype=torch.float64)
    means = v[torch.randint(len(v), (len(v), resamples), generator=generator)].mean(0)
    return torch.quantile(means, (1 - level) / 2).item(), torch.quantile(means, (1 + level) / 2).item()


def _no_replacement(values, level, resamples, generator):   # permutations: every mean the same
    v = torch.tensor(values, dtype=torch.float64)
    means = torch.stack([v[torch.randperm(len(v), generator=generator)].mean() for _ in range(resamples)])
    return torch.quantile(means, (1 - level) / 2).item(), torch.quantile(means, (1 + level) / 2).item()


WRONG = {
    "7.1": [
        lambda values: (statistics.mean(values), statistics.pstdev(values)),       # divides by S
        lambda values: (statistics.mean(values), statistics.variance(values)),     # no square root
        lambda values: (statistics.mean(values), statistics.stdev(values) / len(values) ** 0.5),  # standard error
    ],
    "7.2": [_unpaired, _by_position, _population],
    "7.3": [_wrong_quantiles, _transposed_draw, _no_replacement],
}
