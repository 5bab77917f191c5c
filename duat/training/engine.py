"""The training loop: fit() and evaluate() in plain PyTorch, with checkpoints and resume.

Used by `duat train`, `duat reproduce` (docs/method.md section 5: accuracy against the number
of parallel layers, data scale and diversity), `duat reproduce composition` and the training
notebooks. Any nn.Module mapping images (B, C, H, W) to logits (B, K), or tokens (B, T) to
logits (B, T, V), and any iterable of (x, y) batches will do: the loss and accuracy are
taken at the scored positions (duat.training.evaluation; a language task marks the others
-100), so one loop trains both.

The loop in parts: `fit` sets a run up and walks its epochs; `schedule_steps` yields what an
epoch trains, (pass, x, y, prefix k), from the schedule's plan; `_Loop.epoch` runs those
steps (`_Loop.update`: one optimiser step) and returns the epoch's record; `_Checkpointer`
writes the checkpoint.

One optimisation step, as in nanoGPT:

    lr    = lr_at(step)                           # linear warm-up, then cosine decay
    loss  = cross_entropy(model(x), y, label_smoothing)   # mean over the scored positions
    g     = clip(grad loss, max_norm)             # global gradient-norm clipping
    theta = AdamW(theta, g, lr, weight_decay)     # no decay on biases and norm gains

Mixed precision (bf16, or fp16 with a gradient scaler) is used on CUDA only. After every
epoch a checkpoint is written atomically (temporary file + rename, duat.storage) holding
the model's config and weights, the optimiser state, the step, epoch, seed, RNG states and
the history, so a run resumed from it ends with exactly the weights an uninterrupted run
would have (on CPU, same seed). Ctrl-C ends fit() early but cleanly: the last good
checkpoint stays on disk and the history so far is returned. A `stop_event`
(threading.Event) or a callback returning "stop" ends training before the next batch.

The loop waits for the device only every LOG_EVERY steps (to show the loss and check it
is finite) and at the end of each epoch: the running sums stay on the device, and a
batch event's loss is copied from it only when a callback reads it.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from duat.checks import real, whole
from duat.distributed.process import Context, ShardedLoader
from duat.runtime import seed_everything, select_device
from duat.storage import CHECKPOINT_FORMAT, atomic_torch_save
from duat.training.checkpoints import load_checkpoint, model_config_of, rng_state, set_rng_state
from duat.training.evaluation import (amp_settings, evaluate, hits, predict, prefix_metrics,
                                      scored_loss)
from duat.training.schedules import EpochPlan, FrozenRows, Schedule, frozen_pairs, resolve_schedule

__all__ = ["FitResult", "LOG_EVERY", "TrainConfig", "TrainEvent", "evaluate", "fit", "load_checkpoint",
           "lr_at", "make_optimizer", "predict", "prefix_metrics", "schedule_steps"]

# Steps between two readings of the loss (the progress bar's, and the check that it is
# finite): with the epoch ends, the only times the loop waits for the device.
LOG_EVERY = 10


@dataclass
class TrainConfig:
    epochs: int = 10                 # passes over the training set
    lr: float = 1e-3                 # peak learning rate, reached at the end of warm-up
    min_lr: float = 0.0              # the cosine decay ends here
    warmup_epochs: float = 1.0       # linear warm-up from 0 to lr over this many epochs
    weight_decay: float = 0.05       # AdamW decoupled decay on matrices (not biases, norms)
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.0     # 0: plain cross-entropy
    grad_clip: float | None = 1.0    # max global gradient norm; None: no clipping
    amp: bool = True                 # mixed precision on CUDA (ignored on CPU / MPS)
    seed: int = 0                    # seeds data order, dropout (and init, if the caller seeds first)
    device: str = "auto"             # 'auto' (cuda > mps > cpu), 'cpu', 'cuda', ...
    checkpoint_every: int = 1        # epochs between checkpoints (the last epoch always)

    def __post_init__(self):
        self.epochs = whole("epochs", self.epochs)
        self.checkpoint_every = whole("checkpoint_every", self.checkpoint_every)
        real("lr", self.lr, 0, math.inf, low_open=True, high_open=True)
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr!r}")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        self.seed = whole("seed", self.seed, minimum=0)
        self.betas = tuple(self.betas)


class _ReadOnFirstUse:
    """A dataclass field that may be given a 0-d tensor and reads as its float: the value
    is copied from the device (a sync) only when someone reads it, and then kept."""

    def __set_name__(self, owner, name):
        self.slot = "_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return None  # the field's default
        value = obj.__dict__[self.slot]
        if isinstance(value, torch.Tensor):
            value = obj.__dict__[self.slot] = value.item()
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


@dataclass
class TrainEvent:
    """What a callback sees: kind 'batch' (after every step) or 'epoch' (after every epoch)."""

    kind: str
    epoch: int                       # 1-based epoch this event belongs to
    step: int                        # optimisation steps taken so far
    # the batch's loss ('batch' events): a float, copied from the device when first read,
    # so that a callback that does not read it costs the GPU no sync
    loss: float | None = _ReadOnFirstUse()
    record: dict | None = None       # the epoch's record ('epoch' events)
    history: list = field(default_factory=list)  # every completed epoch's record


@dataclass
class FitResult:
    model: nn.Module
    history: list[dict]              # one record per completed epoch
    status: str                      # 'completed', 'stopped' (event / callback) or 'interrupted' (Ctrl-C)
    epochs_completed: int
    step: int
    checkpoint: Path | None          # the last good checkpoint, if one was written
    wall_time_s: float


Callback = Callable[[TrainEvent], "str | None"]


# ----------------------------------------------------------------------------- schedule

def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Learning rate at a step: linear warm-up to lr, then cosine decay to min_lr."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norm gains are 1-D)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    device = params[0].device
    if device.type in ("cpu", "cuda"):  # one fused kernel per step: same maths, less overhead
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


# ----------------------------------------------------------------------------- training

def fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None,
        config: TrainConfig | None = None, *, checkpoint: str | Path | None = None,
        resume: bool | str | Path = False, callbacks: Sequence[Callback] = (),
        stop_event: threading.Event | None = None, progress: bool = True,
        extra: dict | None = None, schedule: str | Schedule | None = None,
        freeze_rows: Sequence[tuple[nn.Parameter, object]] = (),
        distributed: Context | None = None) -> FitResult:
    """Train `model` on `train_loader`; validate on `val_loader` after every epoch.

    A batch is (x, y): images and labels, or tokens and targets (B, T) with IGNORE where a
    position is not scored (duat.training.evaluation): the same loop trains both.
    checkpoint: file to write after every `config.checkpoint_every` epochs (atomically).
    resume: True (continue from `checkpoint`) or a checkpoint path; the model must be the
        same architecture. Weights, optimiser, step, RNG states and history are restored,
        and training continues up to `config.epochs` epochs in all.
    callbacks: functions called with a TrainEvent after every batch and every epoch;
        returning "stop" ends training (a live plot draws on 'epoch' events).
    stop_event: a threading.Event; once set, training stops before the next batch.
    progress: show a tqdm progress bar (terminal or notebook).
    extra: JSON-friendly facts stored in the checkpoint (model name, data config, ...).
    schedule: None (the plain loop), or "joint", "progressive", "branchwise" for a ParaFormer
        (duat.training.schedules); then every epoch's record also holds prefix_loss_k and
        prefix_acc_k of every prefix model y_k, on the validation data (else the training data).
    freeze_rows: (parameter, index) pairs held exactly as they are (duat.surgery.branch_rows:
        some branches of every stage), on top of what the schedule freezes.
    distributed: a duat.distributed.Context (under torchrun): data parallel training. Every
        rank takes its rows of each global batch of `train_loader` (ShardedLoader), DDP
        averages the gradients, and the weights stay those of one process on the whole
        batch; only rank 0 writes the checkpoint and shows progress.
    Returns a FitResult; Ctrl-C returns one with status 'interrupted' instead of raising.
    """
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ctx = distributed if distributed is not None and distributed.world > 1 else None
    if ctx is not None and not isinstance(train_loader, ShardedLoader):
        train_loader = ShardedLoader(train_loader, ctx.rank, ctx.world)
    if len(train_loader) < 1:  # type: ignore[arg-type]
        raise ValueError("the training loader yields no batches")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resume_path = (checkpoint if resume is True else Path(resume) if resume else None)
    if resume is True and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (or pass the checkpoint path as resume)")

    loop = _Loop(model, train_loader, config, resolve_schedule(schedule, model, config.epochs),
                 freeze_rows, ctx, callbacks, stop_event)
    if resume_path is not None:
        loop.restore(resume_path)
    else:
        seed_everything(config.seed + (ctx.rank if ctx else 0))  # each rank its own dropout
    loop.net = ctx.wrap(model) if ctx else model  # DDP: rank 0's weights broadcast to every rank
    writer = _Checkpointer(checkpoint, loop, extra, write=ctx is None or ctx.main)
    last_saved = checkpoint if (resume_path is not None and checkpoint == resume_path) else None
    status, epochs_done, t_start = "completed", loop.start_epoch, time.perf_counter()
    bar = None
    if progress and (ctx is None or ctx.main):
        bar = loop.bar = tqdm(total=loop.total_steps, initial=loop.start_epoch * loop.per_epoch,
                              unit="step", desc="training", dynamic_ncols=True)
    try:
        for epoch in range(loop.start_epoch, config.epochs):
            t0 = time.perf_counter()
            record = loop.epoch(epoch)
            if record is None:  # a partial epoch: not recorded, not checkpointed
                status = "stopped"
                break
            if val_loader is not None:
                val = evaluate(model, val_loader, loop.device,
                               label_smoothing=config.label_smoothing, amp=config.amp)
                record.update(val_loss=val["loss"], val_acc=val["accuracy"])
            if loop.schedule is not None:  # every prefix k = 1..n, on the validation data if any
                record.update(schedule=loop.schedule.name, phase=loop.phase, updates=loop.updates,
                              **prefix_metrics(model, val_loader if val_loader is not None
                                             else train_loader,
                                             label_smoothing=config.label_smoothing,
                                             amp=config.amp))
            record["epoch_s"] = time.perf_counter() - t0
            loop.history.append(record)
            epochs_done = epoch + 1
            if (epochs_done % config.checkpoint_every == 0) or epochs_done == config.epochs:
                last_saved = writer.save(epochs_done) or last_saved
            if bar is not None:
                post = {"epoch": epochs_done, "loss": f"{record['train_loss']:.3f}"}
                if "val_acc" in record:
                    post["val_acc"] = f"{record['val_acc']:.3f}"
                bar.set_postfix(post)
            if loop.wants_stop(TrainEvent("epoch", epochs_done, loop.step, record=record,
                                          history=loop.history)):
                status = "stopped"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    return FitResult(model=model, history=loop.history, status=status,
                     epochs_completed=epochs_done, step=loop.step, checkpoint=last_saved,
                     wall_time_s=time.perf_counter() - t_start)


def schedule_steps(plan: EpochPlan, loader: Iterable, epoch: int) -> Iterator[tuple[int, Any, Any, int | None]]:
    """What one epoch trains, in order: (pass, x, y, k) for every batch of every pass of the
    plan and every prefix k of that pass (k None: the whole model). The loader is told the
    epoch before each pass, so its order depends on the epoch only."""
    for index, prefixes in enumerate(plan.passes):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, y in loader:
            for k in prefixes:
                yield index, x, y, k


class _Loop:
    """One run's training state (model, optimiser, scaler, step, history) and its two
    actions: one optimiser step (`update`) and one epoch's steps (`epoch`)."""

    def __init__(self, model, loader, config: TrainConfig, schedule: Schedule | None,
                 freeze_rows, ctx: Context | None, callbacks, stop_event):
        self.model = self.net = model
        self.loader, self.config, self.schedule, self.ctx = loader, config, schedule, ctx
        self.freeze_rows, self.callbacks, self.stop_event = list(freeze_rows), callbacks, stop_event
        self.device = select_device(config.device)
        self.use_amp, self.amp_dtype = amp_settings(self.device, config.amp)
        model.to(self.device)
        self.optimizer = make_optimizer(model, config)  # after the move: the state lives on `device`
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.n = model.config.width if schedule is not None else 1
        # positions: batches seen, over every pass of an epoch (progressive makes two)
        self.per_epoch = len(self.plan(0).passes) * len(loader)
        self.total_steps = config.epochs * self.per_epoch
        self.warmup_steps = int(round(config.warmup_epochs * self.per_epoch))
        self.history: list[dict] = []
        self.start_epoch, self.step, self.bar = 0, 0, None
        self.frozen, self.phase, self.updates = FrozenRows(), None, 0

    def plan(self, epoch: int) -> EpochPlan:
        return (self.schedule or _WHOLE).plan(epoch, self.config.epochs, self.n)

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.model, map_location=self.device)
        self.optimizer.load_state_dict(state["optimizer_state"])
        if state.get("scaler_state"):
            self.scaler.load_state_dict(state["scaler_state"])
        self.start_epoch, self.step = state["epoch"], state["step"]
        self.history = list(state["history"])
        _warn_config_change(state.get("train_config", {}), self.config)
        set_rng_state(state["rng"])
        if self.start_epoch >= self.config.epochs:
            warnings.warn(f"the checkpoint has already completed {self.start_epoch} epochs "
                          f"(config.epochs={self.config.epochs}): nothing to train")

    def wants_stop(self, event: TrainEvent) -> bool:
        answers = [cb(event) for cb in self.callbacks]
        return any(a == "stop" for a in answers)

    def update(self, x, y, k):
        """One optimiser step on the prefix model y_k (k None: the whole model)."""
        config, ctx = self.config, self.ctx
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits = self.net(x) if k is None else self.net(x, branches=k)   # (B, K) or (B, T, V)
            loss = scored_loss(logits, y, config.label_smoothing)
        share = ctx.loss_share(len(y), self.loader.global_rows) if ctx else 1.0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss * share if ctx else loss).backward()
        self.frozen.mask_grads()          # frozen rows count neither in the clip nor the step
        if config.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.frozen.restore()
        return logits, loss

    def epoch(self, epoch: int) -> dict | None:
        """One epoch's steps; its record (training loss and accuracy of the last pass), or
        None when a stop event or callback ended it part way."""
        config, ctx, device = self.config, self.ctx, self.device
        plan = self.plan(epoch)
        self.frozen = FrozenRows((frozen_pairs(self.model, plan) if self.schedule else [])
                                 + self.freeze_rows)
        first, last = plan.start * self.per_epoch, plan.stop * self.per_epoch  # the phase's positions
        # a phase shorter than the run (branchwise) warms up for at most half of itself
        warmup = (self.warmup_steps if last - first == self.total_steps
                  else min(self.warmup_steps, (last - first) // 2))
        self.model.train()
        t0, updates, current, prefixes = time.perf_counter(), 0, None, plan.passes[0]
        lr = self.optimizer.param_groups[0]["lr"]
        for index, x, y, k in schedule_steps(plan, self.loader, epoch):
            if index != current:  # a new pass: the last pass's loss and accuracy are recorded
                current, prefixes = index, plan.passes[index]
                sums = torch.zeros(3, device=device)     # loss sum, correct, scored positions
                checked = self.step
            if k == prefixes[0]:  # the batch's first update: move it, set the step's lr
                if self.stop_event is not None and self.stop_event.is_set():
                    return None
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                lr = lr_at(self.step - first, last - first, warmup, config.lr, config.min_lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = (x, y)
            logits, loss = self.update(*batch, k)
            updates += 1
            if k != prefixes[-1]:
                continue
            x, y = batch  # the batch's last update: count it
            self.step += 1
            correct, count = hits(logits.detach(), y)
            sums += torch.stack((loss.detach() * count, correct.to(sums.dtype), count.to(sums.dtype)))
            if self.after_batch(epoch, loss, sums, checked):
                return None
            if self.step % LOG_EVERY == 0 or self.step == self.total_steps:
                checked = self.step
        if ctx is not None:  # every rank's rows: the global batch's sums
            sums = ctx.all_sum(sums)
        loss_sum, correct, seen = sums.tolist()
        _check_finite(loss_sum, epoch + 1, checked, self.step)
        record = {"epoch": epoch + 1, "step": self.step, "lr": lr,
                  "train_loss": loss_sum / seen, "train_acc": correct / seen,
                  "train_samples_per_s": seen * len(plan.passes) / max(time.perf_counter() - t0, 1e-9)}
        self.phase, self.updates = plan.phase, updates
        return record

    def after_batch(self, epoch: int, loss, sums, checked: int) -> bool:
        """Progress, the finite-loss check every LOG_EVERY steps, and the batch callbacks;
        whether a callback asked to stop."""
        loss_value = None  # read from the device at the logging steps only
        if self.step % LOG_EVERY == 0 or self.step == self.total_steps:
            loss_value, running = torch.stack((loss.detach(), sums[0])).tolist()
            _check_finite(running, epoch + 1, checked, self.step)
        if self.bar is not None:
            self.bar.update(1)
            if loss_value is not None:
                self.bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}", refresh=False)
        return bool(self.callbacks) and self.wants_stop(TrainEvent(
            "batch", epoch + 1, self.step, history=self.history,
            loss=loss.detach() if loss_value is None else loss_value))


class _Checkpointer:
    """Writes a run's checkpoint atomically (duat.storage): the model's config and weights,
    optimiser and scaler states, step, epoch, seed, RNG states, history and `extra`."""

    def __init__(self, path: Path | None, loop: _Loop, extra: dict | None, write: bool):
        self.path, self.loop, self.extra, self.write = path, loop, extra or {}, write

    def save(self, epoch: int) -> Path | None:
        """Write the checkpoint after `epoch` epochs; the path written (None: none here)."""
        loop = self.loop
        if self.path is None or not self.write:
            return self.path
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "model_name": self.extra.get("model"),
            "model_class": type(loop.model).__name__,
            "model_config": model_config_of(loop.model),
            "model_state": loop.model.state_dict(),
            "optimizer_state": loop.optimizer.state_dict(),
            "scaler_state": loop.scaler.state_dict() if loop.scaler.is_enabled() else None,
            "epoch": epoch, "step": loop.step, "seed": loop.config.seed,
            "train_config": asdict(loop.config),
            "history": loop.history,
            "rng": rng_state(),
            "extra": self.extra,
        }, self.path)
        return self.path


_WHOLE = Schedule("joint")  # the plain loop's plan: one pass, one phase, nothing frozen


def _check_finite(loss_sum: float, epoch: int, checked: int, step: int) -> None:
    """FloatingPointError if the epoch's running loss sum is NaN or inf: some loss of the
    steps after `checked` (the last step seen finite) up to `step` was."""
    if not math.isfinite(loss_sum):
        where = f"step {step}" if step == checked + 1 else f"one of steps {checked + 1}-{step}"
        raise FloatingPointError(f"the loss became {loss_sum} at epoch {epoch}, {where}; "
                                 f"try a lower lr or grad_clip")


def _warn_config_change(saved: dict, config: TrainConfig) -> None:
    now = asdict(config)
    changed = [k for k in now if k not in ("epochs", "device", "checkpoint_every")
               and k in saved and _plain(saved[k]) != _plain(now[k])]
    if changed:
        warnings.warn("resuming with a training config that differs from the checkpoint's in "
                      + ", ".join(f"{k} ({saved[k]!r} -> {now[k]!r})" for k in changed))


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
