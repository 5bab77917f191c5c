"""The paper's accuracy experiments as data, and `duat reproduce` to run them.

docs/method.md section 5 reports that (1) more parallel layers generally improve accuracy, for
Para-Former-1-n and Para-Former-m-n, (3) data scale and diversity strongly influence the
results, and (4) a pre-trained serial ViT helps Para-Former when data is limited. The
first four experiments below are sweeps (duat.experiments.sweeps): a registry entry each, a
list of models, a list of data variants (subsets), seeds and a training budget, for two
profiles. The fifth is the fine-tuning experiment (duat.experiments.finetune).

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
    finetune            a pre-trained serial ViT's blocks in Para-Former-m-n layouts, against
                        the same architectures from scratch, with a few examples per class.
    progressive         the follow-up paper (docs/method.md section 7): the loss of every prefix
                        model under three training schedules, compression by keeping the best
                        branches, and expansion for a second task (duat.experiments.progressive).
    composition         what one parallel stage cannot compose (docs/method.md section 10):
                        induction, MQAR and a copy control, and a character model, for GPT-L
                        and Para-Former-m-n of equal size (duat.experiments.composition).

Profiles: `quick` (bundled digits, tiny models with 4x4 patches, one CPU thread, a few
seeds; each experiment fits in minutes on a 2-core CPU) and `full` (CIFAR-10, the 'small'
models, meant for a GPU). A run writes its results (results.json, CSV tables, figures) into
<name>/ (quick) or <name>-full/ of duat.locations.output_dir(): in a source checkout
duat/results/, where the committed quick results live (so regenerating them needs
--overwrite), for an installed kit ./results/. `load_results(name)` reads the committed
quick results (duat.locations.committed), which ship with the package.

    duat reproduce --list
    duat reproduce accuracy-vs-width --quick
    duat reproduce data-scale --quick --out /tmp/rerun --compare data-scale
    torchrun --nproc-per-node 2 -m duat reproduce accuracy-vs-width --full
                        # the sweeps only: every run data parallel over the processes (DDP),
                        # rank 0 writes; finetune and progressive run in one process

The package: `runs` (what every experiment shares: folders, statistics, progress, the
message of an interrupted run, writing and loading results), `sweeps`, `finetune`, `plots`
(figures and tables), and here the `duat reproduce` command (add_arguments, run).
"""
from __future__ import annotations

import argparse
import sys

from duat.distributed.process import Context, launched, launched_world, run_in_group
from duat.experiments import composition, finetune, progressive
from duat.experiments.plots import format_summary, label, plot_sweep, results_frame
from duat.experiments.runs import bootstrap_interval, default_output_dir, results_folder, stats
from duat.experiments.twins import twin_differences, width_and_size
from duat.experiments.sweeps import (CLASS_COUNTS, EXPERIMENTS, FRACTIONS, GRID_M, GRID_N,
                                     GROUP_KEYS, WIDTHS, Experiment, Plan, compare_results,
                                     get_experiment, list_experiments, load_results,
                                     missing_configurations, plot_results, run_experiment,
                                     summarize, write_results)
from duat.runtime import profile as check_profile
from duat.storage import PARTIAL  # an unfinished run's records (see --resume)

__all__ = ["CLASS_COUNTS", "EXPERIMENTS", "FRACTIONS", "GRID_M", "GRID_N", "GROUP_KEYS", "PARTIAL",
           "WIDTHS", "Experiment", "Plan", "add_arguments", "bootstrap_interval", "compare_results",
           "composition",
           "default_output_dir", "finetune", "format_summary", "progressive", "get_experiment", "label",
           "list_experiments", "load_results", "missing_configurations", "plot_results",
           "plot_sweep", "results_folder", "results_frame", "run", "run_experiment", "stats",
           "summarize", "twin_differences", "width_and_size", "write_results"]


# ----------------------------------------------------------------------------- the parser

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", nargs="?", help=f"one of: {', '.join(EXPERIMENTS)}, finetune, "
                                                         "progressive, composition, or 'all' (the "
                                                         "first four)")
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
    _add_finetune_arguments(parser)   # `reproduce finetune`


def _add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only `duat reproduce finetune` has (the common ones above serve it too)."""
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


# ----------------------------------------------------------------------------- running

ONE_PROCESS = ("finetune", "progressive", "composition")   # not spread over torchrun's processes


def run(args: argparse.Namespace) -> int:
    """`duat reproduce` (bad input raises; duat.cli reports it with status 2). Under
    torchrun the sweeps train every run data parallel over the processes."""
    if not launched() or args.list or not args.experiment:
        return _reproduce(args, None)
    if args.experiment in ONE_PROCESS and launched_world() > 1:
        raise ValueError(f"duat reproduce {args.experiment} runs in one process (its many small "
                         f"trainings, freezing and weight files are not spread over processes): "
                         f"start it without torchrun")
    return run_in_group(args.device or "auto", lambda ctx: _reproduce(args, ctx))


def _reproduce(args: argparse.Namespace, ctx: Context | None) -> int:
    main = ctx is None or ctx.main
    if args.list or not args.experiment:
        for e in EXPERIMENTS.values():
            print(f"{e.name:20s} {e.title}")
        print(f"{'finetune':20s} Pre-trained serial ViT into Para-Former-m-n vs scratch, "
              f"limited data (duat.experiments.finetune)")
        print(f"{'progressive':20s} Prefix models under three schedules, compression by keeping "
              f"branches, expansion for a new task (duat.experiments.progressive)")
        print(f"{'composition':20s} What parallel layers cannot compose: induction, associative "
              f"recall, a control and text, at equal parameters (duat.experiments.composition)")
        if not args.list:
            print("\nusage: duat reproduce EXPERIMENT [--quick | --full]", file=sys.stderr)
            return 2
        return 0
    if args.experiment == "finetune":          # its own kind of experiment (not part of 'all')
        return _run_finetune(args)
    if args.experiment == "progressive":       # likewise
        return _run_progressive(args)
    if args.experiment == "composition":       # likewise
        return _run_composition(args)
    if args.experiment != "all" and args.experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {args.experiment!r}; known experiments: "
                         f"{', '.join([*EXPERIMENTS, *ONE_PROCESS])}, or 'all' "
                         f"(see `duat reproduce --list`)")
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    if len(names) > 1 and (args.out or args.compare):
        raise ValueError("--out and --compare need a single experiment, not 'all'")
    profile = check_profile(args.profile)
    _refuse_comparing_in_place(args, names[0], profile)
    reference = load_results(args.compare) if args.compare else None
    status = 0
    for name in names:
        results = run_experiment(name, profile, out=args.out, overwrite=args.overwrite,
                                 seeds=args.seeds, device=args.device, threads=args.threads,
                                 data_root=args.data_root, download=not args.no_download,
                                 progress=not args.no_progress, resume=args.resume,
                                 distributed=ctx)
        if not main:
            continue
        print(f"\n{results['title']} ({profile} profile, {len(results['records'])} runs, "
              f"{results['wall_time_s']:.0f} s on {results['device']})")
        print(format_summary(results))
        print(f"results in {results['out']}/")
        if reference is not None and not _report_comparison(results, reference):
            status = 1
    return status


def _refuse_comparing_in_place(args: argparse.Namespace, name: str, profile: str) -> None:
    """--compare without --out would rerun into the folder of the results it compares with."""
    if args.compare and args.out is None and not args.overwrite:
        default = default_output_dir(name, profile)
        if default.is_dir() and any(default.iterdir()):
            raise FileExistsError(f"{default} already holds results; to rerun and compare "
                                  f"with them, write the rerun elsewhere: --out DIR")


def _report_comparison(results: dict, reference: dict) -> bool:
    """Print the new means against the reference's; whether all lie within the seed spread."""
    rows = compare_results(results, reference)
    bad = [r for r in rows if not r["within"]]
    missing = missing_configurations(results, reference)
    for r in rows:
        print(f"  {label(r['model']):18s} fraction {r['fraction']:<5g} classes {r['num_classes']:<3d} "
              f"reference {r['reference']:.4f}  new {r['new']:.4f}  "
              f"diff {r['difference']:+.4f}  tolerance {r['tolerance']:.4f}  "
              f"{'ok' if r['within'] else 'OUTSIDE'}")
    print(f"{len(rows) - len(bad)}/{len(rows)} configurations within the seed spread")
    if missing:
        print(f"{len(missing)} configuration(s) of the reference not rerun: "
              + "; ".join(label(m["model"]) for m in missing))
    return not bad


def _run_finetune(args: argparse.Namespace) -> int:
    """`duat reproduce finetune`: the common options and the finetune-only ones, handed to
    duat.experiments.finetune.run_experiment."""
    if args.compare:
        raise ValueError("--compare is not supported for the finetune experiment")
    chosen = check_profile(args.profile)
    results = finetune.run_experiment(
        chosen, out=args.out, overwrite=args.overwrite, seeds=args.seeds,
        progress=not args.no_progress, resume=args.resume, source=args.weights,
        source_arch=args.arch, targets=args.datasets, per_class=args.per_class,
        layouts=args.layouts, select=args.select, device=args.device, threads=args.threads,
        data_root=args.data_root, download=False if args.no_download else None)
    if args.no_progress:
        print(finetune.format_table(results["summary"]))
    print(f"\nfine-tuning from a pre-trained serial ViT ({chosen} profile, "
          f"{len(results['runs'])} runs, {results['wall_time_s']:.0f} s)")
    return 0


def _refuse_finetune_options(args: argparse.Namespace) -> None:
    extra = [o for o, v in (("--weights", args.weights), ("--arch", args.arch),
                            ("--datasets", args.datasets), ("--per-class", args.per_class),
                            ("--layouts", args.layouts), ("--select", args.select)) if v]
    if extra:
        raise ValueError(f"{', '.join(extra)}: only `duat reproduce finetune` takes these")


def _run_progressive(args: argparse.Namespace) -> int:
    """`duat reproduce progressive`: the common options, handed to
    duat.experiments.progressive.run_experiment (the finetune-only ones are refused)."""
    if args.compare:
        raise ValueError("--compare is not supported for the progressive experiment")
    _refuse_finetune_options(args)
    chosen = check_profile(args.profile)
    results = progressive.run_experiment(
        chosen, out=args.out, overwrite=args.overwrite, seeds=args.seeds,
        progress=not args.no_progress, resume=args.resume, device=args.device,
        threads=args.threads, data_root=args.data_root,
        download=False if args.no_download else None)
    print(f"\n{progressive.format_report(results)}")
    print(f"results in {results['out']}/ ({chosen} profile, {results['wall_time_s']:.0f} s "
          f"on {results['device']})")
    return 0


def _run_composition(args: argparse.Namespace) -> int:
    """`duat reproduce composition`: the common options, handed to
    duat.experiments.composition.run_experiment; --compare checks the new means against
    other results (exit 1 if any lies outside max(2 sd, 0.02) of the reference's)."""
    _refuse_finetune_options(args)
    if args.data_root or args.no_download:
        raise ValueError("--data-root, --no-download: the composition tasks are generated and "
                         "its text ships with Python; nothing is read or downloaded")
    chosen = check_profile(args.profile)
    _refuse_comparing_in_place(args, composition.NAME, chosen)
    reference = composition.load_results(args.compare) if args.compare else None
    results = composition.run_experiment(
        chosen, out=args.out, overwrite=args.overwrite, resume=args.resume,
        progress=not args.no_progress, seeds=args.seeds, device=args.device, threads=args.threads)
    print(f"\n{results['title']} ({chosen} profile, {len(results['records'])} runs, "
          f"{results['wall_time_s']:.0f} s on {results['device']})")
    print(composition.format_summary(results))
    print(f"results in {results['out']}/")
    if reference is None:
        return 0
    rows = composition.compare_results(results, reference)
    for r in rows:
        print(f"  {r['task']:9s} T={r['length']:<4d} {label(r['model']):18s} reference "
              f"{r['reference']:.4f}  new {r['new']:.4f}  diff {r['difference']:+.4f}  tolerance "
              f"{r['tolerance']:.4f}  {'ok' if r['within'] else 'OUTSIDE'}")
    bad = [r for r in rows if not r["within"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} configurations within the seed spread")
    return 1 if bad else 0
