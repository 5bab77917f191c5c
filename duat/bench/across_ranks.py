"""`duat bench --impl pf-branch-parallel`: one process against N, the branches split over them.

    torchrun --nproc-per-node 2 -m duat bench --impl pf-branch-parallel          # CPU, gloo
    torchrun --nproc-per-node 4 -m duat bench --impl pf-branch-parallel --device cuda  # a GPU each

For every width n and batch B it times Para-Former-1-n four ways, on the same machine in
the same minutes (docs/method.md section 8):

    one     rank 0 alone runs the whole model: on a CPU with W x t threads (all the cores
            the W processes use), on a GPU on its own device; the other ranks wait
    split   every rank runs its n / W branches with t threads (duat.distributed
            .branch_parallel), then one sum all-reduce per stage: the latency of a call
    reduce  that all-reduce alone, on one stage's output (B, T, D): the communication cost
    local   rank 0's branches alone, without the all-reduce: the compute that is left

Every rank makes the same number of calls (no time cap: a collective must be met by all);
times are rank 0's, and a `split` call on rank 0 ends only when the all-reduce has
brought every rank's share, so it is the slowest rank's latency. Before timing, the split
model's logits are checked against the whole model's (max |difference| in the record).

Results (rank 0 writes them): branch-parallel/<device>-<W>x<t>-DATE/ of
duat.locations.output_dir(): results.json, results.csv, branch_parallel.png. Reading them
(notebook 12): saved_runs, load, describe (the machine and the model's size: runs differ in
D and image size), speedup_table and speedup_grid (a run of one process splits nothing:
its one / split is labelled as the wrapper's cost, not a speed-up).
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.ticker import NullFormatter, ScalarFormatter

from duat.bench.harness import BenchSpec, environment
from duat.bench.timing import latency_stats, time_calls
from duat.distributed.branch_parallel import branch_parallel
from duat.distributed.process import Context, launched, run_in_group
from duat.locations import committed, output_dir
from duat.registry import create_model, model_config
from duat.storage import atomic_write_json, prepare_output_dir, read_results, write_csv, write_figure

NAME = "pf-branch-parallel"
FOLDER = "branch-parallel"          # next to bench/ in duat/results (or $DUAT_RESULTS)
DEFAULT_WIDTHS = (2, 4, 8, 16, 24)
WAYS = ("one", "split", "reduce", "local")
MAX_DIFF = 1e-3     # split against whole logits: float32 sums in another order (TF32 allowed)


def run(args: argparse.Namespace, spec: BenchSpec, preset: str) -> int:
    """The pf-branch-parallel benchmark under torchrun (every rank runs it)."""
    if not launched():
        raise ValueError(f"{NAME} times several processes: start it under torchrun, e.g. "
                         f"`torchrun --nproc-per-node 2 -m duat bench --impl {NAME}`")
    return run_in_group(args.device or "auto", lambda ctx: _run(args, spec, preset, ctx))


def _run(args, spec: BenchSpec, preset: str, ctx: Context) -> int:
    t = args.threads or 1
    widths = tuple(args.layers) if args.layers else tuple(n for n in DEFAULT_WIDTHS if n >= ctx.world)
    too_narrow = [n for n in widths if n < ctx.world]
    if too_narrow:
        raise ValueError(f"width(s) {too_narrow} have fewer branches than the {ctx.world} "
                         f"processes: give --layers of at least {ctx.world}")
    folder = None
    if not args.no_save:
        now = datetime.datetime.now(datetime.timezone.utc)
        name = args.name or f"{ctx.device.type}-{ctx.world}x{t}-{now:%Y-%m-%d-%H%M}"
        parent = Path(args.out) if args.out is not None else output_dir(FOLDER)
        folder = ctx.agree(lambda: prepare_output_dir(parent / name, overwrite=args.overwrite))
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if ctx.main else (lambda msg: None)
    say(f"duat bench {NAME}: {ctx.world} process(es) x {t} thread(s) ({ctx.backend} on "
        f"{ctx.device.type}) against one process with {ctx.world * t}; n {list(widths)}, "
        f"batch {list(spec.batches)}, {spec.size}, {spec.reps} reps")
    records = []
    for n in widths:
        for B in spec.batches:
            records.append(time_case(ctx, spec, n, B, t))
            r = records[-1]
            if ctx.main:
                say(f"  n={n:<3} B={B:<3} one {r['one']['median_ms']:8.2f} ms   split "
                    f"{r['split']['median_ms']:8.2f} ms   all-reduce {r['reduce']['median_ms']:7.3f} ms"
                    f"   speed-up x{r['speedup']:.2f}")
    results = {"benchmark": NAME, "preset": preset, "processes": ctx.world,
               "threads_per_process": t, "backend": ctx.backend,
               "spec": {k: v for k, v in spec.to_dict().items()
                        if k in ("size", "image_size", "patch_size", "in_channels", "dtype",
                                 "batches", "reps", "warmup", "seed")},
               "environment": environment(ctx.device, spec), "records": records}
    if ctx.main:
        print(format_table(results))
        if folder is not None:
            for path in save(results, folder):
                print(f"wrote {path}")
    return 0


def time_case(ctx: Context, spec: BenchSpec, n: int, batch: int, threads: int) -> dict:
    """One (n, B) case, all four ways; every rank calls it."""
    device, W = ctx.device, ctx.world
    kw = dict(size=spec.size, image_size=spec.image_size, in_channels=spec.in_channels,
              num_classes=spec.num_classes)
    if spec.patch_size is not None:
        kw["patch_size"] = spec.patch_size
    torch.manual_seed(spec.seed)
    whole = create_model(f"pf-1-{n}", stage="batched", **kw).eval().to(device)
    g = torch.Generator().manual_seed(spec.seed + 1)
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size, generator=g).to(device)
    kind = "contiguous" if n % W == 0 else "strided"
    out = {"n": n, "batch": batch, "processes": W, "threads_per_process": threads,
           "split_kind": kind, "one": None, "speedup": None}
    ref = None
    with torch.inference_mode():
        ctx.barrier()
        if ctx.main:                      # one: rank 0 alone, with the threads of all W
            torch.set_num_threads(threads * W)
            ref = whole(x)
            out["one"] = latency_stats(_time(lambda: whole(x), spec, device))
            torch.set_num_threads(threads)
        ctx.barrier()
    model = branch_parallel(whole, split=kind)           # rank 0's weights on every rank
    stage = model.stages[0]
    with torch.inference_mode():
        y = model(x)
        out["max_abs_diff"] = (y - ref).abs().max().item() if ctx.main else None
        out["ids_rank0"] = stage.ids if ctx.main else None
        ctx.barrier()
        out["split"] = latency_stats(_time(lambda: model(x), spec, device))
        tokens = model.forward_tokens(x)                 # (B, T, D)
        part = stage.local.update(tokens)                # this rank's share of sum_i f_i
        out["reduce"] = latency_stats(_time(lambda: ctx.all_sum(part), spec, device))
        out["local"] = latency_stats(_time(lambda: stage.local.update(tokens), spec, device))
        ctx.barrier()
    if ctx.main:
        out["speedup"] = out["one"]["median_ms"] / out["split"]["median_ms"]
        if out["max_abs_diff"] > MAX_DIFF:
            raise RuntimeError(f"the split Para-Former-1-{n} disagrees with the whole model by "
                               f"{out['max_abs_diff']:.2e}: a bug, not a timing")
    return out


def _time(fn, spec: BenchSpec, device: torch.device) -> list[float]:
    for _ in range(max(1, spec.warmup)):
        fn()
    return time_calls(fn, spec.reps, device)


# ----------------------------------------------------------------------------- report

def format_table(results: dict) -> str:
    W, t = results["processes"], results["threads_per_process"]
    head = (f"{'n':>4} {'B':>4}  {'one: 1 x ' + str(W * t) + ' thr':>16}  "
            f"{'split: ' + str(W) + ' x ' + str(t) + ' thr':>18}  {'all-reduce':>11}  "
            f"{'own branches':>12}  {'speed-up':>8}")
    lines = [head, "-" * len(head)]
    for r in results["records"]:
        one, split = r["one"], r["split"]
        lines.append(f"{r['n']:>4} {r['batch']:>4}  {_ms(one):>16}  {_ms(split):>18}  "
                     f"{r['reduce']['median_ms']:>8.3f} ms  {r['local']['median_ms']:>9.2f} ms  "
                     f"x{r['speedup']:>7.2f}")
    lines.append(f"median ms (IQR); {results['backend']} on {results['environment'].get('device_name', '?')}; "
                 "speed-up = one / split, above 1: the split is faster"
                 + ("" if W > 1 else " (one process: nothing is split, the ratio is the wrapper's cost)"))
    lines.append(f"model: {model_text(results)}")
    worst = max(r["max_abs_diff"] for r in results["records"])
    lines.append(f"the split model's logits against the whole model's, checked before timing: "
                 f"max |difference| {worst:.1e} (a run stops above {MAX_DIFF:g})")
    return "\n".join(lines)


def _ms(s: dict) -> str:
    return f"{s['median_ms']:.2f} ({s['iqr_ms']:.2f})"


def save(results: dict, folder: Path) -> list[Path]:
    rows = [{"n": r["n"], "batch": r["batch"], "processes": r["processes"],
             "threads_per_process": r["threads_per_process"], "split": r["split_kind"],
             **{f"{way}_median_ms": r[way]["median_ms"] for way in WAYS},
             **{f"{way}_iqr_ms": r[way]["iqr_ms"] for way in WAYS},
             "speedup": r["speedup"], "max_abs_diff": r["max_abs_diff"]} for r in results["records"]]
    paths = [atomic_write_json(folder / "results.json", results),
             write_csv(folder / "results.csv", rows)]
    paths.append(write_figure(plot(results), folder / "branch_parallel.png"))
    return paths


def plot(results: dict, axes=None):
    """Latency against n: one process, the split, and the all-reduce alone; a panel per batch."""
    batches = sorted({r["batch"] for r in results["records"]})
    if axes is None:
        fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.6), squeeze=False)
        axes = axes[0]
    W, t = results["processes"], results["threads_per_process"]
    labels = {"one": f"one process, {W * t} threads", "split": f"split over {W} x {t} thread(s)",
              "reduce": "the all-reduce alone", "local": "rank 0's branches alone"}
    styles = {"one": "o-", "split": "s-", "reduce": "x--", "local": "^:"}
    for ax, B in zip(axes, batches):
        rows = sorted((r for r in results["records"] if r["batch"] == B), key=lambda r: r["n"])
        ns = [r["n"] for r in rows]
        for way in WAYS:
            med = [r[way]["median_ms"] for r in rows]
            err = [[r[way]["median_ms"] - r[way]["p25_ms"] for r in rows],
                   [r[way]["p75_ms"] - r[way]["median_ms"] for r in rows]]
            ax.errorbar(ns, med, yerr=err, fmt=styles[way], capsize=3, label=labels[way])
        ax.set(xlabel="branches per stage n", ylabel="ms per forward pass (median, IQR)",
               title=f"batch {B}", yscale="log")
        ax.yaxis.set_major_formatter(ScalarFormatter())   # 1, 10, not 10^0, 10^1
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    device = results["environment"].get("device_name", "")
    axes[0].figure.suptitle(f"Para-Former-1-n, branches over {W} {results['backend']} process(es): {device}",
                            fontsize=10)
    axes[0].figure.tight_layout()
    return axes[0].figure


# ----------------------------------------------------------------------------- reading runs

SPLIT = "split over W"
WRAPPER = "W = 1: wrapper only, no split"


def model_of(results: dict) -> dict:
    """The model a run timed, Para-Former-1-n at the run's size: registry size, token width
    D, heads, image and patch size, tokens per image (patches + class token)."""
    spec = results["spec"]
    kw = {"image_size": spec["image_size"], "in_channels": spec["in_channels"]}
    if spec.get("patch_size") is not None:
        kw["patch_size"] = spec["patch_size"]
    c = model_config("pf-1-1", spec["size"], **kw)
    return {"size": spec["size"], "D": c.dim, "heads": c.heads, "image": c.image_size,
            "patch": c.patch_size, "tokens": c.num_tokens}


def model_text(results: dict) -> str:
    m = model_of(results)
    return (f"Para-Former-1-n, size {m['size']} (D = {m['D']}, {m['heads']} heads), "
            f"{m['image']} px images in {m['patch']} px patches ({m['tokens']} tokens)")


def describe(name: str, results: dict) -> str:
    """One line: the run's processes, backend and machine, and the model it timed."""
    env, W = results["environment"], results["processes"]
    if env.get("device") == "cuda":
        where = f"{W} process(es), {results['backend']} on {env.get('device_name', '?')}"
    else:
        where = (f"{W} x {results['threads_per_process']} thread(s), {results['backend']} on "
                 f"{env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores")
    return f"{name}: {where}; {model_text(results)}"


def speedup_table(runs: dict[str, dict]) -> pd.DataFrame:
    """Every (run, n, batch) of saved runs: the model's size, the four medians (ms) and
    speed-up = one / split. `measures` says what the speed-up is: a split over W > 1
    processes, or, in a run of one process, the branch-parallel wrapper's own cost
    (nothing is split; it cannot be read as a split's speed-up)."""
    rows = []
    for name, r in runs.items():
        m, W = model_of(r), r["processes"]
        for rec in r["records"]:
            rows.append({"run": name, "W": W, "model": f"{m['size']}, D {m['D']}, {m['image']} px",
                         "D": m["D"], "image": m["image"], "tokens": m["tokens"],
                         "measures": SPLIT if W > 1 else WRAPPER, "n": rec["n"], "B": rec["batch"],
                         "one ms": rec["one"]["median_ms"], "split ms": rec["split"]["median_ms"],
                         "all-reduce ms": rec["reduce"]["median_ms"],
                         "own branches ms": rec["local"]["median_ms"], "speed-up": rec["speedup"]})
    return pd.DataFrame(rows)


def speedup_grid(table: pd.DataFrame) -> pd.DataFrame:
    """speedup_table's speed-ups, n across: a row per run, model, what it measures, batch."""
    return table.pivot_table(index=["run", "model", "measures", "B"], columns="n",
                             values="speed-up").round(2)


def saved_runs(root: str | Path | None = None) -> list[Path]:
    """Folders of saved branch-parallel runs (default: the committed ones), oldest first."""
    root = Path(root) if root is not None else committed(FOLDER)
    return sorted(p for p in root.glob("*/results.json")) if root.is_dir() else []


def load(path: str | Path) -> dict:
    """A saved run: its folder or results.json."""
    return read_results(path, f"time one with `torchrun --nproc-per-node 2 -m duat bench --impl {NAME}`",
                        keys=("records", "processes", "environment"))
