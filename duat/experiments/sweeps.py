"""The paper's accuracy sweeps as data (docs/method.md section 5, claims 1 and 3), and
`run_sweep` to train them.

Each sweep is a `Sweep` in SWEEPS, not notebook code: a list of models, a list of data
variants (subsets), seeds and a training budget, for two profiles (see duat.experiments).
A run's settings are a `SweepSpec`: the sweep, its profile's plan with any overrides, and
where the data comes from.
Every run trains from scratch with its own seed (model init, data order and subset), and is
scored on the fixed test split after its last epoch (no early stopping, no selection on the
test set). A run writes results.json (every run's record: config, seed, device, versions,
wall time; and the per-configuration summary), results.csv, summary.csv and a plot.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch

from duat import data
from duat.checks import whole, wholes
from duat.distributed.process import Context
from duat.experiments.plots import format_sweep, plot_sweep
from duat.experiments.runs import Experiment, Progress, default_output_dir, kept_on_stop, seed_summary
from duat.registry import create_model, parse_name
from duat.runtime import environment_info, profile as check_profile, seed_everything, select_device
from duat.runtime import threads as using_threads
from duat.storage import PARTIAL, finish_partial, open_run_dir, save_partial
from duat.training import engine
from duat.training.engine import TrainConfig


# ----------------------------------------------------------------------------- the specs

@dataclass(frozen=True)
class Plan:
    """What one profile of an experiment trains, on what data, and for how long."""

    dataset: str
    models: tuple[str, ...]                  # registry names: 'pf-m-n', 'vit-L'
    variants: tuple[dict, ...] = ({},)       # data subsets, e.g. {"fraction": 0.1}
    seeds: tuple[int, ...] = (0, 1, 2)
    size: str = "tiny"                       # registry size preset
    model_overrides: dict = field(default_factory=dict)  # e.g. {"patch_size": 4}
    epochs: int | None = None                # passes over the (sub)set ...
    steps: int | None = None                 # ... or this many optimisation steps for every variant
    batch_size: int = 32
    lr: float = 3e-3
    warmup: float = 0.05                     # share of the run spent warming up
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    device: str = "cpu"                      # quick: CPU, so the numbers repeat anywhere
    threads: int | None = 1                  # torch CPU threads (tiny models: 1 is as fast)

    def __post_init__(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("a plan gives either epochs or steps")


@dataclass(frozen=True)
class Sweep:
    """One of the paper's accuracy sweeps: its plans for the two profiles."""

    name: str
    title: str
    question: str        # the paper's claim it tests (docs/method.md section 5)
    x: str               # what the plot sweeps: 'width', 'layers', 'fraction', 'num_classes'
    quick: Plan
    full: Plan

    def plan(self, profile: str) -> Plan:
        return self.quick if check_profile(profile) == "quick" else self.full


WIDTHS = (1, 2, 4, 8, 12)
GRID_M, GRID_N = (1, 2, 3), (1, 2, 4)


def _width_models(widths: Sequence[int]) -> tuple[str, ...]:
    # Para-Former-1-n and ViT-n have the same n layers; ViT-1 is Para-Former-1-1 (one run)
    return tuple(f"pf-1-{n}" for n in widths) + tuple(f"vit-{n}" for n in widths if n > 1)


def _grid_models(ms: Sequence[int], ns: Sequence[int]) -> tuple[str, ...]:
    pf = [f"pf-{m}-{n}" for m in ms for n in ns if n > 1]
    vit = sorted({m * n for m in ms for n in ns})            # ViT-L, L = m * n (and n = 1)
    return tuple(pf) + tuple(f"vit-{L}" for L in vit)


_QUICK = dict(dataset="digits", size="tiny", model_overrides={"patch_size": 4}, seeds=(0, 1, 2),
              batch_size=32, lr=3e-3, device="cpu", threads=1)
_FULL = dict(dataset="cifar10", size="small", model_overrides={}, seeds=(0, 1, 2),
             batch_size=128, lr=1e-3, label_smoothing=0.1, device="auto", threads=None)
FRACTIONS = (0.1, 0.25, 0.5, 1.0)
SCALE_WIDTHS = (1, 4, 12)   # data scale and diversity: Para-Former-1-n and its serial twin ViT-n
CLASS_COUNTS = (2, 5, 10)

SWEEPS: dict[str, Sweep] = {e.name: e for e in [
    Sweep(
        "accuracy-vs-width",
        "Accuracy against n: Para-Former-1-n next to ViT-n (same parameter count)",
        "docs/method.md 5.1: more parallel layers generally improve accuracy (Para-Former-1-n)",
        "width",
        quick=Plan(models=_width_models(WIDTHS), epochs=8, **_QUICK),
        full=Plan(models=_width_models(WIDTHS), epochs=100, **_FULL)),
    Sweep(
        "accuracy-vs-depth",
        "Accuracy of Para-Former-m-n against m and n, next to ViT-(m*n)",
        "docs/method.md 5.1: more parallel layers generally improve accuracy (Para-Former-m-n)",
        "layers",
        quick=Plan(models=_grid_models(GRID_M, GRID_N), epochs=8, seeds=(0, 1), **{
            k: v for k, v in _QUICK.items() if k != "seeds"}),
        full=Plan(models=_grid_models((1, 2, 3, 4), (1, 2, 4)), epochs=100, **_FULL)),
    Sweep(
        "data-scale",
        "Accuracy against the share of the training set (10 % to 100 %): Para-Former-1-n next to "
        "ViT-n (same parameters and FLOPs), n = 1, 4 and 12",
        "docs/method.md 5.3: data scale strongly influences the results",
        "fraction",
        quick=Plan(models=_width_models(SCALE_WIDTHS),
                   variants=tuple({"fraction": f} for f in FRACTIONS), steps=300, **_QUICK),
        full=Plan(models=_width_models(SCALE_WIDTHS),
                  variants=tuple({"fraction": f} for f in FRACTIONS), steps=40000, **_FULL)),
    Sweep(
        "data-diversity",
        "Accuracy against the number of classes (2, 5, 10) at the same number of training images: "
        "Para-Former-1-n next to ViT-n (same parameters and FLOPs), n = 1, 4 and 12",
        "docs/method.md 5.3: data diversity strongly influences the results",
        "num_classes",
        quick=Plan(models=_width_models(SCALE_WIDTHS),
                   variants=tuple({"num_classes": k, "per_class": 250 // k} for k in CLASS_COUNTS),
                   steps=250, **_QUICK),
        full=Plan(models=_width_models(SCALE_WIDTHS),
                  variants=tuple({"num_classes": k, "per_class": 5000 // k} for k in CLASS_COUNTS),
                  steps=20000, **_FULL)),
]}


def get_sweep(name: str) -> Sweep:
    if not isinstance(name, str) or name not in SWEEPS:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(SWEEPS)}")
    return SWEEPS[name]


@dataclass(frozen=True)
class SweepSpec:
    """One run of a sweep: which, in which profile, what it trains (the profile's plan with
    any overrides) and where its data comes from."""

    name: str
    profile: str
    plan: Plan
    data_root: str | None = None
    download: bool = True


def sweep_spec(name: str, profile: str = "quick", *, seeds: Sequence[int] | None = None,
               device: str | None = None, threads: int | None = None, data_root: str | None = None,
               download: bool | None = None) -> SweepSpec:
    """The spec of sweep `name` in `profile`; seeds / device / threads override the plan's
    (each checked), None keeps it."""
    plan = get_sweep(name).plan(profile)
    if seeds is not None:
        plan = replace(plan, seeds=wholes("seeds", seeds, minimum=0))
    if device is not None:
        plan = replace(plan, device=device)
    if threads is not None:
        plan = replace(plan, threads=whole("threads", threads))
    return SweepSpec(name, check_profile(profile), plan, data_root, True if download is None else download)


# ----------------------------------------------------------------------------- running

GROUP_KEYS = ("model", "depth", "width", "layers", "params", "fraction", "per_class", "num_classes")
METRICS = ("test_acc", "test_acc_above_chance")


def run_sweep(name: str, profile: str = "quick", *, out: str | Path | None = None,
              overwrite: bool = False, resume: bool = False, write: bool = True,
              progress: bool = True, log: Callable[[str], None] | None = print,
              limit: Callable[[dict], bool] | None = None, distributed: Context | None = None,
              **overrides) -> dict:
    """Train every run of sweep `name` and return (and by default write) its results.

    `overrides` (seeds, device, threads, data_root, download) go to sweep_spec. `limit(run)`
    may select a slice of the runs (a dict with model, variant, seed), e.g. for a notebook's
    live re-run. With write=False nothing is written (out and overwrite are ignored).

    While it runs, the records so far are kept in `<out>/partial.json` after every run, so
    an interrupted sweep (Ctrl-C, a crash, a closed laptop) loses at most the run in
    progress; `resume=True` (CLI: --resume) continues it, skipping the runs already done.

    distributed (under torchrun, a duat.distributed.Context): every run trains data parallel
    over the processes (fit's DDP), one run after another; rank 0 alone writes and reports,
    and every rank returns the same results.
    """
    ctx = distributed if distributed is not None and distributed.world > 1 else None
    if ctx is not None:
        overrides["device"] = str(ctx.device)
    spec = sweep_spec(name, profile, **overrides)
    sweep, plan = get_sweep(name), spec.plan
    torch_device = select_device(plan.device)
    identity = {"experiment": name, "profile": spec.profile, "plan": _plan_record(plan)}
    folder = Path(out) if out is not None else default_output_dir(name, spec.profile)
    if resume and limit is not None:
        raise ValueError("resume continues a whole sweep; it cannot be combined with limit")
    out_dir, done = None, {}                            # done: run key -> record
    if write and ctx is None:
        out_dir, done = _open_folder(folder, identity, overwrite, resume)
    elif write:  # rank 0 opens (or refuses) the folder; the others read what it holds
        opened = ctx.agree(lambda: _open_folder(folder, identity, overwrite, resume))
        out_dir, done = opened if ctx.main else _read_folder(folder, resume)
    if ctx is not None and not ctx.main:
        progress, log = False, None
    runs = _select_runs(plan, limit)
    kept = lambda: f"{len(done)} of {len(runs)}" if done else None  # noqa: E731

    t_start = time.perf_counter()
    with using_threads(plan.threads):
        env = environment_info()  # after the thread count is set: it records the threads used
        versions = {k: env[k] for k in ("duat", "python", "torch", "torchvision", "numpy", "platform")}
        with Progress(len(runs), name, progress, log) as report, \
                kept_on_stop(name, out_dir, kept, log):
            if done:
                report.say(f"resuming: {len(done)} of {len(runs)} runs already done")
                report.advance(len(done))
            cache: dict = {}
            for i, run in enumerate(runs, 1):
                if _run_key(run) in done:
                    continue
                record = _train_one(spec, run, _splits(cache, spec, run), torch_device, versions, ctx)
                done[_run_key(run)] = record
                if write and (ctx is None or ctx.main):
                    save_partial(out_dir, identity, done=done)   # the sweep so far, safe on disk
                report.say(f"[{i}/{len(runs)}] {run['model']:8s} seed {run['seed']} "
                           f"{_variant_label(run['variant']):22s} "
                           f"test acc {record['test_acc']:.4f}  ({record['wall_time_s']:.1f} s)")
                report.advance()
    records = list(done.values())
    results = {
        "experiment": name, "title": sweep.title, "question": sweep.question,
        "x": sweep.x, "profile": spec.profile, "plan": _plan_record(plan),
        "environment": env, "device": str(torch_device),
        "wall_time_s": time.perf_counter() - t_start,
        "summary": sweep_summary(records), "records": records,
    }
    if write:
        if ctx is None or ctx.main:
            _experiment(sweep).write(results, out_dir)
            finish_partial(out_dir)  # complete: results.json holds it all
        results["out"] = str(out_dir)
    if ctx is not None:
        results["processes"] = ctx.world
    return results


def _plan_record(plan: Plan) -> dict:
    return {**asdict(plan), "variants": list(plan.variants)}


def _open_folder(folder: Path, identity: dict, overwrite: bool, resume: bool) -> tuple[Path, dict]:
    """The run folder (refusals before any training) and the records of the runs done."""
    out_dir, saved = open_run_dir(folder, identity, overwrite=overwrite, resume=resume)
    return out_dir, (saved["done"] if saved else {})


def _read_folder(folder: Path, resume: bool) -> tuple[Path, dict]:
    """What rank 0's _open_folder found, read back by another rank (nothing is written)."""
    if not resume:
        return folder, {}
    return folder, json.loads((folder / PARTIAL).read_text())["done"]


def _select_runs(plan: Plan, limit) -> list[dict]:
    runs = [{"variant": v, "seed": s, "model": m}
            for v in plan.variants for s in plan.seeds for m in plan.models]
    if limit is not None:
        runs = [r for r in runs if limit(r)]
    if not runs:
        raise ValueError("the selection holds no runs")
    return runs


def _splits(cache: dict, spec: SweepSpec, run: dict):
    """The run's data: one load per (variant, seed), the last one kept."""
    key = json.dumps([run["variant"], run["seed"]])
    if key not in cache:
        cache.clear()
        cache[key] = data.load_data(spec.plan.dataset, root=spec.data_root, download=spec.download,
                                    seed=run["seed"], **run["variant"])
    return cache[key]


def _train_one(spec: SweepSpec, run: dict, splits, device, versions: dict,
               distributed: Context | None = None) -> dict:
    """Train one model from scratch and score it: its record (what was trained, on what,
    how it scored, and where)."""
    plan, seed = spec.plan, run["seed"]
    train_loader, val_loader, test_loader = splits.loaders(plan.batch_size, seed=seed)
    epochs = plan.epochs or math.ceil(plan.steps / len(train_loader))
    config = TrainConfig(epochs=epochs, lr=plan.lr, warmup_epochs=plan.warmup * epochs,
                         weight_decay=plan.weight_decay, label_smoothing=plan.label_smoothing,
                         seed=seed, device=str(device))
    t0 = time.perf_counter()
    seed_everything(seed)
    model = create_model(run["model"], plan.size, **splits.model_kwargs(), **plan.model_overrides)
    result = engine.fit(model, train_loader, None, config, progress=False, distributed=distributed)
    if result.status != "completed":
        raise KeyboardInterrupt  # a stop inside a sweep ends the sweep
    test = engine.evaluate(model, test_loader)
    val = engine.evaluate(model, val_loader)
    wall = time.perf_counter() - t0
    depth, width = parse_name(run["model"])
    variant, k = run["variant"], splits.info.num_classes
    return {
        "experiment": spec.name, "profile": spec.profile, "model": run["model"],
        "depth": depth, "width": width, "layers": depth * width,
        "family": "vit" if width == 1 else "paraformer",
        "params": sum(p.numel() for p in model.parameters()),
        "dataset": plan.dataset, "fraction": variant.get("fraction", 1.0),
        "per_class": variant.get("per_class"), "num_classes": k,
        "classes": splits.classes, "train_samples": len(splits.train), "seed": seed,
        "epochs": config.epochs, "steps": result.step, "batch_size": plan.batch_size,
        "lr": plan.lr,
        "test_acc": test["accuracy"], "test_loss": test["loss"],
        "test_samples": test["samples"],
        "test_acc_above_chance": (test["accuracy"] - 1 / k) / (1 - 1 / k),
        "val_acc": val["accuracy"],
        "train_acc": result.history[-1]["train_acc"],
        "train_loss": result.history[-1]["train_loss"],
        "wall_time_s": wall,
        "device": str(device), "threads": torch.get_num_threads(),
        "versions": versions,
        "config": {"model": model.config.to_dict(), "train": asdict(config),
                   "data": splits.config},
    }


def _run_key(r: dict) -> str:
    return json.dumps([r["model"], r["seed"], r["variant"]], sort_keys=True)


def _variant_label(variant: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items()) or "full training set"


# ----------------------------------------------------------------------------- summaries

def sweep_summary(records: Sequence[dict]) -> list[dict]:
    """One row per configuration (GROUP_KEYS): mean, sample std (over seeds), min, max of
    each of METRICS (runs.seed_summary), and the configuration's test_samples."""
    return seed_summary(records, GROUP_KEYS, METRICS, first=("test_samples",))


def compare_sweep(new: dict, reference: dict, metric: str = "test_acc") -> list[dict]:
    """Per configuration: is the new mean within the seed spread of the reference?

    Tolerance: two standard deviations over seeds (the larger of the two runs'), and at
    least one test image's worth of accuracy.
    """
    ref = {tuple(r[k] for k in GROUP_KEYS): r for r in reference["summary"]}
    rows = []
    for r in new["summary"]:
        key = tuple(r[k] for k in GROUP_KEYS)
        if key not in ref:
            continue
        old = ref[key]
        tol = max(2 * max(old[f"{metric}_std"], r[f"{metric}_std"]), 1.0 / r["test_samples"])
        diff = r[f"{metric}_mean"] - old[f"{metric}_mean"]
        rows.append({**{k: r[k] for k in GROUP_KEYS}, "reference": old[f"{metric}_mean"],
                     "new": r[f"{metric}_mean"], "difference": diff, "tolerance": tol,
                     "within": abs(diff) <= tol})
    if not rows:
        raise ValueError("the two result sets share no configuration")
    return rows


def missing_configurations(new: dict, reference: dict) -> list[dict]:
    """The reference's summary rows that `new` did not run."""
    keys = {tuple(r[k] for k in GROUP_KEYS) for r in new["summary"]}
    return [r for r in reference["summary"] if tuple(r[k] for k in GROUP_KEYS) not in keys]


# ----------------------------------------------------------------------------- as experiments

def plot_sweep_results(results: dict):
    """The sweep's figure: seaborn lines, mean over seeds with +-1 sd bars, seeds as dots.
    Titled with the sweep's title in SWEEPS (a results file keeps the title it was written with)."""
    known = results.get("experiment") in SWEEPS
    return plot_sweep(results, SWEEPS[results["experiment"]].title if known else None)


def _tables(results: dict) -> dict:
    return {"results.csv": results["records"], "summary.csv": results["summary"]}


def _experiment(sweep: Sweep) -> Experiment:
    """A sweep as one of `duat reproduce`'s experiments: results.csv (every record),
    summary.csv, <name>.png, then results.json."""
    return Experiment(sweep.name, sweep.title, partial(run_sweep, sweep.name), _tables,
                      {f"{sweep.name}.png": plot_sweep_results},
                      ("experiment", "x", "profile", "records", "summary"), format_sweep,
                      compare=compare_sweep, savefig={"bbox_inches": "tight"}, one_process=False)


SWEEP_EXPERIMENTS = tuple(_experiment(s) for s in SWEEPS.values())
