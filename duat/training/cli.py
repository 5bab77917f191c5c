"""`duat train`: train a named model on a dataset, with checkpoints and resume.

    duat train --model pf-1-8 --dataset digits --epochs 20
    duat train --model vit-4 --dataset digits --fraction 0.25 --out runs/vit4-quarter
    duat train --model vit-4 --dataset digits --fraction 0.25 --out runs/vit4-quarter --epochs 40 --resume
    duat train --model pf-1-8 --schedule progressive     # or branchwise (duat.training.schedules)
    duat train --model gpt-2 --task induction --length 32 --pairs 8   # a causal language model
    duat train --model pf-1-2 --task text --length 64   # characters of Python's own docs
    duat train --model pf-1-2 --text notes.txt --length 64   # ... or of any UTF-8 file
    torchrun --nproc-per-node 2 -m duat train --model pf-1-8   # data parallel (DDP), 2 processes

A run writes into its folder (default runs/<model>-<dataset>-seed<seed>): checkpoint.pt
(after every epoch, atomically), history.csv (loss / accuracy / throughput per epoch),
results.json (config, seed, device, versions, wall time, test accuracy) and curves.png.
With --task (or --text) the model is a causal ParaFormerLM (duat.language) trained on a
sequence task of duat.tasks, scored at the task's scored positions; for text the results
also hold bits per character and a sample from duat.language.generate.
A folder that holds an earlier run is never overwritten unless --overwrite is given;
--resume continues the run in it. Bad input exits with status 2 and says what was
expected; Ctrl-C keeps the last checkpoint, writes the history so far and exits 130.
docs/method.md section 5.

Under torchrun every process trains the whole model on its rows of each global batch
(--batch-size stays the global batch) and DDP averages the gradients: gloo on a CPU,
NCCL with one GPU per process. Only rank 0 writes the run's files and prints; a process
that dies or hangs ends the others with one `error:` line (duat.distributed.process).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from duat.data import DataSplits, dataset_info, load_data
from duat.language import generate
from duat.distributed.process import Context, launched, run_in_group
from duat.registry import create_model, model_config
from duat.runtime import environment_info, seed_everything, select_device
from duat.tasks import TASKS, load_task
from duat.storage import atomic_write_json, prepare_output_dir, write_csv, write_figure
from duat.training.engine import TrainConfig, evaluate, fit, load_checkpoint
from duat.training.schedules import SCHEDULES, Schedule
from duat.training.live import plot_history


def add_arguments(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("model")
    m.add_argument("--model", default="pf-1-8", help="'vit-L' or 'pf-m-n' (default pf-1-8)")
    m.add_argument("--size", default="tiny", help="tiny | small | base (default tiny)")
    m.add_argument("--patch-size", type=int, default=None, help="patch size (default: from the image size)")
    m.add_argument("--dropout", type=float, default=None, help="dropout rate (default 0)")
    d = parser.add_argument_group("data")
    d.add_argument("--dataset", default="digits",
                   help="digits (bundled, offline) | mnist | fashion-mnist | cifar10 | cifar100")
    d.add_argument("--data-root", default=None, help="dataset cache folder (default $DUAT_DATA or data/)")
    d.add_argument("--no-download", action="store_true", help="never download missing files")
    d.add_argument("--fraction", type=float, default=None, help="train on this share (0, 1] of the training set")
    d.add_argument("--per-class", type=int, default=None, help="train on this many examples per class")
    d.add_argument("--num-classes", type=int, default=None, help="keep this many classes (chosen by the seed)")
    lang = parser.add_argument_group("language (a causal model: 'gpt-L' or 'pf-m-n')")
    lang.add_argument("--task", choices=TASKS, default=None,
                      help="a sequence task instead of images: induction | mqar | copy | text")
    lang.add_argument("--text", default=None, metavar="FILE",
                      help="a UTF-8 text file for --task text (default: Python's own documentation)")
    lang.add_argument("--length", type=int, default=32, help="tokens per sequence (default 32)")
    lang.add_argument("--vocab-size", type=int, default=32, help="synthetic tasks' vocabulary (default 32)")
    lang.add_argument("--pairs", type=int, default=4, help="induction / mqar: patterns per sequence")
    lang.add_argument("--offset", type=int, default=2, help="copy: how far back")
    lang.add_argument("--train-sequences", type=int, default=20000,
                      help="training sequences (text: random windows), default 20000")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--schedule", default="joint", choices=SCHEDULES,
                   help="joint (every step on the whole model, default); progressive (every batch: "
                        "one step per prefix k = 1..n, then a whole-model pass); branchwise (one "
                        "phase per branch, the others held fixed). Every epoch records each prefix's "
                        "validation loss and accuracy")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    t.add_argument("--min-lr", type=float, default=0.0, help="end of the cosine decay")
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--weight-decay", type=float, default=0.05)
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm; 0 turns clipping off")
    t.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", default=None, help="run folder (default runs/<model>-<dataset>-seed<seed>)")
    o.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    o.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`duat train` (bad input raises; duat.cli reports it with status 2). Under torchrun:
    data parallel over the launched processes."""
    if not launched():
        return _train(args, None)
    return run_in_group(args.device, lambda ctx: _train(args, ctx))


def _data(args: argparse.Namespace):
    """(what the run trains on, by name; its splits, loaded; the model's keyword arguments).
    Checks the model name against the data before anything is written."""
    overrides = {k: v for k, v in (("patch_size", args.patch_size), ("dropout", args.dropout))
                 if v is not None}
    if args.text is not None and args.task not in (None, "text"):
        raise ValueError(f"--text is the corpus of --task text, not of --task {args.task}")
    task = "text" if args.text is not None else args.task
    if task is None:
        info = dataset_info(args.dataset)
        model_config(args.model, args.size, image_size=info.image_size,
                     in_channels=info.in_channels, **overrides)      # unknown name -> ValueError
        return info.name, lambda: load_data(
            info.name, root=args.data_root, download=not args.no_download, fraction=args.fraction,
            per_class=args.per_class, num_classes=args.num_classes, seed=args.seed), overrides
    if "patch_size" in overrides:
        raise ValueError("--patch-size is for images; a language model reads tokens")
    model_config(args.model, args.size, language=True, **overrides)   # 'vit-L' -> ValueError
    return task, lambda: load_task(
        task, length=args.length, seed=args.seed, vocab_size=args.vocab_size, pairs=args.pairs,
        offset=args.offset, text=args.text, train_sequences=args.train_sequences), \
        dict(overrides, language=True)


def _train(args: argparse.Namespace, ctx: Context | None) -> int:
    # 1. Check everything that can be checked before touching any file.
    data_name, load, overrides = _data(args)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, min_lr=args.min_lr,
                         warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay,
                         label_smoothing=args.label_smoothing,
                         grad_clip=args.grad_clip if args.grad_clip > 0 else None,
                         amp=not args.no_amp, seed=args.seed,
                         device=str(ctx.device) if ctx else args.device)
    device = ctx.device if ctx else select_device(args.device)
    main = ctx is None or ctx.main
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/{args.model}-{data_name}-seed{args.seed}")
    ckpt = out / "checkpoint.pt"
    if args.resume and args.overwrite:
        raise ValueError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if args.resume and not ckpt.is_file():
        raise FileNotFoundError(f"nothing to resume: no checkpoint at {ckpt}")

    splits = load()
    seed_everything(args.seed)
    model = create_model(args.model, args.size, **splits.model_kwargs(), **overrides)
    Schedule(args.schedule).check(config.epochs, model.config.width)
    if args.resume:  # refuse another architecture, schedule or data before anything is written
        extra = load_checkpoint(ckpt, model)["extra"]
        saved = extra.get("schedule", "joint")
        if saved != args.schedule:
            raise ValueError(f"the run in {out} was trained with --schedule {saved}; resume it "
                             f"with the same schedule")
        if extra.get("data") is not None and _plain(extra["data"]) != _plain(splits.config):
            raise ValueError(f"the run in {out} was trained on other data ({_describe(extra['data'])}); "
                             f"resume it with the same task or dataset options")
    elif ctx is not None:  # rank 0 checks and makes the folder; a refusal ends every rank
        ctx.agree(lambda: prepare_output_dir(out, overwrite=args.overwrite))
    else:
        prepare_output_dir(out, overwrite=args.overwrite)
    train_loader, val_loader, test_loader = splits.loaders(args.batch_size, seed=args.seed)

    params = sum(p.numel() for p in model.parameters())
    sizes = splits.summary()
    if main:
        print(f"training {args.model} ({params:,} parameters) on {data_name}: "
              f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test, "
              f"{config.epochs} epochs on {device}"
              + (f"; data parallel over {ctx.world} processes ({ctx.backend}), global batch "
                 f"{args.batch_size}" if ctx else ""))
    t0 = time.perf_counter()
    result = fit(model, train_loader, val_loader, config, checkpoint=ckpt, resume=args.resume,
                 progress=not args.no_progress, distributed=ctx,
                 schedule=args.schedule,
                 extra={"model": args.model, "size": args.size, "data": splits.config,
                        "schedule": args.schedule})
    test = evaluate(model, test_loader, label_smoothing=config.label_smoothing, amp=config.amp)

    record = {
        "command": "train", "status": result.status, "model": args.model, "size": args.size,
        "schedule": args.schedule,
        "params": params, "seed": args.seed, "device": str(device),
        "config": {"model": model.config.to_dict() if hasattr(model, "config") else None,
                   "train": asdict(config), "data": splits.config, "batch_size": args.batch_size},
        "epochs_completed": result.epochs_completed, "steps": result.step,
        "wall_time_s": time.perf_counter() - t0,
        "test": {k: test[k] for k in ("loss", "accuracy", "samples")},
        "final": result.history[-1] if result.history else None,
        "history": result.history, "checkpoint": ckpt.name,
        "environment": environment_info(),
        "processes": ctx.world if ctx else 1,
    }
    text = getattr(splits, "corpus", None)
    if text is not None:  # a character model: bits per character, and what it writes
        record["test"]["bits_per_char"] = test["loss"] / math.log(2)
        prompt = splits.test[0][:1, :min(16, args.length - 1)]
        record["sample"] = text.decode(generate(model, prompt, args.length - prompt.shape[1],
                                                temperature=0.8, seed=args.seed)[0])
    if not main:  # rank 0 writes the run's files
        return 130 if result.status == "interrupted" else 0
    atomic_write_json(out / "results.json", record)
    write_csv(out / "history.csv", result.history)
    if result.history:
        write_figure(plot_history(result.history, f"{args.model} on {data_name}"), out / "curves.png")
    unit = "images" if isinstance(splits, DataSplits) else "scored tokens"
    print(f"{result.status} after {result.epochs_completed} epoch(s) in {record['wall_time_s']:.1f} s; "
          f"test accuracy {test['accuracy']:.4f} ({test['samples']} {unit})"
          + (f", {record['test']['bits_per_char']:.3f} bits per character" if text else "")
          + f"; results in {out}/")
    if text is not None:
        print(f"sample: {record['sample']!r}")
    return 130 if result.status == "interrupted" else 0


def _plain(value):
    """`value` as JSON would give it back (tuples as lists): comparable with a stored one."""
    return json.loads(json.dumps(value))


def _describe(data: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in data.items()
                     if k in ("dataset", "task", "text", "length", "fraction", "per_class",
                              "num_classes", "vocab_size", "pairs", "offset"))
