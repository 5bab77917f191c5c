"""`duat bench`: time serial ViT-L against Para-Former-1-L as L grows, on this machine.

    duat bench --quick                      # batch 1, L = 1..24, well under a minute on a CPU
    duat bench --full --device cpu          # the committed CPU run: batch 1 and 64
    duat bench --preset gpu                 # GPU, ViT-S-like sizes (197 tokens, dim 384),
                                            # eager and CUDA-graph variants, batch 1 and 64
    duat bench --preset gpu --variants eager graph compile   # ... and torch.compile
    duat bench --preset regime              # the latency regime map: D x n x batch, with the
                                            # per-op overhead and the overhead model
    duat bench --preset decode              # per-token decode latency with a KV cache: GPT-n
                                            # against causal Para-Former-1-n and HF GPT-2,
                                            # D x n x batch, the model with a bytes term
    duat bench --preset decode-gpu          # ... on CUDA, eager and a CUDA graph per step
    torchrun --nproc-per-node 2 -m duat bench --impl pf-branch-parallel
                                            # one process against 2, the branches split
                                            # over them (duat.bench.across_ranks)

Results go to bench/<name>/ of duat.locations.output_dir() (results.json, results.csv,
latency_vs_layers.png): duat/results/bench/ in a source checkout, next to the committed
runs; ./results/bench/ for an installed kit; $DUAT_RESULTS/bench/ if set. <name> is
DEVICE-DATE for --full (quick runs: DEVICE-quick-DATE-HHMMSS; the gpu and regime presets:
DEVICE-PRESET-DATE, e.g. cpu-regime-2026-12-02; a regime run adds regime_map.png and
regime_model.png; a decode run, cpu-decode-DATE, writes results.json, results.csv,
decode_map.png and decode_model.png: duat.bench.decode_model); an earlier run's folder is
never overwritten without --overwrite.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from duat.bench import across_ranks
from duat.bench.decode import DECODE_PRESETS, DecodeSpec
from duat.bench.decode_model import (check_decode_targets, format_decode_maps,
                                     format_decode_table, format_decode_targets,
                                     save_decode_results)
from duat.bench.decode_run import check_decode_memory, resolve_decode_device, run_decode
from duat.bench.harness import (DTYPES, IMPLEMENTATIONS, VARIANTS, BenchSpec, check_memory,
                                resolve_device, run_benchmark)
from duat.bench.regime import format_regime, is_regime
from duat.bench.report import (BENCH_FOLDER, check_targets, compare_runs, format_comparison,
                               format_table, format_targets, load_benchmark, save_benchmark)
from duat.locations import output_dir
from duat.runtime import profile
from duat.storage import prepare_output_dir

# Each preset is a set of BenchSpec fields; command-line options override them.
PRESETS: dict[str, dict] = {
    "quick": dict(batches=(1,), layers=(1, 2, 4, 8, 12, 16, 24), reps=20, warmup=3,
                  rounds=2, max_case_seconds=2.0),
    "full": dict(batches=(1, 64), layers=(1, 2, 4, 8, 12, 16, 24), reps=60, warmup=5,
                 rounds=3, max_case_seconds=8.0),
    # ViT-S widths on 224x224 images in 16x16 patches (196 patches + class token)
    "gpu": dict(device="cuda", size="base", image_size=224, batches=(1, 64),
                layers=(1, 2, 4, 8, 12, 16, 24), variants=("eager", "graph"), reps=200,
                warmup=20, rounds=4, max_case_seconds=4.0),
    # The latency regime map (duat.bench.regime): token width D x n x batch, 16x16 images
    # in 4x4 patches (17 tokens); serial ViT-n against batched Para-Former-1-n. Under ten
    # minutes on a 2-core CPU: the time cap per case sets the reps of the slow cases.
    "regime": dict(dims=(32, 64, 128, 192, 384), layers=(1, 2, 4, 8, 16, 24),
                   batches=(1, 8, 64), implementations=("vit", "pf-batched"), image_size=16,
                   patch_size=4, reps=40, min_reps=3, warmup=3, rounds=2,
                   max_case_seconds=0.6),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="quick preset: batch 1, L = 1..24, 20 reps "
                           "(well under a minute on a CPU)")
    size.add_argument("--full", action="store_true",
                      help="full preset: batch 1 and 64, L = 1..24, up to 60 reps "
                           "(the committed results; minutes). Default: DUAT_PROFILE, else quick")
    size.add_argument("--preset", choices=list(PRESETS) + list(DECODE_PRESETS),
                      help="a named preset: quick, full, gpu (CUDA, ViT-S-like sizes, "
                           "eager and CUDA-graph variants), regime (token width D x n x "
                           "batch: the latency regime map), decode (per-token decode "
                           "latency of GPT-n and causal Para-Former-1-n, D x n x batch) or "
                           "decode-gpu (the same on CUDA, eager and graph); options below "
                           "override it")
    parser.add_argument("--device", help="auto (default; the gpu preset: cuda), cpu, cuda, "
                                         "cuda:1, mps")
    parser.add_argument("--batch", type=int, nargs="+", metavar="B", help="batch size(s)")
    parser.add_argument("--layers", type=int, nargs="+", metavar="L", help="depths L to time")
    parser.add_argument("--impl", nargs="+", metavar="NAME",
                        help=f"implementations (default: all): {', '.join(IMPLEMENTATIONS)}; "
                             f"or {across_ranks.NAME} alone, under torchrun: the branches of "
                             f"Para-Former-1-n over the processes, against one process "
                             f"(--layers: the widths n; --threads: per process, default 1)")
    parser.add_argument("--variants", nargs="+", metavar="V",
                        help=f"{', '.join(VARIANTS)} (default: eager; graph needs CUDA)")
    parser.add_argument("--size", help="model width preset: tiny, small (default), base")
    parser.add_argument("--dims", type=int, nargs="+", metavar="D",
                        help="token widths D to sweep (default: the size's; regime: 32 64 "
                             "128 192 384)")
    parser.add_argument("--heads", type=int, help="attention heads per layer (default: the "
                                                  "size's; with --dims, D // 64 and at least 1)")
    parser.add_argument("--patch-size", type=int, help="patch side (default: by image size)")
    parser.add_argument("--image-size", type=int, help="image side (default 32: 64 patches)")
    parser.add_argument("--in-channels", type=int, help="image channels (default 3)")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default float32")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--reps", type=int, help="timed calls per case, at most")
    parser.add_argument("--warmup", type=int, help="untimed calls per case, at most")
    parser.add_argument("--rounds", type=int, help="rounds cycling over the implementations")
    parser.add_argument("--max-case-seconds", type=float, help="time cap per case")
    parser.add_argument("--new-tokens", type=int, metavar="N",
                        help="decode presets: new tokens per timed sequence (default 32)")
    parser.add_argument("--prompt-tokens", type=int, metavar="P",
                        help="decode presets: prompt length, one prefill call (default 16)")
    parser.add_argument("--peer-layers", type=int, nargs="*", metavar="N",
                        help="decode presets: depths of HF GPT-2 timed beside the kit's GPT-n "
                             "(default 1 12 24; none: no peer)")
    parser.add_argument("--out", default=None,
                        help="parent folder of the run's folder (default: bench/ in duat/results/ "
                             "of a source checkout; in ./results/ for an installed kit; in "
                             "$DUAT_RESULTS if set)")
    parser.add_argument("--name", help="the run's folder name (default: DEVICE[-quick]-DATE)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    parser.add_argument("--no-save", action="store_true", help="print the table, write nothing")
    parser.add_argument("--compare", metavar="RESULTS",
                        help="afterwards, compare each case with an earlier run (its folder, "
                             "results.json, or a committed run's name); exit 1 if fewer than "
                             "80%% of the common cases lie within the measured spread")


def spec_from_args(args: argparse.Namespace) -> tuple[BenchSpec, str]:
    """The BenchSpec an argument namespace asks for, and the preset's name."""
    preset = ("quick" if args.quick else "full" if args.full else args.preset
              or profile())
    fields = dict(PRESETS[preset])
    options = {"device": args.device, "batches": args.batch, "layers": args.layers,
               "implementations": args.impl,
               "variants": args.variants, "size": args.size, "image_size": args.image_size,
               "dims": args.dims, "heads": args.heads, "patch_size": args.patch_size,
               "in_channels": args.in_channels, "dtype": args.dtype, "threads": args.threads,
               "reps": args.reps, "warmup": args.warmup, "rounds": args.rounds,
               "max_case_seconds": args.max_case_seconds}
    fields.update({k: (tuple(v) if isinstance(v, list) else v)
                   for k, v in options.items() if v is not None})
    if args.reps is not None:  # an explicit small --reps also lowers the floor
        fields["min_reps"] = min(BenchSpec.min_reps, max(3, args.reps))
    return BenchSpec(**fields), preset


def run(args: argparse.Namespace) -> int:
    """`duat bench`. Input it refuses (options, folders, an unknown --compare run, nothing
    left to time) raises, and duat.cli.main reports it in one line with status 2."""
    if args.preset in DECODE_PRESETS:
        return run_decode_command(args)
    for name in DECODE_ONLY:
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')} applies to the decode presets only "
                             f"(--preset {' or '.join(DECODE_PRESETS)})")
    if args.impl and across_ranks.NAME in args.impl:
        if len(args.impl) > 1 or args.compare or args.variants or args.dims:
            raise ValueError(f"{across_ranks.NAME} is timed on its own (no other --impl, "
                             f"--variants, --dims or --compare)")
        args.impl = ["pf-batched"]  # the spec's model; the layers are the widths n
        spec, preset = spec_from_args(args)
        return across_ranks.run(args, spec, preset)
    reference = load_benchmark(args.compare) if args.compare else None
    spec, preset = spec_from_args(args)
    device = resolve_device(spec)
    check_memory(spec, device, spec.implementations)  # a batch too large: refused before anything
    folder = None
    if not args.no_save:  # refuse a used folder now, not after minutes of timing
        now = datetime.datetime.now(datetime.timezone.utc)
        name = args.name or (f"{device.type}-quick-{now:%Y-%m-%d-%H%M%S}" if preset == "quick"
                             else f"{device.type}-{now:%Y-%m-%d}" if preset == "full"
                             else f"{device.type}-{preset}-{now:%Y-%m-%d}")
        parent = Path(args.out) if args.out is not None else output_dir(BENCH_FOLDER)
        folder = prepare_output_dir(parent / name, overwrite=args.overwrite)
    dims = [D for D, _ in spec.widths()]
    print(f"duat bench ({preset}): D {dims}, batch {list(spec.batches)}, L {list(spec.layers)}, "
          f"{', '.join(spec.implementations)}; {spec.size}, {spec.image_size}x{spec.image_size} "
          f"images, {spec.dtype} on {device}", file=sys.stderr)
    # only timm asked for and timm missing, or no variant could be built: a ValueError
    results = run_benchmark(spec, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    results["preset"] = preset
    print(format_table(results))
    if is_regime(results):
        print(format_regime(results))
    print(format_targets(check_targets(results)))
    if folder is not None:
        for path in save_benchmark(results, folder, overwrite=True):  # the folder checked above
            print(f"wrote {path}")
    if reference is not None:
        rows = compare_runs(results, reference)
        print(format_comparison(rows, args.compare))
        if not rows or sum(r["within_spread"] for r in rows) < 0.8 * len(rows):
            return 1
    return 0


# ----------------------------------------------------------------------------- decode

DECODE_ONLY = ("new_tokens", "prompt_tokens", "peer_layers")
NOT_DECODE = ("impl", "compare", "size", "patch_size", "image_size", "in_channels")


def decode_spec_from_args(args: argparse.Namespace) -> tuple[DecodeSpec, str]:
    """The DecodeSpec a decode preset and the options ask for, and the preset's name."""
    preset = args.preset
    for name in NOT_DECODE:
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --preset {preset}")
    fields = dict(DECODE_PRESETS[preset])
    options = {"device": args.device, "batches": args.batch, "layers": args.layers,
               "dims": args.dims, "variants": args.variants, "heads": args.heads,
               "dtype": args.dtype, "threads": args.threads, "reps": args.reps,
               "warmup": args.warmup, "rounds": args.rounds,
               "max_case_seconds": args.max_case_seconds, "new_tokens": args.new_tokens,
               "prompt_tokens": args.prompt_tokens, "peer_layers": args.peer_layers}
    fields.update({k: (tuple(v) if isinstance(v, list) else v)
                   for k, v in options.items() if v is not None})
    if args.reps is not None:  # an explicit small --reps also lowers the floor
        fields["min_reps"] = max(1, min(fields.get("min_reps", DecodeSpec.min_reps), args.reps))
    return DecodeSpec(**fields), preset


def run_decode_command(args: argparse.Namespace) -> int:
    """`duat bench --preset decode` (or decode-gpu): time, print, save."""
    spec, preset = decode_spec_from_args(args)
    device = resolve_decode_device(spec)      # graph on a CPU, an absent device: refused
    check_decode_memory(spec, device)         # too many or too wide models: refused
    folder = None
    if not args.no_save:  # refuse a used folder now, not after minutes of timing
        now = datetime.datetime.now(datetime.timezone.utc)
        parent = Path(args.out) if args.out is not None else output_dir(BENCH_FOLDER)
        folder = prepare_output_dir(parent / (args.name or f"{device.type}-{preset}-{now:%Y-%m-%d}"),
                                    overwrite=args.overwrite)
    print(f"duat bench ({preset}): D {list(spec.dims)}, batch {list(spec.batches)}, n "
          f"{list(spec.layers)}, HF GPT-2 at n {list(spec.peer_layers) or 'none'}, "
          f"{', '.join(spec.variants)}; prompt {spec.prompt_tokens}, {spec.new_tokens} new tokens, "
          f"vocabulary {spec.vocab_size}, {spec.dtype} on {device}", file=sys.stderr)
    results = run_decode(spec, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    results["preset"] = preset
    print(format_decode_table(results))
    for variant in spec.variants:
        if any(r["variant"] == variant for r in results["records"]):
            print(format_decode_maps(results, variant))
            print(format_decode_targets(check_decode_targets(results, variant)))
    print(f"wall time {results['wall_s']:.0f} s")
    if folder is not None:
        for path in save_decode_results(results, folder, overwrite=True):  # the folder checked above
            print(f"wrote {path}")
    return 0
