"""The training loop: fit() and evaluate() in plain PyTorch, with checkpoints and resume.

Used by `duat train`, `duat reproduce` (docs/method.md section 5: accuracy against the number
of parallel layers, data scale and diversity) and the training notebooks. Any nn.Module
mapping images (B, C, H, W) to logits (B, K) and any iterable of (x, y) batches will do.

One optimisation step, as in nanoGPT:

    lr    = lr_at(step)                           # linear warm-up, then cosine decay
    loss  = cross_entropy(model(x), y, label_smoothing)
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
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from duat.checks import real, whole
from duat.distributed.process import Context, ShardedLoader
from duat.runtime import seed_everything, select_device
from duat.storage import CHECKPOINT_FORMAT, atomic_torch_save
from duat.training.checkpoints import _model_config, _rng_state, _set_rng_state, load_checkpoint
from duat.training.schedules import FrozenRows, Schedule, frozen_pairs, resolve_schedule

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


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: str | torch.device | None = None):
    """(predicted classes, true labels, logits) over a loader, as CPU tensors."""
    device = _device_of(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    labels, logits = [], []
    try:
        for x, y in loader:  # kept on the device: one copy to the CPU at the end, not a sync per batch
            logits.append(model(x.to(device)).float())
            labels.append(y)
    finally:
        model.train(was_training)
    logits = torch.cat(logits).cpu()
    return logits.argmax(1), torch.cat([y.cpu() for y in labels]), logits


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None, *,
             label_smoothing: float = 0.0, amp: bool = True,
             branches: int | None = None) -> dict[str, float]:
    """Mean loss, accuracy and throughput of `model` over `loader` (model left in its mode);
    `branches` = k scores a ParaFormer's prefix model y_k (the first k branches per stage)."""
    call = model if branches is None else (lambda x: model(x, branches=branches))
    device = _device_of(model) if device is None else torch.device(device)
    use_amp, amp_dtype = _amp_settings(device, amp)
    was_training = model.training
    model.eval()
    # Per-batch sums stay on the device; one copy at the end, added up in Python floats in
    # batch order: the same numbers as reading every batch, without a sync per batch.
    loss_sums, corrects, count = [], [], 0
    t0 = time.perf_counter()
    try:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                logits = call(x)
            loss_sums.append(F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing,
                                             reduction="sum"))
            corrects.append((logits.argmax(1) == y).sum())
            count += y.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation loader yielded no examples")
    loss_sum = sum(torch.stack(loss_sums).tolist(), 0.0)
    correct = sum(torch.stack(corrects).tolist(), 0)
    seconds = time.perf_counter() - t0
    return {"loss": loss_sum / count, "accuracy": correct / count, "samples": count,
            "seconds": seconds, "samples_per_s": count / max(seconds, 1e-9)}


def prefix_metrics(model: nn.Module, loader: Iterable, *, label_smoothing: float = 0.0,
                   amp: bool = True) -> dict[str, float]:
    """prefix_loss_k and prefix_acc_k of a ParaFormer's prefix models y_k, k = 1..n."""
    out = {}
    for k in range(1, model.config.width + 1):
        r = evaluate(model, loader, label_smoothing=label_smoothing, amp=amp, branches=k)
        out[f"prefix_loss_{k}"], out[f"prefix_acc_{k}"] = r["loss"], r["accuracy"]
    return out


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _amp_settings(device: torch.device, amp: bool) -> tuple[bool, torch.dtype]:
    if not amp or device.type != "cuda":
        return False, torch.float32
    return True, (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


# ----------------------------------------------------------------------------- training

def fit(model: nn.Module, train_loader: Iterable, val_loader: Iterable | None = None,
        config: TrainConfig | None = None, *, checkpoint: str | Path | None = None,
        resume: bool | str | Path = False, callbacks: Sequence[Callback] = (),
        stop_event: threading.Event | None = None, progress: bool = True,
        extra: dict | None = None, schedule: str | Schedule | None = None,
        freeze_rows: Sequence[tuple[nn.Parameter, object]] = (),
        distributed: Context | None = None) -> FitResult:
    """Train `model` on `train_loader`; validate on `val_loader` after every epoch.

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
    freeze_rows: (parameter, index) pairs held exactly as they are (duat.branches.branch_rows:
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
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    if steps_per_epoch < 1:
        raise ValueError("the training loader yields no batches")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    resume_path = (checkpoint if resume is True else Path(resume) if resume else None)
    if resume is True and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=PATH (or pass the checkpoint path as resume)")

    device = select_device(config.device)
    use_amp, amp_dtype = _amp_settings(device, config.amp)
    model.to(device)
    optimizer = make_optimizer(model, config)  # after the move: the state lives on `device`
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    schedule = resolve_schedule(schedule, model, config.epochs)
    n = model.config.width if schedule is not None else 1
    # positions: batches seen, over every pass of an epoch (progressive makes two)
    per_epoch = len((schedule or _WHOLE).plan(0, config.epochs, n).passes) * steps_per_epoch
    total_steps = config.epochs * per_epoch
    warmup_steps = int(round(config.warmup_epochs * per_epoch))

    history: list[dict] = []
    start_epoch, step = 0, 0
    if resume_path is not None:
        state = load_checkpoint(resume_path, model, map_location=device)
        optimizer.load_state_dict(state["optimizer_state"])
        if state.get("scaler_state"):
            scaler.load_state_dict(state["scaler_state"])
        start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
        _warn_config_change(state.get("train_config", {}), config)
        _set_rng_state(state["rng"])
        if start_epoch >= config.epochs:
            warnings.warn(f"the checkpoint has already completed {start_epoch} epochs "
                          f"(config.epochs={config.epochs}): nothing to train")
    else:
        seed_everything(config.seed + (ctx.rank if ctx else 0))  # each rank its own dropout
    net = ctx.wrap(model) if ctx else model  # DDP: rank 0's weights broadcast to every rank

    bar = None
    if progress and (ctx is None or ctx.main):
        bar = tqdm(total=total_steps, initial=start_epoch * per_epoch, unit="step",
                   desc="training", dynamic_ncols=True)

    def save(epoch: int) -> None:
        if checkpoint is None or (ctx is not None and not ctx.main):
            return
        atomic_torch_save({
            "format": CHECKPOINT_FORMAT,
            "model_name": (extra or {}).get("model"),
            "model_class": type(model).__name__,
            "model_config": _model_config(model),
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "scaler_state": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch, "step": step, "seed": config.seed,
            "train_config": asdict(config),
            "history": history,
            "rng": _rng_state(),
            "extra": extra or {},
        }, checkpoint)

    status, epochs_done, t_start = "completed", start_epoch, time.perf_counter()
    last_saved = checkpoint if (resume_path is not None and checkpoint == resume_path) else None

    def wants_stop(event: TrainEvent) -> bool:
        answers = [cb(event) for cb in callbacks]
        return any(a == "stop" for a in answers)

    def one_step(x, y, k):  # one optimiser step on the prefix model y_k (k None: the whole model)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            logits = net(x) if k is None else net(x, branches=k)                # (B, K)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        share = ctx.loss_share(y.numel(), train_loader.global_rows) if ctx else 1.0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss * share if ctx else loss).backward()
        frozen.mask_grads()                 # frozen rows count neither in the clip nor the step
        if config.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        frozen.restore()
        return logits, loss

    try:
        for epoch in range(start_epoch, config.epochs):
            plan = (schedule or _WHOLE).plan(epoch, config.epochs, n)
            frozen = FrozenRows((frozen_pairs(model, plan) if schedule else []) + list(freeze_rows))
            first, last = plan.start * per_epoch, plan.stop * per_epoch  # the phase's positions
            # a phase shorter than the run (branchwise) warms up for at most half of itself
            warmup = warmup_steps if last - first == total_steps else min(warmup_steps, (last - first) // 2)
            model.train()
            t0, stopped, updates = time.perf_counter(), False, 0
            for prefixes in plan.passes:  # the last pass's loss and accuracy are recorded
                if hasattr(train_loader, "set_epoch"):
                    train_loader.set_epoch(epoch)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.long, device=device)
                seen, checked = 0, step
                for x, y in train_loader:
                    if stop_event is not None and stop_event.is_set():
                        stopped = True
                        break
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    lr = lr_at(step - first, last - first, warmup, config.lr, config.min_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    for k in prefixes:
                        logits, loss = one_step(x, y, k)
                        updates += 1
                    step += 1
                    loss_sum += loss.detach() * y.numel()
                    correct += (logits.argmax(1) == y).sum()
                    seen += y.numel()
                    loss_value = None  # read from the device at the logging steps only
                    if step % LOG_EVERY == 0 or step == total_steps:
                        loss_value, running = torch.stack((loss.detach(), loss_sum)).tolist()
                        _check_finite(running, epoch + 1, checked, step)
                        checked = step
                    if bar is not None:
                        bar.update(1)
                        if loss_value is not None:
                            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.3f}", refresh=False)
                    if callbacks and wants_stop(TrainEvent(
                            "batch", epoch + 1, step, history=history,
                            loss=loss.detach() if loss_value is None else loss_value)):
                        stopped = True
                        break
                if stopped:
                    break
            if stopped:  # a partial epoch: not recorded, not checkpointed
                status = "stopped"
                break
            if ctx is not None:  # every rank's rows: the global batch's sums
                loss_sum, correct, seen = ctx.all_sum(torch.stack(
                    (loss_sum, correct.to(loss_sum.dtype), loss_sum.new_tensor(seen)))).tolist()
            train_s = time.perf_counter() - t0
            running = float(loss_sum)
            _check_finite(running, epoch + 1, checked, step)
            record = {"epoch": epoch + 1, "step": step, "lr": lr,
                      "train_loss": running / seen, "train_acc": float(correct) / seen,
                      "train_samples_per_s": seen * len(plan.passes) / max(train_s, 1e-9)}
            if val_loader is not None:
                val = evaluate(model, val_loader, device, label_smoothing=config.label_smoothing,
                               amp=config.amp)
                record.update(val_loss=val["loss"], val_acc=val["accuracy"])
            if schedule is not None:  # every prefix k = 1..n, on the validation data if any
                record.update(schedule=schedule.name, phase=plan.phase, updates=updates,
                              **prefix_metrics(model, val_loader if val_loader is not None
                                               else train_loader,
                                               label_smoothing=config.label_smoothing,
                                               amp=config.amp))
            record["epoch_s"] = time.perf_counter() - t0
            history.append(record)
            epochs_done = epoch + 1
            if (epochs_done % config.checkpoint_every == 0) or epochs_done == config.epochs:
                save(epochs_done)
                last_saved = checkpoint
            if bar is not None:
                post = {"epoch": epochs_done, "loss": f"{record['train_loss']:.3f}"}
                if "val_acc" in record:
                    post["val_acc"] = f"{record['val_acc']:.3f}"
                bar.set_postfix(post)
            if callbacks and wants_stop(TrainEvent("epoch", epochs_done, step, record=record,
                                                   history=history)):
                status = "stopped"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if bar is not None:
            bar.close()
    return FitResult(model=model, history=history, status=status, epochs_completed=epochs_done,
                     step=step, checkpoint=last_saved, wall_time_s=time.perf_counter() - t_start)


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
