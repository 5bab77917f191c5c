"""`duat reproduce`: run a named experiment of duat.experiments.catalog and print its results.

    duat reproduce --list
    duat reproduce accuracy-vs-width --quick
    duat reproduce data-scale --quick --out /tmp/rerun --compare data-scale
    duat reproduce finetune --quick --per-class 5 10
    torchrun --nproc-per-node 2 -m duat reproduce accuracy-vs-width --full
                        # the sweeps only: every run data parallel over the processes (DDP),
                        # rank 0 writes; the other experiments run in one process

Bad input raises (ValueError, FileExistsError, ...); duat.cli reports it in one line with
status 2. With --compare the exit status is 1 when a new mean lies outside the reference's
seed spread.
"""
from __future__ import annotations

import argparse
import sys

from duat.distributed.process import Context, launched, launched_world, run_in_group
from duat.experiments.catalog import (EXPERIMENTS, compare_results, format_summary, get_experiment,
                                      load_results, run_experiment)
from duat.experiments.plots import label
from duat.experiments.runs import default_output_dir
from duat.experiments.sweeps import SWEEPS, missing_configurations
from duat.runtime import profile as check_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}, or 'all' "
                                                         f"(the sweeps: {', '.join(SWEEPS)})")
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
    group = parser.add_argument_group("finetune only")
    group.add_argument("--weights", metavar="SOURCE",
                       help="pre-trained source: a torchvision weights name, a state-dict file or a "
                            "kit checkpoint (default: quick pre-trains a ViT-4 on digits 0-4; full "
                            "uses ViT_B_16_Weights.IMAGENET1K_V1)")
    group.add_argument("--arch", help="architecture of a plain state-dict file (vit_b_16, vit-4, ...)")
    group.add_argument("--datasets", nargs="+", metavar="NAME", help="target dataset(s)")
    group.add_argument("--per-class", type=int, nargs="+", metavar="K",
                       help="training examples per class of the target task")
    group.add_argument("--layouts", nargs="+", metavar="NAME",
                       help="layouts with m * n = L of the source, e.g. vit-4 pf-2-2 pf-1-4")
    group.add_argument("--select", choices=("first", "last", "spread"),
                       help="which source blocks when a layout has m * n < L")


def run(args: argparse.Namespace) -> int:
    """`duat reproduce`. Under torchrun the sweeps train every run data parallel over the
    processes; the other experiments are refused there."""
    if not launched() or args.list or not args.experiment:
        return _reproduce(args, None)
    if args.experiment in EXPERIMENTS and EXPERIMENTS[args.experiment].one_process \
            and launched_world() > 1:
        raise ValueError(f"duat reproduce {args.experiment} runs in one process (its many small "
                         f"trainings, freezing and weight files are not spread over processes): "
                         f"start it without torchrun")
    return run_in_group(args.device or "auto", lambda ctx: _reproduce(args, ctx))


def _reproduce(args: argparse.Namespace, ctx: Context | None) -> int:
    if args.list or not args.experiment:
        for e in EXPERIMENTS.values():
            print(f"{e.name:20s} {e.title}")
        if not args.list:
            print("\nusage: duat reproduce EXPERIMENT [--quick | --full]", file=sys.stderr)
            return 2
        return 0
    names = list(SWEEPS) if args.experiment == "all" else [get_experiment(args.experiment).name]
    if len(names) > 1 and (args.out or args.compare):
        raise ValueError("--out and --compare need a single experiment, not 'all'")
    options = _options(args, names[0], ctx)          # refusals before any work
    if args.compare and get_experiment(names[0]).compare is None:
        raise ValueError(f"--compare is not supported for the {names[0]} experiment")
    profile = check_profile(args.profile)
    _refuse_comparing_in_place(args, names[0], profile)
    reference = load_results(args.compare) if args.compare else None
    status = 0
    for name in names:
        results = run_experiment(name, profile, **options)
        if ctx is not None and not ctx.main:
            continue
        where = f" on {results['device']}" if "device" in results else ""
        print(f"\n{results.get('title', name)} ({profile} profile, "
              f"{results['wall_time_s']:.0f} s{where})")
        print(format_summary(results))
        print(f"results in {results['out']}/")
        if reference is not None and not _report_comparison(results, reference):
            status = 1
    return status


def _options(args: argparse.Namespace, name: str, ctx: Context | None) -> dict:
    """The run options of experiment `name` from the command line; an option it does not
    take is refused."""
    options = dict(out=args.out, overwrite=args.overwrite, resume=args.resume,
                   progress=not args.no_progress, seeds=args.seeds, device=args.device,
                   threads=args.threads)
    finetune = dict(source=args.weights, source_arch=args.arch, targets=args.datasets,
                    per_class=args.per_class, layouts=args.layouts, select=args.select)
    if name == "finetune":
        options.update(finetune)
    elif any(finetune.values()):
        given = [o for o, k in (("--weights", "source"), ("--arch", "source_arch"),
                                ("--datasets", "targets"), ("--per-class", "per_class"),
                                ("--layouts", "layouts"), ("--select", "select")) if finetune[k]]
        raise ValueError(f"{', '.join(given)}: only `duat reproduce finetune` takes these")
    if name == "composition":
        if args.data_root or args.no_download:
            raise ValueError("--data-root, --no-download: the composition tasks are generated and "
                             "its text ships with Python; nothing is read or downloaded")
        return options
    options.update(data_root=args.data_root, download=False if args.no_download else None)
    if name in SWEEPS:
        options["distributed"] = ctx
    return options


def _refuse_comparing_in_place(args: argparse.Namespace, name: str, profile: str) -> None:
    """--compare without --out would rerun into the folder of the results it compares with."""
    if args.compare and args.out is None and not args.overwrite:
        default = default_output_dir(name, profile)
        if default.is_dir() and any(default.iterdir()):
            raise FileExistsError(f"{default} already holds results; to rerun and compare "
                                  f"with them, write the rerun elsewhere: --out DIR")


def _configuration(r: dict) -> str:
    if "task" in r:                                   # composition
        return f"{r['task']:9s} T={r['length']:<4d} {label(r['model']):18s}"
    return f"{label(r['model']):18s} fraction {r['fraction']:<5g} classes {r['num_classes']:<3d}"


def _report_comparison(results: dict, reference: dict) -> bool:
    """Print the new means against the reference's; whether all lie within the seed spread."""
    rows = compare_results(results, reference)
    bad = [r for r in rows if not r["within"]]
    for r in rows:
        print(f"  {_configuration(r)} reference {r['reference']:.4f}  new {r['new']:.4f}  "
              f"diff {r['difference']:+.4f}  tolerance {r['tolerance']:.4f}  "
              f"{'ok' if r['within'] else 'OUTSIDE'}")
    print(f"{len(rows) - len(bad)}/{len(rows)} configurations within the seed spread")
    missing = missing_configurations(results, reference) if results["experiment"] in SWEEPS else []
    if missing:
        print(f"{len(missing)} configuration(s) of the reference not rerun: "
              + "; ".join(label(m["model"]) for m in missing))
    return not bad
