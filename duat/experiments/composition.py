"""What parallel layers cannot compose: induction, associative recall and a control task, at
equal parameters (docs/method.md section 10).

An induction head ([a][b] ... [a] -> b) and multi-query associative recall (MQAR) need two
attention layers in series: the first writes "the token before me" into the residual
stream, the second's keys read it. A Para-Former-1-n stage is one attention layer with n
times the heads (every branch reads the same x), so the prediction is:

    Para-Former-1-n     fails induction and MQAR at every n
    Para-Former-2-n     solves them like GPT-2 (two stages in series)
    copy (control)      one attention layer suffices: every model learns it

Every model is trained on the same seeded task data (duat.tasks) through the kit's one
loop (duat.training.fit) and scored on held-out sequences at the scored positions only;
GPT-L is the serial model of the same layers, parameters and FLOPs as Para-Former-m-n with
L = m n. The character model (Python's own documentation, duat.tasks.load_text) reports
bits per character on the held-out tenth.

    duat reproduce composition --quick     # a 2-core CPU, ~15 minutes (two runs at a time)
    duat reproduce composition --full      # a GPU: GPT-8, Para-Former-1-8 and 2-4 too

The quick profile trains GPT-1, GPT-2, Para-Former-1-2, Para-Former-1-4 and
Para-Former-2-2 (the pairs of equal size: GPT-2 / Para-Former-1-2 and Para-Former-1-4 /
Para-Former-2-2, which also equal GPT-4 of the full profile).
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import matplotlib.pyplot as plt

from duat.checks import whole
from duat.experiments.plots import label
from duat.experiments.verdicts import THRESHOLDS
from duat.experiments.runs import (Experiment, Progress, default_output_dir, kept_on_stop, spec_for,
                                   stats)
from duat.language import ParaFormerLM, generate
from duat.registry import create_model, parse_name
from duat.runtime import environment_info, seed_everything, select_device
from duat.runtime import threads as using_threads
from duat.storage import finish_partial, open_run_dir, save_partial
from duat.tasks import LanguageSplits, SequenceTask, load_task
from duat.training.engine import TrainConfig, evaluate, fit

NAME = "composition"
COMPOSED = ("induction", "mqar")  # the tasks that need two attention layers in series

PROFILES = {
    "quick": dict(models=("gpt-1", "gpt-2", "pf-1-2", "pf-1-4", "pf-2-2"),
                  tasks=(("induction", 16, 4), ("induction", 32, 8), ("mqar", 16, 4),
                         ("mqar", 32, 4), ("copy", 16, 2), ("copy", 32, 2)),
                  text_models=("gpt-1", "gpt-2", "pf-1-2"), seeds=(0, 1, 2), vocab_size=32,
                  dim=64, heads=2, mlp_ratio=2.0, train_sequences=20000, test_sequences=1000,
                  epochs=2, batch_size=32, lr=2e-3, warmup_epochs=0.5, context=64, text_windows=20000,
                  device="cpu", threads=1, workers=2),
    "full": dict(models=("gpt-1", "gpt-2", "pf-1-2", "gpt-4", "pf-1-4", "pf-2-2", "gpt-8",
                         "pf-1-8", "pf-2-4"),
                 tasks=(("induction", 64, 16), ("induction", 256, 32), ("mqar", 64, 8),
                        ("mqar", 256, 16), ("copy", 64, 2), ("copy", 256, 2)),
                 text_models=("gpt-2", "pf-1-2", "gpt-8", "pf-1-8", "pf-2-4"), seeds=(0, 1, 2),
                 vocab_size=128, dim=128, heads=4, mlp_ratio=4.0, train_sequences=100000,
                 test_sequences=2000, epochs=4, batch_size=64, lr=1e-3, warmup_epochs=0.5, context=256,
                 text_windows=50000, device="auto", threads=None, workers=1),
}


@dataclass(frozen=True)
class CompositionSpec:
    """One profile of the experiment; a task is (name, length, pairs or offset)."""

    profile: str
    models: tuple[str, ...]
    tasks: tuple[tuple[str, int, int], ...]
    text_models: tuple[str, ...]
    seeds: tuple[int, ...]
    vocab_size: int
    dim: int
    heads: int
    mlp_ratio: float
    train_sequences: int
    test_sequences: int
    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float
    context: int               # the character model's window
    text_windows: int          # random training windows of the text
    device: str
    threads: int | None
    workers: int               # trainings at a time (separate processes; 1: in this one)

    def __post_init__(self):
        for model in (*self.models, *self.text_models):
            parse_name(model)                                    # an unknown name: ValueError
        for task in self.tasks:
            self.task(task)                                      # a pattern that does not fit
        for seed in self.seeds:
            whole("seed", seed, minimum=0)
        for name in ("dim", "heads", "train_sequences", "test_sequences", "epochs", "batch_size",
                     "context", "text_windows"):
            whole(name, getattr(self, name))
        if self.threads is not None:
            whole("threads", self.threads)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def task(self, task: Sequence) -> SequenceTask:
        name, length, k = task
        extra = dict(offset=k) if name == "copy" else dict(pairs=k)
        return SequenceTask(name, length, vocab_size=self.vocab_size, **extra)

    def record(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def spec(profile: str = "quick", **overrides) -> CompositionSpec:
    """The profile's settings, any field overridden (None: keep the profile's)."""
    if overrides.get("seeds") is not None:
        overrides["seeds"] = tuple(overrides["seeds"])
    return spec_for(CompositionSpec, PROFILES, profile, overrides)


def runs_of(s: CompositionSpec) -> list[dict]:
    """Every training of the experiment: each task, length, seed and model, then the text."""
    runs = [{"task": t[0], "length": t[1], "k": t[2], "seed": seed, "model": model}
            for t in s.tasks for seed in s.seeds for model in s.models]
    return runs + [{"task": "text", "length": s.context, "k": 0, "seed": seed, "model": model}
                   for seed in s.seeds for model in s.text_models]


def run_key(run: dict) -> str:
    return f"{run['task']}/{run['length']}/{run['model']}/seed{run['seed']}"


# ----------------------------------------------------------------------------- one training

def train_one(s: CompositionSpec, run: dict, progress: bool = False) -> dict:
    """Train one model on one task (or the text) and score it on the held-out sequences:
    the run's record."""
    return trained(s, run, progress)[2]


def trained(s: CompositionSpec, run: dict, progress: bool = False) -> tuple[ParaFormerLM, LanguageSplits, dict]:
    """One run of the experiment: (the trained model, the task's splits, the run's record),
    for a reader who wants to look inside the model (notebook 14)."""
    with using_threads(s.threads):
        name, k = run["task"], run["k"]
        pattern = {"offset": k} if name == "copy" else {"pairs": k} if name != "text" else {}
        splits = load_task(name, length=run["length"], seed=run["seed"], vocab_size=s.vocab_size,
                           train_sequences=s.text_windows if name == "text" else s.train_sequences,
                           test_sequences=s.test_sequences, **pattern)
        train_loader, _, test_loader = splits.loaders(s.batch_size, seed=run["seed"])
        seed_everything(run["seed"])
        model = create_model(run["model"], language=True, **splits.model_kwargs(),
                             dim=s.dim, heads=s.heads, mlp_ratio=s.mlp_ratio)
        config = TrainConfig(epochs=s.epochs, lr=s.lr, weight_decay=0.0, warmup_epochs=s.warmup_epochs,
                             seed=run["seed"], device=s.device)
        t0 = time.perf_counter()
        result = fit(model, train_loader, None, config, progress=progress)
        if result.status != "completed":       # Ctrl-C inside fit: not a finished run
            raise KeyboardInterrupt
        test = evaluate(model, test_loader)
        depth, width = parse_name(run["model"])
        record = {**run, "depth": depth, "width": width, "layers": depth * width,
                  "params": sum(p.numel() for p in model.parameters()),
                  "test_acc": test["accuracy"], "test_loss": test["loss"],
                  "train_acc": result.history[-1]["train_acc"], "steps": result.step,
                  "seconds": time.perf_counter() - t0}
        if run["task"] == "text":
            record["bits_per_char"] = test["loss"] / math.log(2)
            prompt = splits.test[0][:1, :min(16, s.context // 2)]   # the test text's start
            out = generate(model, prompt, s.context - prompt.shape[1], temperature=0.8,
                           seed=run["seed"])
            record["sample"] = splits.corpus.decode(out[0])
        return model, splits, record


# ----------------------------------------------------------------------------- the experiment

def run_composition(profile: str = "quick", *, out: str | Path | None = None, overwrite: bool = False,
                    resume: bool = False, write: bool = True, progress: bool = True,
                    log: Callable[[str], None] | None = print,
                    limit: Callable[[dict], bool] | None = None, **overrides) -> dict:
    """Train every run (or those `limit(run)` keeps) and return, and by default write, the
    results; `overrides` replace fields of the profile (seeds, device, threads, workers, ...).
    The records so far are kept in partial.json after every run; resume=True continues."""
    s = spec(profile, **overrides)
    runs = [r for r in runs_of(s) if limit is None or limit(r)]
    if not runs:
        raise ValueError("the selection holds no runs")
    if resume and limit is not None:
        raise ValueError("resume continues the whole experiment; it cannot be combined with limit")
    identity = {"experiment": NAME, "profile": profile, "spec": s.record()}
    out_dir, done = None, {}
    if write:
        out_dir, saved = open_run_dir(Path(out) if out is not None else default_output_dir(NAME, profile),
                                      identity, overwrite=overwrite, resume=resume)
        done = saved["done"] if saved else {}
    todo = [r for r in runs if run_key(r) not in done]
    device = select_device(s.device)
    t_start = time.perf_counter()
    with using_threads(s.threads):
        env = environment_info()
    with Progress(len(runs), NAME, progress, log) as report, \
            kept_on_stop(NAME, out_dir, lambda: f"{len(done)} of {len(runs)}" if done else None, log):
        report.advance(len(runs) - len(todo))
        for record in _train_all(s, todo):
            done[run_key(record)] = record
            if write:
                save_partial(out_dir, identity, done=done)
            report.say(f"  {record['task']:9s} T={record['length']:<4d} {label(record['model']):18s} "
                       f"seed {record['seed']}: "
                       + (f"{record['bits_per_char']:.3f} bits/char" if record["task"] == "text"
                          else f"accuracy {record['test_acc']:.3f}") + f" ({record['seconds']:.0f} s)")
            report.advance()
    records = [done[run_key(r)] for r in runs]
    results = {"experiment": NAME, "kind": NAME, "title": "What parallel layers cannot compose",
               "profile": profile, "spec": s.record(), "environment": env, "device": str(device),
               "wall_time_s": time.perf_counter() - t_start, "summary": task_summary(records),
               "records": records}
    if write:
        COMPOSITION.write(results, out_dir)
        finish_partial(out_dir)
        results["out"] = str(out_dir)
    return results


def _train_all(s: CompositionSpec, todo: list[dict]):
    """Yield each run's record as it finishes: in this process, or `s.workers` at a time."""
    if s.workers == 1 or len(todo) < 2:
        for run in todo:
            yield train_one(s, run)
        return
    with ProcessPoolExecutor(max_workers=s.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(train_one, s, run) for run in todo]
        try:
            for future in futures:          # in order: the partial record grows as a prefix
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def task_summary(records: Sequence[dict]) -> list[dict]:
    """Per task, length and model: held-out accuracy (bits per character for the text) over
    the seeds, with mean, sd, min, max and n."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["length"], r["model"]), []).append(r)
    rows = []
    for (task, length, model), rs in groups.items():
        metric = "bits_per_char" if task == "text" else "test_acc"
        st = stats([r[metric] for r in rs])
        rows.append({"task": task, "length": length, "model": model, "depth": rs[0]["depth"],
                     "width": rs[0]["width"], "params": rs[0]["params"], "metric": metric,
                     **{k: st[k] for k in ("mean", "std", "min", "max", "n")}})
    return rows


def prediction(results: dict) -> list[dict]:
    """Per composed task and length, the prediction against the results (the claims table's
    rule G, duat.experiments.verdicts), with solved = THRESHOLDS["solved"]:

        not tested      no serial GPT-L (L >= 2) learnt it (mean < solved): the budget
                        cannot tell what a second stage buys
        held            every model with two or more stages in series (GPT-L, L >= 2, and
                        Para-Former-m-n, m >= 2) learnt it, and every Para-Former-1-n stayed
                        below even at its mean + 2 sd
        partly          every Para-Former-1-n stayed below, but a Para-Former-m-n (m >= 2)
                        did not learn it either
        did not hold    some Para-Former-1-n came within its spread of solving it
    """
    solved, spread = THRESHOLDS["solved"], THRESHOLDS["spread"]
    rows = []
    for task, length in sorted({(r["task"], r["length"]) for r in results["summary"]
                                if r["task"] in COMPOSED}):
        group = [r for r in results["summary"] if (r["task"], r["length"]) == (task, length)]
        one = [r for r in group if r["depth"] == 1 and r["width"] > 1]
        two = [r for r in group if r["depth"] >= 2]
        serial = [r for r in two if r["width"] == 1]
        if not one or not serial:
            continue
        best_one = max(one, key=lambda r: r["mean"])
        worst_two = min(two, key=lambda r: r["mean"])
        if max(r["mean"] for r in serial) < solved:
            verdict = "not tested: no serial model learnt it"
        elif any(r["mean"] + spread * r["std"] >= solved for r in one):
            verdict = "did not hold"
        elif worst_two["mean"] < solved:
            verdict = "partly"
        else:
            verdict = "held"
        rows.append({"task": task, "length": length, "best_one_stage": best_one["model"],
                     "best_one_stage_mean": best_one["mean"], "best_one_stage_std": best_one["std"],
                     "worst_two_stage": worst_two["model"], "worst_two_stage_mean": worst_two["mean"],
                     "worst_two_stage_std": worst_two["std"], "verdict": verdict})
    return rows


def format_composition(results: dict) -> str:
    """The summary as a plain-text table, then the prediction's verdict per composed task."""
    lines = [f"{'task':9s} {'T':>4s} {'model':18s} {'params':>8s}  held-out accuracy (mean ± sd, n)"]
    for r in results["summary"]:
        unit = " bits/char" if r["task"] == "text" else ""
        lines.append(f"{r['task']:9s} {r['length']:4d} {label(r['model']):18s} {r['params']:8,d}  "
                     f"{r['mean']:.3f} ± {r['std']:.3f}{unit} (n={r['n']})")
    for p in prediction(results):
        lines.append(f"prediction on {p['task']} T={p['length']}: {p['verdict']} (best one-stage "
                     f"{label(p['best_one_stage'])} {p['best_one_stage_mean']:.3f}; worst two-stage "
                     f"{label(p['worst_two_stage'])} {p['worst_two_stage_mean']:.3f})")
    return "\n".join(lines)


def controls(results: dict) -> list[dict]:
    """The control task's rows of the summary where a model did not learn it (mean held-out
    accuracy below THRESHOLDS["solved"]): empty when every model learnt the control."""
    return [r for r in results["summary"]
            if r["task"] not in (*COMPOSED, "text") and r["mean"] < THRESHOLDS["solved"]]


def plot_accuracy(results: dict):
    """One panel per task: held-out accuracy per model (bars: mean; dots: seeds), one group
    of bars per sequence length; the text's bits per character in the last panel."""
    tasks = list(dict.fromkeys(r["task"] for r in results["summary"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in results["summary"] if r["task"] == task]
        lengths = sorted({r["length"] for r in rows})
        models = list(dict.fromkeys(r["model"] for r in rows))
        width = 0.8 / len(models)
        for i, model in enumerate(models):
            for j, length in enumerate(lengths):
                row = next((r for r in rows if (r["model"], r["length"]) == (model, length)), None)
                if row is None:
                    continue
                xpos = j + (i - (len(models) - 1) / 2) * width
                serial = row["width"] == 1
                ax.bar(xpos, row["mean"], width * 0.9, color=f"C{i}", alpha=0.55 if serial else 0.9,
                       hatch="" if serial else "//", label=label(model) if j == 0 else None)
                seeds = [r["bits_per_char" if task == "text" else "test_acc"]
                         for r in results["records"]
                         if (r["task"], r["length"], r["model"]) == (task, length, model)]
                ax.plot([xpos] * len(seeds), seeds, "k.", ms=3)
        ax.set_xticks(range(len(lengths)), [f"T = {t}" for t in lengths])
        ax.set_title(task)
        ax.set_ylabel("bits per character (held out)" if task == "text" else "held-out accuracy")
        if task != "text":
            ax.set_ylim(0, 1.02)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"What parallel layers cannot compose ({results['profile']} profile, "
                 f"{len(results['spec']['seeds'])} seeds)")
    fig.tight_layout()
    return fig


def compare_composition(results: dict, reference: dict) -> list[dict]:
    """The new means against the reference's, per task, length and model: within when the
    difference is at most max(2 sd of the reference, 0.02)."""
    ref = {(r["task"], r["length"], r["model"]): r for r in reference["summary"]}
    rows = []
    for r in results["summary"]:
        old = ref.get((r["task"], r["length"], r["model"]))
        if old is None:
            continue
        tolerance = max(2 * old["std"], 0.02)
        rows.append({"task": r["task"], "length": r["length"], "model": r["model"],
                     "reference": old["mean"], "new": r["mean"], "difference": r["mean"] - old["mean"],
                     "tolerance": tolerance, "within": abs(r["mean"] - old["mean"]) <= tolerance})
    return rows


def _tables(results: dict) -> dict:
    """summary.csv and runs.csv (every record but its text sample), floats to 4 decimals."""
    return {"summary.csv": results["summary"],
            "runs.csv": [{k: v for k, v in r.items() if k != "sample"} for r in results["records"]]}


COMPOSITION = Experiment(
    NAME, "What parallel layers cannot compose: induction, associative recall, a control and "
    "text, at equal parameters (duat.experiments.composition)", run_composition, _tables,
    {"accuracy.png": plot_accuracy}, ("summary", "records", "spec"), format_composition,
    compare=compare_composition, float_format=".4f", savefig={"bbox_inches": "tight"})
