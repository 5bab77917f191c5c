"""`duat reproduce progressive`: the follow-up paper's three claims at the kit's size
(docs/method.md section 7: progressive approximation, compression, expansion).

For every seed, four units of work, each kept in partial.json when done (--resume):

    joint, progressive, branchwise
        Para-Former-1-n trained with each schedule (duat.training.schedules) for the same
        number of epochs; every epoch records the validation loss and accuracy of every
        prefix model y_k, and the end the test accuracy of every y_k. Question: does each
        branch reduce what the earlier ones leave?
        The joint unit then compresses its model: the branches scored three ways on the
        validation split (duat.inside.score_branches: leave-one-out loss, |f_i|, training
        order), the best k kept for k = 1..n, each scored on the test split as it is and,
        for the leave-one-out choice, after a brief fine-tuning. The latency of each width k
        is measured once (batch 1, median and quartiles of `timing_calls` calls).
    expansion
        Task A (classes 0-4) learnt by Para-Former-1-a; then task B (classes 5-9) learnt
        two ways: (1) expansion: e new branches and the head's B rows trained, everything
        of task A frozen exactly; (2) plain fine-tuning of the whole model. Scored per task
        (the task's own five logits: task-incremental), A with the prefix y_a and with the
        whole expanded model. Forgetting = accuracy on A before B minus after.

Profiles: quick (digits, CPU, 1 thread, a few minutes) and full (CIFAR-10, meant for a GPU).
Writes results.json, schedules.csv, compression.csv, expansion.csv, summary.csv and
prefix_curves.png, compression.png, forgetting.png under progressive/ (quick) or
progressive-full/ of duat.locations.output_dir().
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from duat import data
from duat.bench.timing import latency_stats, time_calls
from duat.surgery import expand, keep_branches, old_task_rows
from duat.checks import whole, wholes
from duat.counting import count_parameters
from duat.experiments.plots import (forgetting_rows, plot_compression, plot_forgetting,
                                   plot_prefix_curves)
from duat.experiments.runs import (Experiment, Progress, default_output_dir, kept_on_stop, spec_for,
                                   stats)
from duat.registry import create_model
from duat.runtime import environment_info, seed_everything, select_device
from duat.runtime import threads as using_threads
from duat.storage import finish_partial, open_run_dir, save_partial
from duat.inside import SCORES, best_branches, compress, score_branches
from duat.training.engine import TrainConfig, evaluate, fit
from duat.training.schedules import SCHEDULES

EXPERIMENT = "progressive"
COMPRESSED = ("joint", "progressive")  # the schedules whose models are compressed
RESULT_KEYS = ("profile", "spec", "schedules", "compression", "latency", "expansion", "summary")


@dataclass
class ProgressiveSpec:
    profile: str = "quick"
    dataset: str = "digits"
    size: str = "tiny"                        # registry size preset
    patch_size: int | None = 4                # None: the registry's default for the image size
    width: int = 6                            # n: branches of the Para-Former-1-n trained
    seeds: tuple = (0, 1, 2)
    epochs: int = 8                           # every schedule (branchwise: epochs / n per branch)
    batch_size: int = 32
    lr: float = 3e-3
    warmup: float = 0.05                      # share of the run (of each phase) warming up
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    finetune_epochs: int = 1                  # brief fine-tuning of each compressed model
    timing_calls: int = 50                    # latency: forward passes timed per width k
    task_a: tuple = (0, 1, 2, 3, 4)           # expansion: the first task's classes ...
    task_b: tuple = (5, 6, 7, 8, 9)           # ... and the second's
    width_a: int = 4                          # branches learnt on task A
    extra: int = 4                            # branches added for task B
    epochs_a: int = 8
    epochs_b: int = 8
    device: str = "cpu"
    threads: int | None = 1
    data_root: str | None = None
    download: bool = True

    def __post_init__(self):
        self.seeds = wholes("seeds", self.seeds, minimum=0)
        for name in ("width", "epochs", "batch_size", "finetune_epochs", "timing_calls",
                     "width_a", "extra", "epochs_a", "epochs_b"):
            whole(name, getattr(self, name))
        if self.epochs < self.width:
            raise ValueError(f"epochs ({self.epochs}) must be >= width ({self.width}): the "
                             f"branchwise schedule trains one branch per phase")
        self.task_a, self.task_b = tuple(self.task_a), tuple(self.task_b)
        if set(self.task_a) & set(self.task_b) or len(self.task_a) < 2 or len(self.task_b) < 2:
            raise ValueError(f"task_a and task_b must be disjoint sets of >= 2 classes, got "
                             f"{self.task_a} and {self.task_b}")


PROFILES: dict[str, dict] = {
    "quick": {},
    "full": dict(dataset="cifar10", size="small", patch_size=None, epochs=48, batch_size=128,
                 lr=1e-3, label_smoothing=0.1, finetune_epochs=3, timing_calls=200,
                 epochs_a=30, epochs_b=30, device="auto", threads=None),
}


def make_spec(profile: str = "quick", **overrides) -> ProgressiveSpec:
    """The spec of a profile, with any ProgressiveSpec field overridden (None: keep)."""
    return spec_for(ProgressiveSpec, PROFILES, profile, overrides)


# ----------------------------------------------------------------------------- helpers

def _model(spec: ProgressiveSpec, width: int, splits, num_classes: int | None = None):
    kwargs = splits.model_kwargs()
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if spec.patch_size is not None:
        kwargs["patch_size"] = spec.patch_size
    return create_model(f"pf-1-{width}", spec.size, **kwargs)


def _config(spec: ProgressiveSpec, epochs: int, seed: int, device) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=spec.lr, warmup_epochs=spec.warmup * epochs,
                       weight_decay=spec.weight_decay, label_smoothing=spec.label_smoothing,
                       seed=seed, device=str(device))


def _prefix_test(model, loader) -> list[dict]:
    out = []
    for k in range(1, model.config.width + 1):
        r = evaluate(model, loader, branches=k)
        out.append({"k": k, "test_loss": r["loss"], "test_acc": r["accuracy"]})
    return out


class Shifted:
    """A loader whose labels are moved by `offset` (task B's 0..4 become 5..9 of one head)."""

    def __init__(self, loader, offset: int):
        self.loader, self.offset = loader, offset

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y in self.loader:
            yield x, y + self.offset


@torch.no_grad()
def task_accuracy(model, loader, classes: slice, branches: int | None = None) -> float:
    """Accuracy on a task judged by its own logits only (task-incremental): the argmax over
    logits[classes] against the labels (which lie in `classes`)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    right = total = 0
    try:
        for x, y in loader:
            logits = model(x.to(device), branches=branches)[:, classes]
            right += int((logits.argmax(1).cpu() + classes.start == y).sum())
            total += len(y)
    finally:
        model.train(was)
    return right / total


def _latency(model, x, calls: int, device) -> dict:
    model.eval()
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        return latency_stats(time_calls(lambda: model(x), calls, device))


# ----------------------------------------------------------------------------- the units

def schedule_unit(spec, schedule: str, seed: int, splits, device) -> tuple[dict, object]:
    """Train Para-Former-1-n with one schedule: its record and the trained model."""
    train, val, test = splits.loaders(spec.batch_size, seed=seed)
    seed_everything(seed)
    model = _model(spec, spec.width, splits)
    t0 = time.perf_counter()
    result = fit(model, train, val, _config(spec, spec.epochs, seed, device), progress=False,
                 schedule=schedule)
    if result.status != "completed":
        raise KeyboardInterrupt
    wall = time.perf_counter() - t0
    prefixes = _prefix_test(model, test)
    return {"seed": seed, "schedule": schedule, "width": spec.width, "epochs": spec.epochs,
            "updates": sum(r["updates"] for r in result.history), "wall_time_s": wall,
            "test_acc": prefixes[-1]["test_acc"], "prefixes": prefixes,
            "history": result.history}, model


def compression_unit(spec, model, trained: str, seed: int, splits, device) -> list[dict]:
    """For a model trained with schedule `trained`, every scoring method x every k: test accuracy of the k best branches (and, for the
    leave-one-out choice, after spec.finetune_epochs of fine-tuning)."""
    train, val, test = splits.loaders(spec.batch_size, seed=seed)
    full_params = count_parameters(model)
    rows = []
    for method in SCORES:
        scores = score_branches(model, val, method)
        for k in range(1, spec.width + 1):
            small = compress(model, k, scores)
            row = {"seed": seed, "trained": trained, "method": method, "k": k, "kept": best_branches(scores, k),
                   "params": count_parameters(small), "full_params": full_params,
                   "test_acc": evaluate(small, test)["accuracy"], "test_acc_finetuned": None}
            if method == "loo" and k < spec.width:
                seed_everything(seed)
                fit(small, train, None, _config(spec, spec.finetune_epochs, seed, device),
                    progress=False)
                row["test_acc_finetuned"] = evaluate(small, test)["accuracy"]
            rows.append(row)
        rows[-1]["scores"] = scores.tolist()
    return rows


def latency_rows(spec, model, splits, device) -> list[dict]:
    """Batch-1 latency of the width-k models (k = 1..n): one per k, on `device`."""
    x = splits.test.batch(torch.arange(1))[0].to(device)
    rows = []
    for k in range(1, spec.width + 1):
        small = keep_branches(model, k)
        t = _latency(small, x, spec.timing_calls, device)
        rows.append({"k": k, "params": count_parameters(small), "device": str(device),
                     "calls": spec.timing_calls, **t})
    return rows


def expansion_unit(spec, seed: int, device) -> dict:
    """Task A, then task B by expansion (A frozen exactly) and by plain fine-tuning."""
    a = data.load_data(spec.dataset, classes=spec.task_a, seed=seed, root=spec.data_root,
                       download=spec.download)
    b = data.load_data(spec.dataset, classes=spec.task_b, seed=seed, root=spec.data_root,
                       download=spec.download)
    ka, kb = len(spec.task_a), len(spec.task_b)
    rows_a, rows_b = slice(0, ka), slice(ka, ka + kb)
    a_train, _, a_test = a.loaders(spec.batch_size, seed=seed)
    b_train, _, b_test = (Shifted(l, ka) for l in b.loaders(spec.batch_size, seed=seed))
    seed_everything(seed)
    model = _model(spec, spec.width_a, a, num_classes=ka + kb)
    fit(model, a_train, None, _config(spec, spec.epochs_a, seed, device), progress=False)
    before = task_accuracy(model, a_test, rows_a)
    logits_a = _logits(model, a_test)

    t0 = time.perf_counter()
    big = expand(model, spec.extra, seed=seed)
    frozen = old_task_rows(big, spec.width_a, range(ka))
    fit(big, b_train, None, _config(spec, spec.epochs_b, seed, device), progress=False,
        freeze_rows=frozen)
    expansion_s = time.perf_counter() - t0
    identical = bool(torch.equal(_logits(big, a_test, spec.width_a)[:, rows_a], logits_a[:, rows_a]))

    tuned = copy.deepcopy(model)
    t0 = time.perf_counter()
    fit(tuned, b_train, None, _config(spec, spec.epochs_b, seed, device), progress=False)
    finetune_s = time.perf_counter() - t0
    return {
        "seed": seed, "width_a": spec.width_a, "extra": spec.extra,
        "params_a": count_parameters(model), "params_expanded": count_parameters(big),
        "a_before": before,
        "expansion_a_prefix": task_accuracy(big, a_test, rows_a, spec.width_a),
        "expansion_a_whole": task_accuracy(big, a_test, rows_a),
        "expansion_b": task_accuracy(big, b_test, rows_b),
        "expansion_a_logits_identical": identical, "expansion_s": expansion_s,
        "finetune_a": task_accuracy(tuned, a_test, rows_a),
        "finetune_b": task_accuracy(tuned, b_test, rows_b), "finetune_s": finetune_s,
    }


@torch.no_grad()
def _logits(model, loader, branches: int | None = None) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(x.to(device), branches=branches).cpu() for x, _ in loader])


# ----------------------------------------------------------------------------- summaries

def progressive_summary(results: dict) -> dict:
    """Means and sample standard deviations over seeds of what the notebook reads: each
    schedule's prefix accuracies, each compression, the expansion's task accuracies."""
    out: dict = {"schedules": [], "compression": [], "expansion": {}, "best_ratio_within_1pt": {}}
    for name in SCHEDULES:
        runs = [r for r in results["schedules"] if r["schedule"] == name]
        if not runs:
            continue
        for k in range(1, runs[0]["width"] + 1):
            s = stats([r["prefixes"][k - 1]["test_acc"] for r in runs])
            out["schedules"].append({"schedule": name, "k": k, "test_acc_mean": s["mean"],
                                     "test_acc_std": s["std"], "seeds": s["n"],
                                     "updates": runs[0]["updates"],
                                     "wall_time_s_mean": stats([r["wall_time_s"] for r in runs])["mean"]})
    comp = results["compression"]
    n = max(r["k"] for r in comp)
    full = {(r["trained"], r["seed"]): r["test_acc"] for r in comp if r["method"] == "first" and r["k"] == n}
    for trained in COMPRESSED:
        for method in SCORES:
            for k in range(1, n + 1):
                rows = [r for r in comp if (r["trained"], r["method"], r["k"]) == (trained, method, k)]
                if not rows:
                    continue
                s = stats([r["test_acc"] for r in rows])
                lost = stats([full[trained, r["seed"]] - r["test_acc"] for r in rows])
                row = {"trained": trained, "method": method, "k": k, "params": rows[0]["params"],
                       "ratio": rows[0]["full_params"] / rows[0]["params"],
                       "test_acc_mean": s["mean"], "test_acc_std": s["std"],
                       "lost_mean": lost["mean"], "lost_std": lost["std"], "seeds": s["n"]}
                tuned = [r["test_acc_finetuned"] for r in rows if r["test_acc_finetuned"] is not None]
                if tuned:
                    row["finetuned_mean"] = stats(tuned)["mean"]
                    row["finetuned_std"] = stats(tuned)["std"]
                out["compression"].append(row)
        # the smallest model that loses at most one point of test accuracy (mean over seeds)
        within = [r for r in out["compression"] if r["trained"] == trained and r["lost_mean"] <= 0.01]
        out["best_ratio_within_1pt"][trained] = max(
            ({"method": r["method"], "k": r["k"], "ratio": r["ratio"]} for r in within),
            key=lambda r: r["ratio"], default=None)
    for key in ("a_before", "expansion_a_prefix", "expansion_a_whole", "expansion_b",
                "finetune_a", "finetune_b"):
        values = [r[key] for r in results["expansion"]]
        if values:
            s = stats(values)
            out["expansion"][key] = {"mean": s["mean"], "std": s["std"], "n": s["n"]}
    return out


# ----------------------------------------------------------------------------- running

def run_progressive(profile: str = "quick", *, out: str | Path | None = None,
                    overwrite: bool = False, resume: bool = False, progress: bool = True,
                    log: Callable[[str], None] | None = print, **overrides) -> dict:
    """Run every unit (resumable: each finished unit is kept in `<out>/partial.json`) and
    write the results into `out` (default: progressive/ or progressive-full/ of
    duat.locations.output_dir(); an earlier run is refused unless overwrite=True)."""
    if overrides.get("seeds") is not None:
        overrides["seeds"] = tuple(overrides["seeds"])
    spec = make_spec(profile, **overrides)
    device = select_device(spec.device)
    identity = {"experiment": EXPERIMENT, "spec": asdict(spec)}
    out_dir, saved = open_run_dir(default_output_dir(EXPERIMENT, spec.profile) if out is None
                                  else out, identity, overwrite=overwrite, resume=resume)
    done: dict = dict(saved["done"]) if saved else {}
    units = [(name, seed) for seed in spec.seeds for name in (*SCHEDULES, "expansion")]
    t0 = time.perf_counter()

    def keep(key: str, value) -> None:
        done[key] = value
        save_partial(out_dir, identity, done=done)

    kept = lambda: f"{len(done)} of {len(units)}" if done else None  # noqa: E731
    with using_threads(spec.threads), Progress(len(units), EXPERIMENT, progress, log) as report, \
            kept_on_stop(EXPERIMENT, out_dir, kept, log):
        env = environment_info()
        if done:
            report.say(f"resuming: {len(done)} of {len(units)} units already done")
            report.advance(len(done))
        splits = {}
        for name, seed in units:
            key = f"{name}/{seed}"
            if key in done:
                continue
            u0 = time.perf_counter()
            if name == "expansion":
                value = expansion_unit(spec, seed, device)
                line = (f"A {value['a_before']:.3f} -> expansion {value['expansion_a_prefix']:.3f}"
                        f" / fine-tuning {value['finetune_a']:.3f}")
            else:
                if seed not in splits:
                    splits.clear()
                    splits[seed] = data.load_data(spec.dataset, seed=seed, root=spec.data_root,
                                                  download=spec.download)
                record, model = schedule_unit(spec, name, seed, splits[seed], device)
                value = {"record": record}
                if name in COMPRESSED:
                    value["compression"] = compression_unit(spec, model, name, seed, splits[seed],
                                                            device)
                    if seed == spec.seeds[0] and name == "joint":
                        value["latency"] = latency_rows(spec, model, splits[seed], device)
                line = "test acc of y_1..y_n " + " ".join(f"{p['test_acc']:.3f}"
                                                          for p in record["prefixes"])
            keep(key, value)
            report.say(f"[{len(done)}/{len(units)}] {name:12s} seed {seed}  {line}  "
                       f"({time.perf_counter() - u0:.1f} s)")
            report.advance()
    results = {
        "experiment": EXPERIMENT, "profile": spec.profile, "spec": asdict(spec),
        "device": str(device), "environment": env,
        "schedules": [done[f"{n}/{s}"]["record"] for s in spec.seeds for n in SCHEDULES],
        "compression": [r for s in spec.seeds for n in COMPRESSED
                        for r in done[f"{n}/{s}"]["compression"]],
        "latency": done[f"joint/{spec.seeds[0]}"]["latency"],
        "expansion": [done[f"expansion/{s}"] for s in spec.seeds],
        # this session's time; a resumed run adds the earlier sessions' units' own times
        "wall_time_s": time.perf_counter() - t0,
    }
    results["summary"] = progressive_summary(results)
    PROGRESSIVE.write(results, out_dir)
    finish_partial(out_dir)
    results["out"] = str(out_dir)
    return results


def _schedule_rows(results: dict) -> list[dict]:
    """schedules.csv: one row per seed, schedule and epoch (the prefix metrics flat)."""
    return [{"seed": r["seed"], "schedule": r["schedule"], **h}
            for r in results["schedules"] for h in r["history"]]


def _tables(results: dict) -> dict:
    """The CSV tables: schedules, compression, latency, expansion and the compression summary."""
    return {"schedules.csv": _schedule_rows(results),
            "compression.csv": [{k: v for k, v in r.items() if k not in ("kept", "scores")}
                                for r in results["compression"]],
            "latency.csv": results["latency"],
            "expansion.csv": forgetting_rows(results),
            "summary.csv": results["summary"]["compression"]}


def format_report(results: dict) -> str:
    """A plain-text report: each schedule's prefix accuracies, the compression curve and the
    forgetting table (means +- sample sd over seeds)."""
    s = results["summary"]
    lines = ["test accuracy of the prefix models y_k (mean +- sd over seeds)"]
    for name in SCHEDULES:
        rows = [r for r in s["schedules"] if r["schedule"] == name]
        if rows:
            lines.append(f"  {name:12s} " + "  ".join(
                f"k={r['k']}: {r['test_acc_mean']:.3f}+-{r['test_acc_std']:.3f}" for r in rows)
                + f"   ({rows[0]['updates']} updates, {rows[0]['wall_time_s_mean']:.1f} s)")
    lines.append("compression: test accuracy of the k best branches, and what it lost")
    for r in s["compression"]:
        tuned = (f", fine-tuned {r['finetuned_mean']:.3f}+-{r['finetuned_std']:.3f}"
                 if "finetuned_mean" in r else "")
        lines.append(f"  {r['trained']:11s} {r['method']:6s} k={r['k']:<2d} {r['params']:>8,d} params "
                     f"({r['ratio']:.2f}x smaller)  {r['test_acc_mean']:.3f}+-{r['test_acc_std']:.3f}"
                     f"  lost {r['lost_mean']:+.3f}{tuned}")
    for trained, best in s["best_ratio_within_1pt"].items():
        lines.append(f"  {trained}-trained, the largest ratio within 1 point of the full model: "
                     + (f"{best['ratio']:.2f}x ({best['method']}, k={best['k']})" if best else "none"))
    lines.append("learning task B after task A (task accuracy, mean +- sd)")
    e = s["expansion"]
    for key, text in (("a_before", "A before B"), ("expansion_a_prefix", "A after, expansion (prefix)"),
                      ("expansion_a_whole", "A after, expansion (whole)"),
                      ("finetune_a", "A after, fine-tuning"), ("expansion_b", "B, expansion"),
                      ("finetune_b", "B, fine-tuning")):
        if key in e:
            lines.append(f"  {text:30s} {e[key]['mean']:.3f}+-{e[key]['std']:.3f}")
    return "\n".join(lines)


PROGRESSIVE = Experiment(
    EXPERIMENT, "Prefix models under three schedules, compression by keeping branches, "
    "expansion for a new task (duat.experiments.progressive)", run_progressive, _tables,
    {"prefix_curves.png": plot_prefix_curves, "compression.png": plot_compression,
     "forgetting.png": plot_forgetting}, RESULT_KEYS, format_report, float_format=".6g",
    savefig={"bbox_inches": "tight"})
