"""`duat reproduce finetune`: does a pre-trained serial ViT help Para-Former when data is
limited? docs/method.md section 5, claim 4. Its plots and tables are in
duat.experiments.plots, what it shares with the sweeps in duat.experiments.runs.

The experiment, for each target dataset:

1. A source: a serial ViT-L with trained weights. Quick profile (offline, CPU, minutes):
   a ViT-4 (tiny) trained here on the digits 0-4 (the bundled data). Full profile:
   torchvision's ImageNet ViT-B/16 ("ViT_B_16_Weights.IMAGENET1K_V1"; see duat.transfer
   for the three ways weights can be supplied).
2. What carries over, before any fine-tuning: each Para-Former-m-n layout (m * n = L) is
   filled with the source's blocks (duat.transfer) and keeps its head. We measure its
   accuracy on the source task (quick profile: the digits 0-4 test set), how often its
   prediction agrees with the serial source's on the target test images, and the cosine
   similarity of its pooled features to the source's. Then, where the source task is at
   hand, the same model after `carry_steps` steps of training on the source task, next to
   the same architecture trained from scratch for those steps: how much of what was lost
   comes back at once.
3. The limited-data target task (quick: the digits 5-9; full: CIFAR-10 / CIFAR-100) with
   k examples per class. For every layout, k and seed, two runs of the same architecture:
   "pretrained" (the transferred blocks, a new head trained alone for head_steps, then
   everything for `steps`) and "scratch" (random initialisation, head_steps + steps steps
   of training: the same number of updates, the same optimiser and peak learning rate;
   neither is tuned separately). The seed chooses the k examples, the new
   head / the random initialisation and the batch order; the source is trained once.
   Reported: test accuracy (mean, std over seeds), the accuracy after the head-only phase
   ("probe": what the frozen transferred features give), and the paired gain
   pretrained - scratch (same seed, same examples).

Quick profile: k = 5, 10, 20, layouts vit-4 / pf-2-2 / pf-1-4, 5 seeds, one CPU thread:
90 fine-tuning runs, a few minutes on a laptop CPU, fully offline.

    run_finetune("quick")        # into finetune/ of duat.locations.output_dir(): results.json,
                                 # results.csv (summary), runs.csv, finetune_curves.png,
                                 # carry_over.png; load_results("finetune") of
                                 # duat.experiments reads the committed ones
    duat reproduce finetune --quick          # the same from the command line
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from duat.checks import whole, wholes
from duat.convert import ASSIGNMENTS
from duat.data import dataset_info, load_data
from duat.experiments.plots import (format_carry_over, format_table, layout_order, plot_carry_over,
                                    plot_curves)
from duat.experiments.runs import (Experiment, default_output_dir as experiment_dir, kept_on_stop,
                                   spec_for, stats, stderr)
from duat.paraformer import ParaFormer
from duat.registry import create_model, parse_name
from duat.runtime import environment_info, seed_everything, select_device
from duat.runtime import threads as using_threads
from duat.storage import (UnreadableFileError, atomic_torch_save, finish_partial,
                          load_state_dict_checked, load_tensors, open_run_dir, save_partial)
from duat.training.engine import TrainConfig, evaluate, fit
from duat.training.tuning import fine_tune, paraformer_in, steps_to_epochs, train_head
from duat.transfer import ResizeInput, load_source, plan, transfer

EXPERIMENT = "finetune"
INITS = ("pretrained", "scratch")
RESULT_KEYS = ("profile", "spec", "summary", "runs", "carry_over")  # what the tables and plots read


@dataclass
class FinetuneSpec:
    profile: str = "quick"
    # -- the source: "pretrain" trains source_model here; anything else goes to
    #    duat.transfer.load_source (named torchvision weights, a state-dict file, a checkpoint)
    source: str = "pretrain"
    source_arch: str | None = None            # architecture of a plain state-dict file
    source_model: str = "vit-4"               # serial model trained by "pretrain"
    source_size: str = "tiny"
    source_dataset: str = "digits"
    source_classes: tuple = (0, 1, 2, 3, 4)
    source_epochs: int = 20
    source_lr: float = 2e-3
    source_batch_size: int = 32
    source_seed: int = 0
    # -- the limited-data target task
    targets: tuple = ("digits",)              # target datasets
    target_classes: tuple | None = (5, 6, 7, 8, 9)   # None: all classes of the dataset
    per_class: tuple = (5, 10, 20)            # training examples per class
    image_size: int | None = None             # None: the dataset's; else resized (pos. embedding interpolated)
    layouts: tuple = ("vit-4", "pf-2-2", "pf-1-4")   # each with m * n = L of the source
    assignment: str = "stage-major"           # where the blocks go (duat.convert)
    select: str | None = None                 # which blocks when m * n < L: first / last / spread
    carry_steps: int = 40                     # source-task steps after the conversion (0: none)
    seeds: tuple = (0, 1, 2)
    steps: int = 120                          # optimisation steps of the whole model
    head_steps: int = 20                      # head-only steps first (pretrained); scratch gets them too
    batch_size: int = 16
    lr: float = 3e-3                          # peak AdamW learning rate (both inits; the kit's
                                              # quick from-scratch rate, duat.experiments)
    head_lr: float = 5e-3                     # learning rate of the head-only phase
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1              # of the epochs, linear warm-up
    device: str = "auto"
    threads: int | None = None                # torch CPU threads (None: torch's default)
    data_root: str | None = None
    download: bool = True                     # fetch missing torchvision datasets

    def __post_init__(self):
        for name in ("source_classes", "targets", "per_class", "layouts", "seeds"):
            value = getattr(self, name)
            if isinstance(value, (str, int)) or not len(value):
                raise ValueError(f"{name} must be a non-empty sequence, got {value!r}")
            setattr(self, name, tuple(value))
        if self.target_classes is not None:
            self.target_classes = tuple(self.target_classes)
        for name in ("steps", "batch_size", "source_epochs", "source_batch_size"):
            whole(name, getattr(self, name))
        for name in ("head_steps", "carry_steps"):
            whole(name, getattr(self, name), minimum=0)
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.per_class):
            raise ValueError(f"per_class values must be positive ints, got {self.per_class!r}")
        self.seeds = wholes("seeds", self.seeds, minimum=0)
        L = parse_name(self.source_model)[0]  # a serial ViT-L (checked when it is built)
        for name in self.layouts:
            m, n = parse_name(name)
            if self.source == "pretrain":  # its depth is known: refuse a misfit before training
                plan(L, m, n, self.assignment, select=self.select)


PROFILES: dict[str, dict] = {
    # offline, CPU: a ViT-4 pre-trained on digits 0-4, fine-tuned on digits 5-9
    "quick": dict(threads=1, device="cpu", seeds=(0, 1, 2, 3, 4)),
    # GPU: torchvision's ImageNet ViT-B/16 on CIFAR-10 / CIFAR-100 at 112x112 (7x7 patches)
    "full": dict(source="ViT_B_16_Weights.IMAGENET1K_V1", targets=("cifar10", "cifar100"),
                 carry_steps=0,
                 target_classes=None, per_class=(5, 10, 25), image_size=112,
                 layouts=("vit-12", "pf-6-2", "pf-3-4", "pf-1-12"), steps=300, head_steps=50,
                 batch_size=32, lr=1e-4, head_lr=1e-3),
}


def make_spec(profile: str = "quick", **overrides) -> FinetuneSpec:
    """The spec of a profile, with any FinetuneSpec field overridden (None: keep)."""
    return spec_for(FinetuneSpec, PROFILES, profile, overrides)


# ----------------------------------------------------------------------------- the source

def _train_config(spec: FinetuneSpec, epochs: int, lr: float, seed: int, warmup: bool = True):
    return TrainConfig(epochs=epochs, lr=lr, weight_decay=spec.weight_decay, seed=seed,
                       warmup_epochs=spec.warmup_fraction * epochs if warmup else 0.0,
                       device=spec.device, checkpoint_every=epochs)


def get_source(spec: FinetuneSpec, progress: bool = False, trained: dict | None = None):
    """(the serial source as a ParaFormer in eval mode, the source task's splits or None,
    a record of what it is). `trained`: a pre-trained source's state dict and record from an
    interrupted run (the resume path), loaded instead of training again."""
    t0 = time.perf_counter()
    if spec.source != "pretrain":
        model = load_source(spec.source, arch=spec.source_arch, progress=progress).eval()
        c = model.config
        return model, None, {"kind": "weights", "name": spec.source, "layers": c.layers,
                             "dim": c.dim, "image_size": c.image_size, "patch_size": c.patch_size,
                             "num_classes": c.num_classes, "seconds": time.perf_counter() - t0}
    splits = load_data(spec.source_dataset, classes=spec.source_classes, seed=spec.source_seed,
                       root=spec.data_root, download=spec.download)
    train, _, test = splits.loaders(batch_size=spec.source_batch_size, seed=spec.source_seed)
    seed_everything(spec.source_seed)
    model = create_model(spec.source_model, size=spec.source_size, **splits.model_kwargs())
    if model.config.width != 1:
        raise ValueError(f"the source must be a serial ViT ('vit-L'), got {spec.source_model!r}")
    if trained is not None:
        load_state_dict_checked(model, trained["state_dict"])  # a misfit: one-line ValueError
        return model.cpu().eval(), splits, trained["info"]
    config = _train_config(spec, spec.source_epochs, spec.source_lr, spec.source_seed)
    fit(model, train, None, config, progress=False)
    model.cpu().eval()
    acc = evaluate(model, test)["accuracy"]
    if progress:
        print(f"source {spec.source_model} on {spec.source_dataset} classes "
              f"{list(spec.source_classes)}: test accuracy {acc:.3f}", flush=True)
    return model, splits, {"kind": "pretrain", "name": spec.source_model, "size": spec.source_size,
                           "dataset": spec.source_dataset, "classes": list(spec.source_classes),
                           "train_size": len(splits.train), "epochs": spec.source_epochs,
                           "layers": model.config.layers, "dim": model.config.dim,
                           "test_acc": acc, "seconds": time.perf_counter() - t0}


def _wrap(model, image_size: int, data_size: int):
    return model if image_size == data_size else ResizeInput(model, image_size)


def _target_shape(spec: FinetuneSpec, source, dataset: str) -> tuple[int, int, int]:
    """(image size the models see, the dataset's own image size, channels)."""
    info = dataset_info(dataset)
    size = spec.image_size or info.image_size
    if size % source.config.patch_size:
        raise ValueError(f"image size {size} of {dataset!r} is not divisible by the source's patch "
                         f"size {source.config.patch_size}: set image_size to a multiple of it")
    return size, info.image_size, info.in_channels


# ----------------------------------------------------------------------------- carry-over

def _pooled_and_logits(model, loader):
    """(pooled features (N, D), logits (N, K)) of a ParaFormer (or ResizeInput) over a loader."""
    pf = paraformer_in(model)
    device = next(pf.parameters()).device
    feats, logits = [], []
    with torch.no_grad():
        for x, _ in loader:
            x = x.to(device)
            if isinstance(model, ResizeInput):
                x = torch.nn.functional.interpolate(x, size=(model.image_size,) * 2,
                                                    mode="bilinear", align_corners=False)
            f = pf.pool(pf.forward_features(x))                          # (B, D)
            feats.append(f.float().cpu())
            logits.append(pf.head(f).float().cpu())
    return torch.cat(feats), torch.cat(logits)


def carry_over(source, spec: FinetuneSpec, dataset: str, source_splits=None) -> list[dict]:
    """Before any fine-tuning: every layout (and both assignments where they differ) filled
    with the source's blocks, the source head kept. Per row: source-task accuracy (if the
    source task is at hand), agreement of predictions with the serial source and cosine
    similarity of pooled features on the target test images; then, with carry_steps > 0 and
    the source task at hand, source-task accuracy after carry_steps steps of training on it
    ("source_acc_after"), next to the same architecture trained from scratch for as many
    steps ("source_scratch_after")."""
    size, data_size, channels = _target_shape(spec, source, dataset)
    device = select_device(spec.device)
    target_test = load_data(dataset, classes=spec.target_classes, seed=0, root=spec.data_root,
                            download=spec.download).loaders(batch_size=256)[2]
    L = source.config.layers
    serial = transfer(source, image_size=size, in_channels=channels).to(device).eval()
    ref_feats, ref_logits = _pooled_and_logits(_wrap(serial, size, data_size), target_test)
    src_train = src_test = None
    if source_splits is not None:
        src_train, _, src_test = source_splits.loaders(batch_size=spec.source_batch_size,
                                                       seed=spec.source_seed)
    rows, seen = [], set()
    for layout in spec.layouts:
        m, n = parse_name(layout)
        for assignment in ASSIGNMENTS:
            placement = plan(L, m, n, assignment, spec.select)
            key = (m, n, str(placement))
            if key in seen:
                continue
            seen.add(key)
            row = {"dataset": dataset, "layout": layout, "depth": m, "width": n,
                   "assignment": assignment, "placement": placement, "source_acc": None,
                   "source_acc_after": None, "source_scratch_after": None}
            if src_test is not None:        # on the source task, with the source's head
                model = transfer(source, (m, n), assignment=assignment,
                                 select=spec.select).to(device).eval()
                row["source_acc"] = evaluate(model, src_test)["accuracy"]
                if spec.carry_steps:
                    epochs = steps_to_epochs(spec.carry_steps, len(src_train))
                    config = _train_config(spec, epochs, spec.lr, spec.source_seed)
                    fit(model, src_train, None, config, progress=False)
                    row["source_acc_after"] = evaluate(model, src_test)["accuracy"]
                    seed_everything(spec.source_seed)
                    scratch = ParaFormer(model.config)
                    fit(scratch, src_train, None, config, progress=False)
                    row["source_scratch_after"] = evaluate(scratch, src_test)["accuracy"]
            moved = transfer(source, (m, n), assignment=assignment, select=spec.select,
                             image_size=size, in_channels=channels).to(device).eval()
            feats, logits = _pooled_and_logits(_wrap(moved, size, data_size), target_test)
            row["agreement"] = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
            row["feature_cosine"] = torch.nn.functional.cosine_similarity(
                feats, ref_feats, dim=1).mean().item()
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- one run

def finetune_run(source, spec: FinetuneSpec, splits, layout: str, init: str, seed: int) -> dict:
    """Train one model on the target splits; its record (test accuracy and how it got there)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    m, n = parse_name(layout)
    size, data_size, channels = _target_shape(spec, source, splits.info.name)
    train, _, test = splits.loaders(batch_size=spec.batch_size, seed=seed)
    per_epoch = len(train)
    seed_everything(seed)
    model = transfer(source, (m, n), assignment=spec.assignment, select=spec.select,
                     image_size=size, in_channels=channels, num_classes=splits.info.num_classes,
                     new_head=True)
    if init == "scratch":                           # the same architecture, random weights
        seed_everything(seed)
        model = ParaFormer(copy.deepcopy(model.config))
    model = _wrap(model, size, data_size)
    t0 = time.perf_counter()
    head_acc = None
    body_epochs = steps_to_epochs(spec.steps, per_epoch)
    head_epochs = steps_to_epochs(spec.head_steps, per_epoch) if spec.head_steps else 0
    if init == "pretrained":
        steps = 0
        if head_epochs:       # the new head alone on the frozen transferred body: a probe
            steps += train_head(model, train, None,
                                _train_config(spec, head_epochs, spec.head_lr, seed)).step
            head_acc = evaluate(model, test)["accuracy"]
        result = fine_tune(model, train, None, _train_config(spec, body_epochs, spec.lr, seed))
        steps += result["body"].step
    else:
        epochs = body_epochs + head_epochs
        steps = fit(model, train, None, _train_config(spec, epochs, spec.lr, seed), progress=False).step
    test_eval = evaluate(model, test)
    return {"dataset": splits.info.name, "layout": layout, "depth": m, "width": n,
            "per_class": splits.config["per_class"], "train_size": len(splits.train),
            "seed": seed, "init": init, "test_acc": test_eval["accuracy"],
            "test_loss": test_eval["loss"], "head_acc": head_acc, "steps": steps,
            "train_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------- the grid

def _run_key(dataset: str, k: int, seed: int, layout: str, init: str) -> str:
    return f"{dataset}|{k}|{seed}|{layout}|{init}"


def run_grid(source, spec: FinetuneSpec, dataset: str, progress: bool = False,
             done: dict[str, dict] | None = None, on_record=None) -> list[dict]:
    """Every (samples per class, seed, layout, init) run on one target dataset. `done`: records
    of runs already made (by run key), reused instead of trained; `on_record(key, record)` is
    called after each new run."""
    done = done or {}
    records = []
    for k in spec.per_class:
        for seed in spec.seeds:
            keys = [_run_key(dataset, k, seed, layout, init)
                    for layout in spec.layouts for init in INITS]
            if all(key in done for key in keys):
                records += [done[key] for key in keys]
                continue
            splits = load_data(dataset, classes=spec.target_classes, per_class=k, seed=seed,
                               root=spec.data_root, download=spec.download)
            for layout in spec.layouts:
                for init in INITS:
                    key = _run_key(dataset, k, seed, layout, init)
                    if key in done:
                        records.append(done[key])
                        continue
                    r = finetune_run(source, spec, splits, layout, init, seed)
                    records.append(r)
                    if on_record is not None:
                        on_record(key, r)
                    if progress:
                        probe = f" (head only {r['head_acc']:.3f})" if r["head_acc"] is not None else ""
                        print(f"{dataset} k={k:<3} seed={seed} {layout:<8} {init:<10} "
                              f"test acc {r['test_acc']:.3f}{probe}  {r['train_s']:.1f}s", flush=True)
    return records


def paired_summary(records: list[dict]) -> list[dict]:
    """One row per (dataset, layout, per_class): test accuracy of both inits over seeds
    (mean, sample std, min, max), the head-only probe, and the gain pretrained - scratch
    paired by seed."""
    keys = sorted({(r["dataset"], r["layout"], r["per_class"]) for r in records},
                  key=lambda t: (t[0], layout_order(t[1]), t[2]))
    rows = []
    for dataset, layout, k in keys:
        group = [r for r in records if (r["dataset"], r["layout"], r["per_class"]) == (dataset, layout, k)]
        by_init = {i: {r["seed"]: r for r in group if r["init"] == i} for i in INITS}
        row = {"dataset": dataset, "layout": layout, "per_class": k,
               "train_size": group[0]["train_size"]}
        for init in INITS:
            s = stats([r["test_acc"] for r in by_init[init].values()]) if by_init[init] else None
            for stat in ("mean", "std", "min", "max", "n"):
                row[f"{init}_{stat}"] = None if s is None else s[stat]
        probes = [r["head_acc"] for r in by_init["pretrained"].values() if r["head_acc"] is not None]
        row["probe_mean"] = stats(probes)["mean"] if probes else None
        row["probe_std"] = stats(probes)["std"] if probes else None
        paired = [by_init["pretrained"][s]["test_acc"] - by_init["scratch"][s]["test_acc"]
                  for s in by_init["pretrained"] if s in by_init["scratch"]]
        g = stats(paired) if paired else None
        row["gain_mean"] = None if g is None else g["mean"]
        row["gain_std"] = None if g is None else g["std"]
        row["gain_wins"] = sum(d > 0 for d in paired)            # seeds where pretrained is better
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the experiment

def default_output_dir(profile: str) -> Path:
    """Where a new run is written by default: finetune/ (quick) or finetune-full/ of
    duat.locations.output_dir() (duat/results/ in a checkout, ./results/ when installed)."""
    return experiment_dir(EXPERIMENT, profile)


PARTIAL_SOURCE = "partial_source.pt"  # an unfinished run's pre-trained source: a resume reuses it


def _load_partial_source(path: Path) -> dict:
    """{"state_dict": tensors, "info": plain data} as run_finetune keeps it (no pickle runs)."""
    what = ("finetune source (the one an interrupted `duat reproduce finetune` keeps; "
            "--overwrite starts afresh)")
    trained = load_tensors(path, what)
    if not (isinstance(trained, dict) and isinstance(trained.get("state_dict"), dict)
            and isinstance(trained.get("info"), dict)):
        raise UnreadableFileError(f"{path} is not a readable {what}: it lacks its state_dict or info")
    return trained


def run_finetune(profile: str = "quick", *, out: str | Path | None = None, overwrite: bool = False,
                 resume: bool = False, progress: bool = True, **overrides) -> dict:
    """Run the experiment and write results.json, results.csv (the summary), runs.csv (every
    run), finetune_curves.png and carry_over.png into `out` (default: default_output_dir, i.e.
    finetune/ for the quick profile, finetune-full/ for the full one; an earlier run's folder is
    refused unless overwrite=True). `overrides`: any FinetuneSpec field. Returns the results.

    The runs made so far are kept in `<out>/partial.json` after every run (and a pre-trained
    source in partial_source.pt); `resume=True` (CLI: --resume) continues an interrupted run."""
    if overrides.get("seeds") is not None:
        overrides["seeds"] = tuple(overrides["seeds"])
    spec = make_spec(profile, **overrides)
    identity = {"experiment": EXPERIMENT, "spec": asdict(spec)}
    out_dir, saved = open_run_dir(default_output_dir(spec.profile) if out is None else out,
                                  identity, overwrite=overwrite, resume=resume,
                                  keys=("done", "carry_over"))  # before any work
    done, saved_carry, trained = {}, None, None     # done: run key -> record
    if saved is not None:
        done, saved_carry = saved["done"], saved["carry_over"]
        if (out_dir / PARTIAL_SOURCE).is_file():
            trained = _load_partial_source(out_dir / PARTIAL_SOURCE)
    t0 = time.perf_counter()
    kept = lambda: str(len(done)) if done else None  # noqa: E731
    with using_threads(spec.threads or None), \
            kept_on_stop(EXPERIMENT, out_dir, kept, stderr if progress else None):
        source, source_splits, source_info = get_source(spec, progress=progress, trained=trained)
        if source_info["kind"] == "pretrain" and trained is None:  # the same source on resume
            info = json.loads(json.dumps(source_info, default=str))  # plain data, as results.json
            atomic_torch_save({"state_dict": source.state_dict(), "info": info},
                              out_dir / PARTIAL_SOURCE)
        if saved_carry is not None:
            carry = saved_carry
        else:
            carry = [row for dataset in spec.targets
                     for row in carry_over(source, spec, dataset, source_splits)]

        def keep(key, record):  # after every run: the run so far, safe on disk
            done[key] = record
            save_partial(out_dir, identity, carry_over=carry, done=done)

        if done and progress:
            print(f"resuming: {len(done)} runs already done", flush=True)
        runs = []
        for dataset in spec.targets:
            if progress:
                print(format_carry_over([r for r in carry if r["dataset"] == dataset]), flush=True)
            runs += run_grid(source, spec, dataset, progress=progress, done=done, on_record=keep)
        environment = environment_info()                      # with the threads used
    summary = paired_summary(runs)
    results = {"experiment": EXPERIMENT, "profile": spec.profile, "spec": asdict(spec),
               "source": source_info, "carry_over": carry, "summary": summary, "runs": runs,
               "wall_time_s": time.perf_counter() - t0, "environment": environment}
    FINETUNE.write(results, out_dir)
    finish_partial(out_dir, PARTIAL_SOURCE)  # complete: results.json holds it all
    results["out"] = str(out_dir)
    return results


def _tables(results: dict) -> dict:
    """results.csv (the summary) and runs.csv (floats to 6 significant digits)."""
    return {"results.csv": results["summary"], "runs.csv": results["runs"]}


FINETUNE = Experiment(
    EXPERIMENT, "Pre-trained serial ViT into Para-Former-m-n vs scratch, limited data "
    "(duat.experiments.finetune)", run_finetune, _tables,
    {"finetune_curves.png": plot_curves, "carry_over.png": plot_carry_over}, RESULT_KEYS,
    lambda results: format_table(results["summary"]), float_format=".6g")
