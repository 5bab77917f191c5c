"""What every experiment of `duat reproduce` shares: what an experiment is (`Experiment`:
its name, how to run it, its tables and figures), where its results go, the statistics over
seeds, the progress lines, the one message an interrupted run leaves, and writing a finished
run (CSV tables, figures, then results.json).

A run's folder is opened by duat.storage.open_run_dir (refusals, --resume), its records so
far kept with save_partial after every run, and dropped by finish_partial once results.json
is written; the thread count is duat.runtime.threads (restored afterwards, also on error).
"""
from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from duat.checks import real, whole
from duat.locations import output_dir
from duat.storage import PARTIAL, atomic_write_json, write_csv, write_figure

Say = Callable[[str], None]
Rows = Sequence[dict]


# ----------------------------------------------------------------------------- an experiment

@dataclass(frozen=True)
class Experiment:
    """One experiment of `duat reproduce`: what it is called, how it runs, and what a
    finished run writes. duat.experiments.catalog holds them all."""

    name: str
    title: str                                          # one line, for `duat reproduce --list`
    run: Callable[..., dict]                            # run(profile, **options) -> results
    tables: Callable[[dict], Mapping[str, Rows]]        # results -> {CSV file name: rows}
    figures: Mapping[str, Callable[[dict], object]]     # figure file name -> draw(results)
    keys: tuple[str, ...]                               # what its results.json holds, at least
    report: Callable[[dict], str]                       # the results as a plain-text table
    compare: Callable[[dict, dict], list[dict]] | None = None   # (new, reference) -> rows
    float_format: str | None = None                     # of the CSV tables' floats
    savefig: Mapping = field(default_factory=dict)      # matplotlib savefig options
    one_process: bool = True                            # False: runs data parallel under torchrun

    def write(self, results: dict, out_dir: str | Path) -> None:
        """A finished run's files in `out_dir`: each table as CSV (duat.storage.write_csv),
        each figure (drawn from `results`, saved at dpi 120), and results.json last: its
        presence marks a whole run."""
        out_dir = Path(out_dir)
        for file_name, rows in self.tables(results).items():
            write_csv(out_dir / file_name, rows, float_format=self.float_format)
        for file_name, draw in self.figures.items():
            write_figure(draw(results), out_dir / file_name, **self.savefig)
        atomic_write_json(out_dir / "results.json", results)


# ----------------------------------------------------------------------------- folders

def results_folder(name: str, profile: str) -> str:
    """The folder name of an experiment's results: NAME (quick) or NAME-PROFILE."""
    return name if profile == "quick" else f"{name}-{profile}"


def default_output_dir(name: str, profile: str) -> Path:
    """Where a new run of `name` in `profile` is written unless --out says otherwise
    (duat.locations.output_dir: duat/results/ in a checkout, ./results/ when installed,
    $DUAT_RESULTS if set). To read the committed results, use
    duat.experiments.catalog.load_results(name)."""
    return output_dir(results_folder(name, profile))


# ----------------------------------------------------------------------------- specs

def spec_for(cls, profiles: Mapping[str, dict], profile: str, overrides: Mapping) -> object:
    """The spec dataclass `cls` of an experiment for `profile` (a key of `profiles`, whose
    values are that profile's fields), any field overridden (None: keep the profile's)."""
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}: expected one of {', '.join(profiles)}")
    known = {f.name for f in fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; options: {', '.join(sorted(known))}")
    values = dict(profiles[profile], profile=profile)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


# ----------------------------------------------------------------------------- statistics

def stats(values: Sequence[float]) -> dict:
    """mean, sample std (n - 1; 0.0 for one value), min, max and n of some numbers."""
    values = list(values)
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}


def seed_summary(records: Sequence[dict], keys: Sequence[str], metrics: Sequence[str],
                 first: Sequence[str] = ()) -> list[dict]:
    """One row per configuration (the values of `keys`, in the order first met): those
    values, `seeds` (how many records), METRIC_mean, _std (sample), _min and _max of each
    metric over them, then the `first` fields of the configuration's first record."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, group in groups.items():
        row = {**dict(zip(keys, key)), "seeds": len(group)}
        for m in metrics:
            s = stats([r[m] for r in group])
            row.update({f"{m}_{stat}": s[stat] for stat in ("mean", "std", "min", "max")})
        rows.append({**row, **{f: group[0][f] for f in first}})
    return rows


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                       generator: torch.Generator | None = None) -> tuple[float, float]:
    """A percentile bootstrap interval for the mean of `values`: `resamples` resamples of
    all n values drawn with replacement in one call,
    `idx = torch.randint(n, (resamples, n), generator=generator)`, the mean of each row of
    `values[idx]` (float64), and their (1 - level)/2 and (1 + level)/2 quantiles
    (torch.quantile, linear interpolation). With the same generator state the interval is
    the same on every machine."""
    try:
        v = None if isinstance(values, (str, bytes)) else torch.tensor(
            [float(a) for a in values], dtype=torch.float64)
    except (TypeError, ValueError):
        v = None
    if v is None or v.numel() == 0 or not torch.isfinite(v).all():
        raise ValueError(f"bootstrap_interval needs a non-empty sequence of finite numbers, got "
                         f"{str(values)[:60]}")
    level = real("level", level, 0.0, 1.0, low_open=True, high_open=True)
    resamples = whole("resamples", resamples)
    idx = torch.randint(v.numel(), (resamples, v.numel()), generator=generator)
    means = v[idx].mean(1)
    low, high = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2],
                                                   dtype=torch.float64)).tolist()
    return low, high


# ----------------------------------------------------------------------------- progress

def stderr(text: str) -> None:
    """A line on stderr, at once (where a stop is reported when there is no `log`)."""
    print(text, file=sys.stderr, flush=True)


class Progress:
    """A progress bar over a run's trainings (or none), and where its lines go: above the
    bar, else to `log` (None: nowhere)."""

    def __init__(self, total: int, desc: str, bar: bool, log: Say | None):
        self.bar = tqdm(total=total, unit="run", desc=desc, dynamic_ncols=True) if bar else None
        self.log = log

    def say(self, text: str) -> None:
        if self.log is not None:
            (self.bar.write if self.bar is not None else self.log)(text)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def kept_on_stop(name: str, out_dir: Path | None, kept: Callable[[], str | None],
                 say: Say | None) -> Iterator[None]:
    """Around a run's trainings: when they stop (Ctrl-C or an error), say once how many runs
    partial.json keeps and how to continue, then let the stop go on. `kept()`: the count to
    name ("3" or "3 of 8"), None when nothing is kept (then nothing is said)."""
    try:
        yield
    except BaseException as err:
        count = kept() if out_dir is not None and say is not None else None
        if count:
            why = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped by an error"
            say(f"{name}: {why}; {count} runs are kept in {Path(out_dir) / PARTIAL}; "
                f"continue with --resume (resume=True)")
        raise
