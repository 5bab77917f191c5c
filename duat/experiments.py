"""The paper's accuracy experiments as data, and `duat reproduce` to run them.

PAPER.md section 5 reports that (1) more parallel layers generally improve accuracy, for
Para-Former-1-n and Para-Former-m-n, and (3) data scale and diversity strongly influence
the results. Each experiment below is a registry entry, not notebook code: a list of
models, a list of data variants (subsets), seeds and a training budget, for two profiles.

    accuracy-vs-width   Para-Former-1-n, n = 1, 2, 4, 8, 12, next to ViT-n. Para-Former-1-n
                        has n encoder layers side by side, ViT-n the same n layers in
                        series: exactly the same parameter count (ViT-1 = Para-Former-1-1).
    accuracy-vs-depth   the m x n grid Para-Former-m-n, next to ViT-L with L = m * n layers
                        (again the same parameter count).
    data-scale          the width sweep trained on 10 %, 25 %, 50 %, 100 % of the training
                        set (stratified), every run with about the same number of optimisation
                        steps (the plan's `steps`, rounded up to whole epochs).
    data-diversity      the width sweep on 2, 5, 10 classes with the same number of training
                        images; accuracy is also reported above chance, (acc - 1/k) / (1 - 1/k).

Profiles: `quick` (bundled digits, tiny models with 4x4 patches, one CPU thread, a few
seeds; each experiment fits in minutes on a 2-core CPU) and `full` (CIFAR-10, the 'small'
models, meant for a GPU). Every run trains from scratch with its own seed (model init,
data order and subset), and is scored on the fixed test split after its last epoch (no
early stopping, no selection on the test set). A run writes results.json (every run's
record: config, seed, device, versions, wall time; and the per-configuration summary),
results.csv, summary.csv and a plot into <name>/ (quick) or <name>-full/ of
duat.locations.output_dir(): in a source checkout duat/results/, where the committed quick
results live (so regenerating them needs --overwrite), for an installed kit ./results/.
`load_results(name)` reads the committed quick results (duat.locations.committed), which
ship with the package.

    duat reproduce --list
    duat reproduce accuracy-vs-width --quick
    duat reproduce data-scale --quick --out /tmp/rerun --compare data-scale
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from duat.locations import committed, output_dir
from duat.storage import PARTIAL  # an unfinished sweep's records (see --resume)


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
class Experiment:
    name: str
    title: str
    question: str        # the paper's claim it tests (PAPER.md section 5)
    x: str               # what the plot sweeps: 'width', 'layers', 'fraction', 'num_classes'
    quick: Plan
    full: Plan

    def plan(self, profile: str) -> Plan:
        from duat.runtime import profile as check_profile

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
CLASS_COUNTS = (2, 5, 10)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment(
        "accuracy-vs-width",
        "Accuracy against n: Para-Former-1-n next to ViT-n (same parameter count)",
        "PAPER.md 5.1: more parallel layers generally improve accuracy (Para-Former-1-n)",
        "width",
        quick=Plan(models=_width_models(WIDTHS), epochs=8, **_QUICK),
        full=Plan(models=_width_models(WIDTHS), epochs=100, **_FULL)),
    Experiment(
        "accuracy-vs-depth",
        "Accuracy of Para-Former-m-n against m and n, next to ViT-(m*n)",
        "PAPER.md 5.1: more parallel layers generally improve accuracy (Para-Former-m-n)",
        "layers",
        quick=Plan(models=_grid_models(GRID_M, GRID_N), epochs=8, seeds=(0, 1), **{
            k: v for k, v in _QUICK.items() if k != "seeds"}),
        full=Plan(models=_grid_models((1, 2, 3, 4), (1, 2, 4)), epochs=100, **_FULL)),
    Experiment(
        "data-scale",
        "Accuracy against the share of the training set (10 % to 100 %), for n = 1, 4 and 12",
        "PAPER.md 5.3: data scale strongly influences the results",
        "fraction",
        quick=Plan(models=("pf-1-1", "pf-1-4", "pf-1-12"),
                   variants=tuple({"fraction": f} for f in FRACTIONS), steps=300, **_QUICK),
        full=Plan(models=_width_models((1, 4, 12)),
                  variants=tuple({"fraction": f} for f in FRACTIONS), steps=40000, **_FULL)),
    Experiment(
        "data-diversity",
        "Accuracy against the number of classes (2, 5, 10) at the same number of training images",
        "PAPER.md 5.3: data diversity strongly influences the results",
        "num_classes",
        quick=Plan(models=("pf-1-1", "pf-1-4", "pf-1-12"),
                   variants=tuple({"num_classes": k, "per_class": 250 // k} for k in CLASS_COUNTS),
                   steps=250, **_QUICK),
        full=Plan(models=_width_models((1, 4, 12)),
                  variants=tuple({"num_classes": k, "per_class": 5000 // k} for k in CLASS_COUNTS),
                  steps=20000, **_FULL)),
]}


def list_experiments() -> list[str]:
    return list(EXPERIMENTS)


def get_experiment(name: str) -> Experiment:
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def results_folder(name: str, profile: str) -> str:
    """The folder name of an experiment's results: NAME (quick) or NAME-PROFILE."""
    return name if profile == "quick" else f"{name}-{profile}"


def default_output_dir(name: str, profile: str) -> Path:
    """Where a new run of `name` in `profile` is written unless --out says otherwise
    (duat.locations.output_dir: duat/results/ in a checkout, ./results/ when installed,
    $DUAT_RESULTS if set). To read the committed results, use load_results(name)."""
    return output_dir(results_folder(name, profile))


# ----------------------------------------------------------------------------- running

GROUP_KEYS = ("model", "depth", "width", "layers", "params", "fraction", "per_class", "num_classes")


def run_experiment(name: str, profile: str = "quick", *, out: str | Path | None = None,
                   overwrite: bool = False, seeds: Sequence[int] | None = None,
                   device: str | None = None, threads: int | None = None,
                   data_root: str | None = None, download: bool = True,
                   progress: bool = True, write: bool = True,
                   log: Callable[[str], None] | None = print,
                   limit: Callable[[dict], bool] | None = None, resume: bool = False) -> dict:
    """Train every run of an experiment and return (and by default write) its results.

    seeds / device / threads override the profile's. `limit(run)` may select a slice of
    the runs (a dict with model, variant, seed), e.g. for a notebook's live re-run.
    With write=False nothing is written (out and overwrite are ignored).

    While it runs, the records so far are kept in `<out>/partial.json` after every run, so
    an interrupted sweep (Ctrl-C, a crash, a closed laptop) loses at most the run in
    progress; `resume=True` (CLI: --resume) continues it, skipping the runs already done.
    """
    import torch

    from duat.data import load_data
    from duat.registry import create_model, parse_name
    from duat.runtime import environment_info, profile as check_profile, seed_everything, select_device
    from duat.storage import finish_partial, open_run_dir, save_partial
    from duat.training.engine import TrainConfig, evaluate, fit

    experiment = get_experiment(name)
    profile = check_profile(profile)
    plan = experiment.plan(profile)
    if seeds is not None:
        seeds = tuple(int(s) for s in seeds)
        if not seeds or any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be non-negative ints, got {seeds}")
        plan = replace(plan, seeds=seeds)
    if device is not None:
        plan = replace(plan, device=device)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        plan = replace(plan, threads=threads)
    torch_device = select_device(plan.device)
    out_dir, done = None, {}
    identity = {"experiment": name, "profile": profile, "plan": {**asdict(plan), "variants": list(plan.variants)}}
    if write:
        if resume and limit is not None:
            raise ValueError("resume continues a whole sweep; it cannot be combined with limit")
        out_dir, saved = open_run_dir(Path(out) if out is not None else default_output_dir(name, profile),
                                      identity, overwrite=overwrite, resume=resume)
        done = saved["done"] if saved else {}          # run key -> record

    runs = [{"variant": v, "seed": s, "model": m}
            for v in plan.variants for s in plan.seeds for m in plan.models]
    if limit is not None:
        runs = [r for r in runs if limit(r)]
    if not runs:
        raise ValueError("the selection holds no runs")

    old_threads = torch.get_num_threads()
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    env = environment_info()  # after the thread count is set: it records the threads used
    versions = {k: env[k] for k in ("duat", "python", "torch", "torchvision", "numpy", "platform")}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), unit="run", desc=name, dynamic_ncols=True)
    say = (bar.write if bar is not None else log) if log is not None else (lambda s: None)
    records: list[dict] = list(done.values())
    if records:
        say(f"resuming: {len(records)} of {len(runs)} runs already done")
        if bar is not None:
            bar.update(len(records))
    cache: dict[str, Any] = {}
    t_start = time.perf_counter()
    try:
        for i, r in enumerate(runs, 1):
            variant, seed, model_name = r["variant"], r["seed"], r["model"]
            if _run_key(r) in done:
                continue
            key = json.dumps([variant, seed])
            if key not in cache:  # one data load per (variant, seed)
                cache.clear()
                cache[key] = load_data(plan.dataset, root=data_root, download=download,
                                       seed=seed, **variant)
            splits = cache[key]
            train_loader, val_loader, test_loader = splits.loaders(plan.batch_size, seed=seed)
            epochs = plan.epochs or math.ceil(plan.steps / len(train_loader))
            config = TrainConfig(epochs=epochs, lr=plan.lr, warmup_epochs=plan.warmup * epochs,
                                 weight_decay=plan.weight_decay,
                                 label_smoothing=plan.label_smoothing, seed=seed,
                                 device=str(torch_device))
            t0 = time.perf_counter()
            seed_everything(seed)
            model = create_model(model_name, plan.size, **splits.model_kwargs(), **plan.model_overrides)
            result = fit(model, train_loader, None, config, progress=False)
            if result.status != "completed":
                raise KeyboardInterrupt  # a stop inside a sweep ends the sweep
            test = evaluate(model, test_loader)
            val = evaluate(model, val_loader)
            depth, width = parse_name(model_name)
            k = splits.info.num_classes
            record = {
                "experiment": name, "profile": profile, "model": model_name,
                "depth": depth, "width": width, "layers": depth * width,
                "family": "vit" if width == 1 else "paraformer",
                "params": sum(p.numel() for p in model.parameters()),
                "dataset": plan.dataset, "fraction": variant.get("fraction", 1.0),
                "per_class": variant.get("per_class"), "num_classes": k,
                "classes": splits.classes, "train_samples": len(splits.train), "seed": seed,
                "epochs": epochs, "steps": result.step, "batch_size": plan.batch_size,
                "lr": plan.lr,
                "test_acc": test["accuracy"], "test_loss": test["loss"],
                "test_samples": test["samples"],
                "test_acc_above_chance": (test["accuracy"] - 1 / k) / (1 - 1 / k),
                "val_acc": val["accuracy"],
                "train_acc": result.history[-1]["train_acc"],
                "train_loss": result.history[-1]["train_loss"],
                "wall_time_s": time.perf_counter() - t0,
                "device": str(torch_device), "threads": torch.get_num_threads(),
                "versions": versions,
                "config": {"model": model.config.to_dict(), "train": asdict(config),
                           "data": splits.config},
            }
            records.append(record)
            if write:  # the sweep so far, safe on disk after every run
                done[_run_key(r)] = record
                save_partial(out_dir, identity, done=done)
            say(f"[{i}/{len(runs)}] {model_name:8s} seed {seed} {_variant_label(variant):22s} "
                f"test acc {record['test_acc']:.4f}  ({record['wall_time_s']:.1f} s)")
            if bar is not None:
                bar.update(1)
    except BaseException as err:
        if write:
            if records and log is not None:
                why = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped by an error"
                log(f"{name}: {why}; {len(records)} of {len(runs)} runs are kept in "
                    f"{out_dir / PARTIAL}; continue with --resume (resume=True)")
        raise
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(old_threads)

    results = {
        "experiment": name, "title": experiment.title, "question": experiment.question,
        "x": experiment.x, "profile": profile,
        "plan": {**asdict(plan), "variants": list(plan.variants)},
        "environment": env, "device": str(torch_device),
        "wall_time_s": time.perf_counter() - t_start,
        "summary": summarize(records), "records": records,
    }
    if write:
        write_results(results, out_dir)
        finish_partial(out_dir)  # complete: results.json holds it all
        results["out"] = str(out_dir)
    return results


def _run_key(r: dict) -> str:
    return json.dumps([r["model"], r["seed"], r["variant"]], sort_keys=True)


def _variant_label(variant: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in variant.items()) or "full training set"


# ----------------------------------------------------------------------------- summaries

def summarize(records: Sequence[dict], metrics: Sequence[str] = ("test_acc", "test_acc_above_chance")) -> list[dict]:
    """One row per configuration: mean, sample std (over seeds), min, max of each metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in GROUP_KEYS), []).append(r)
    rows = []
    for key, rs in groups.items():
        row = dict(zip(GROUP_KEYS, key))
        row["seeds"] = len(rs)
        for m in metrics:
            values = [r[m] for r in rs]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_min": min(values), f"{m}_max": max(values)})
        row["test_samples"] = rs[0]["test_samples"]
        rows.append(row)
    return rows


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


def compare_results(new: dict, reference: dict, metric: str = "test_acc") -> list[dict]:
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


def _missing_configurations(new: dict, reference: dict) -> list[dict]:
    keys = {tuple(r[k] for k in GROUP_KEYS) for r in new["summary"]}
    return [r for r in reference["summary"] if tuple(r[k] for k in GROUP_KEYS) not in keys]


def load_results(name_or_path: str | Path) -> dict:
    """results.json of an experiment: by name, the committed quick results that ship with
    the kit (or $DUAT_RESULTS/<name>, see duat.locations.committed); else a results.json or
    the folder of one."""
    path = Path(name_or_path)
    if str(name_or_path) in EXPERIMENTS:
        path = committed(results_folder(str(name_or_path), "quick")) / "results.json"
    elif path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        hint = (f"run `duat reproduce {name_or_path} --quick` first" if str(name_or_path) in EXPERIMENTS
                else f"give a results.json, its folder, or an experiment's name ({', '.join(EXPERIMENTS)})")
        raise FileNotFoundError(f"no results at {path}: {hint}")
    return json.loads(path.read_text())


def results_frame(results: dict):
    """The records as a pandas DataFrame (for seaborn), with readable labels."""
    import pandas as pd

    df = pd.DataFrame([{k: v for k, v in r.items() if k not in ("config", "versions", "classes")}
                       for r in results["records"]])
    df["label"] = [_label(m) for m in df["model"]]
    df["family_label"] = df["family"].map({"vit": "ViT-L (serial)", "paraformer": "Para-Former (parallel)"})
    return df


def _label(model: str) -> str:
    from duat.registry import parse_name

    m, n = parse_name(model)
    return f"ViT-{m}" if n == 1 else f"Para-Former-{m}-{n}"


# ----------------------------------------------------------------------------- writing

def write_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """Rows of scalars as CSV (atomically); lists become 'a;b;c', nested dicts are skipped."""
    from duat.storage import atomic_write_text

    columns: list[str] = []
    for row in rows:
        columns += [k for k, v in row.items() if k not in columns and not isinstance(v, dict)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (";".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                         for k, v in row.items() if k in columns})
    return atomic_write_text(path, buffer.getvalue())


def write_results(results: dict, out_dir: str | Path) -> None:
    from duat.storage import atomic_savefig, atomic_write_json

    out_dir = Path(out_dir)
    write_csv(out_dir / "results.csv", results["records"])
    write_csv(out_dir / "summary.csv", results["summary"])
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # files, not windows
    import matplotlib.pyplot as plt

    fig = plot_results(results)
    atomic_savefig(fig, out_dir / f"{results['experiment']}.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_json(out_dir / "results.json", results)  # last: its presence marks a whole run


# ----------------------------------------------------------------------------- plots

def plot_results(results: dict):
    """The experiment's figure: seaborn lines, mean over seeds with +-1 sd bars, seeds as dots."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = results_frame(results)
    x = results["x"]
    sd = ("sd", 1)
    where = f"{results['environment'].get('device_name', '')}, {results['profile']} profile, " \
            f"{len(set(df['seed']))} seeds"
    if x == "width":
        pf = df[df["depth"] == 1].assign(n=lambda d: d["width"], kind="Para-Former-1-n (n parallel)")
        vit = df[df["width"] == 1].assign(n=lambda d: d["depth"], kind="ViT-n (n in series)")
        data = pd.concat([pf, vit], ignore_index=True)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        sns.lineplot(data=data, x="n", y="test_acc", hue="kind", style="kind", markers=True,
                     dashes=False, errorbar=sd, err_style="bars", ax=ax)
        sns.stripplot(data=data, x="n", y="test_acc", hue="kind", native_scale=True, dodge=False,
                      alpha=0.35, size=3, legend=False, ax=ax)
        ax.set(xscale="log", xlabel="n (encoder layers; same parameter count for both)",
               ylabel="test accuracy")
        ax.set_xticks(sorted(data["n"].unique()), labels=[str(v) for v in sorted(data["n"].unique())])
    elif x == "layers":
        fig, (ax_h, ax) = plt.subplots(1, 2, figsize=(11, 4.2))
        grid = df.groupby(["depth", "width"])["test_acc"].mean().unstack("width")
        grid = grid.loc[sorted(df.loc[df["width"] > 1, "depth"].unique())]  # the m x n grid only
        sns.heatmap(grid, annot=True, fmt=".3f", cmap="viridis", ax=ax_h,
                    cbar_kws={"label": "mean test accuracy"})
        ax_h.set(xlabel="n (parallel layers per stage)", ylabel="m (stages in series)",
                 title="Para-Former-m-n (n = 1: ViT-m)")
        data = df.assign(series=[f"n = {w}" + (" (ViT-L)" if w == 1 else "") for w in df["width"]])
        sns.lineplot(data=data, x="layers", y="test_acc", hue="series", style="series", markers=True,
                     dashes=False, errorbar=sd, err_style="bars", ax=ax)
        ax.set(xscale="log", xlabel="L = m * n encoder layers (parameter count grows with L)",
               ylabel="test accuracy", title="against the number of layers")
        ticks = sorted(df["layers"].unique())
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    elif x == "fraction":
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        sns.lineplot(data=df, x="fraction", y="test_acc", hue="label", style="label", markers=True,
                     dashes=False, errorbar=sd, err_style="bars", ax=ax)
        ticks = sorted(df["fraction"].unique())
        ax.set(xscale="log", xlabel="share of the training set (same number of steps)",
               ylabel="test accuracy")
        ax.set_xticks(ticks, labels=[f"{t:.0%}" for t in ticks])
    elif x == "num_classes":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for a, y, label in ((ax, "test_acc", "test accuracy"),
                            (ax2, "test_acc_above_chance", "accuracy above chance, (acc - 1/k)/(1 - 1/k)")):
            sns.lineplot(data=df, x="num_classes", y=y, hue="label", style="label", markers=True,
                         dashes=False, errorbar=sd, err_style="bars", ax=a)
            a.set(xlabel="k classes (same number of training images)", ylabel=label)
            a.set_xticks(sorted(df["num_classes"].unique()))
    else:  # pragma: no cover - registry entries use the four above
        raise ValueError(f"no plot for x={x!r}")
    # the registry's title (a results file keeps the title it was written with)
    title = EXPERIMENTS[results["experiment"]].title if results.get("experiment") in EXPERIMENTS \
        else results["title"]
    fig.suptitle(f"{title}\n({where}; bars: mean +- 1 sd)", fontsize=10)
    for a in fig.axes:
        if a.get_ylabel() and "accuracy" in a.get_ylabel():
            a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def format_summary(results: dict, metric: str = "test_acc") -> str:
    """A plain-text table: one line per configuration, mean +- sd over seeds."""
    lines = []
    for r in results["summary"]:
        variant = []
        if r["fraction"] != 1.0:
            variant.append(f"fraction {r['fraction']:g}")
        if r["per_class"] is not None:
            variant.append(f"{r['num_classes']} classes x {r['per_class']}")
        extra = ""
        if metric == "test_acc" and results["x"] == "num_classes":
            extra = (f"   above chance {r['test_acc_above_chance_mean']:.4f} "
                     f"+- {r['test_acc_above_chance_std']:.4f}")
        lines.append(f"{_label(r['model']):18s} {', '.join(variant) or 'all data':26s} "
                     f"{r[f'{metric}_mean']:.4f} +- {r[f'{metric}_std']:.4f} "
                     f"(min {r[f'{metric}_min']:.4f}, max {r[f'{metric}_max']:.4f}, {r['seeds']} seeds)"
                     + extra)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}, finetune, "
                                                         "or 'all' (the first four)")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_const", const="quick", dest="profile",
                       help="the small profile: digits on a CPU, minutes (default, or $DUAT_PROFILE)")
    which.add_argument("--full", action="store_const", const="full", dest="profile",
                       help="the full profile: CIFAR-10, meant for a GPU")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <experiment>/ in duat/results/ of a source "
                             "checkout, where the committed results are; in ./results/ for an "
                             "installed kit; in $DUAT_RESULTS if set)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in its folder, skipping the runs done")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    parser.add_argument("--device", default=None, help="override the device (quick: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="override torch CPU threads (quick: 1)")
    parser.add_argument("--data-root", default=None, help="dataset cache folder")
    parser.add_argument("--no-download", action="store_true", help="never download datasets")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compare", default=None, metavar="RESULTS",
                        help="afterwards, check the new means against these results (a results.json, "
                             "its folder, or an experiment's name: its committed results); exit 1 "
                             "if any lies outside the seed spread")
    from duat.finetune import add_arguments as add_finetune_arguments   # `reproduce finetune`
    add_finetune_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`duat reproduce` (bad input raises; duat.cli reports it with status 2)."""
    from duat.runtime import profile as check_profile

    if args.list or not args.experiment:
        for e in EXPERIMENTS.values():
            print(f"{e.name:20s} {e.title}")
        print(f"{'finetune':20s} Pre-trained serial ViT into Para-Former-m-n vs scratch, "
              f"limited data (duat.finetune)")
        if not args.list:
            print("\nusage: duat reproduce EXPERIMENT [--quick | --full]", file=sys.stderr)
            return 2
        return 0
    if args.experiment == "finetune":          # its own module (not part of 'all')
        from duat import finetune

        return finetune.run(args)
    if args.experiment != "all" and args.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.experiment!r}; known experiments: "
                         f"{', '.join([*EXPERIMENTS, 'finetune'])}, or 'all' "
                         f"(see `duat reproduce --list`)")
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if len(names) > 1 and (args.out or args.compare):
        raise ValueError("--out and --compare need a single experiment, not 'all'")
    profile = check_profile(args.profile)
    reference = load_results(args.compare) if args.compare else None
    if reference is not None and args.out is None and not args.overwrite:
        default = default_output_dir(names[0], profile)
        if default.is_dir() and any(default.iterdir()):
            raise FileExistsError(f"{default} already holds results; to rerun and compare "
                                  f"with them, write the rerun elsewhere: --out DIR")
    status = 0
    for name in names:
        results = run_experiment(name, profile, out=args.out, overwrite=args.overwrite,
                                 seeds=args.seeds, device=args.device, threads=args.threads,
                                 data_root=args.data_root, download=not args.no_download,
                                 progress=not args.no_progress, resume=args.resume)
        print(f"\n{results['title']} ({profile} profile, {len(results['records'])} runs, "
              f"{results['wall_time_s']:.0f} s on {results['device']})")
        print(format_summary(results))
        print(f"results in {results['out']}/")
        if reference is not None:
            rows = compare_results(results, reference)
            bad = [r for r in rows if not r["within"]]
            missing = _missing_configurations(results, reference)
            for r in rows:
                print(f"  {_label(r['model']):18s} fraction {r['fraction']:<5g} classes {r['num_classes']:<3d} "
                      f"reference {r['reference']:.4f}  new {r['new']:.4f}  "
                      f"diff {r['difference']:+.4f}  tolerance {r['tolerance']:.4f}  "
                      f"{'ok' if r['within'] else 'OUTSIDE'}")
            print(f"{len(rows) - len(bad)}/{len(rows)} configurations within the seed spread")
            if missing:
                print(f"{len(missing)} configuration(s) of the reference not rerun: "
                      + "; ".join(_label(m["model"]) for m in missing))
            status = 1 if bad else status
    return status
