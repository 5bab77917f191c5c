"""One process of a torchrun launch: its process group, device, data share and errors.

    torchrun --nproc-per-node 2 -m duat train --model pf-1-8 --batch-size 64

torchrun starts N copies of the command and tells each its RANK, WORLD_SIZE, LOCAL_RANK
and where rank 0 listens (MASTER_ADDR, MASTER_PORT). `setup()` reads them and joins the
process group: NCCL when the process gets a GPU (one per rank, cuda:LOCAL_RANK), gloo on
a CPU, chosen automatically. Every collective carries a timeout (DUAT_DIST_TIMEOUT
seconds, default 120), so a process that stops answering ends the run with an error
instead of a hang; a process that dies closes its connections, and the others fail at
their next collective. `Context.guard()` turns either into one `DistributedError` line.

Data parallelism (DDP) needs three things from here: `Context.wrap` (the model inside
torch's DistributedDataParallel, gradients averaged over ranks during backward),
`ShardedLoader` (each rank's rows of every global batch, so --batch-size stays the global
batch and the order is the single-process order) and `Context.loss_share` (the weight
that makes the average of the ranks' losses the global batch's mean loss, even when the
rows do not split evenly).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

TIMEOUT_ENV = "DUAT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 120.0
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective failed: another process died, hung past the timeout, or the network
    between them failed. One line; duat.cli reports it as `error:` with status 1."""


def launched() -> bool:
    """True in a process started by torchrun (or with its environment set by hand)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE"))


def launched_world() -> int:
    """WORLD_SIZE of a torchrun launch (1 outside one)."""
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds > 0, got {raw!r}")
    return value


@dataclass
class Context:
    """This process's place in the run: rank of world, its device and backend."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    group: object = None          # None: the default (whole-world) group

    @property
    def main(self) -> bool:       # rank 0 writes results, checkpoints and the progress bar
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world} ({self.backend} on {self.device})"

    # -- collectives, each a plain wrapper so that guard() can name what failed
    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `values` over ranks (a new tensor, on every rank)."""
        out = values.clone()
        if self.world > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def agree(self, action: Callable[[], object]) -> object:
        """Run `action` on rank 0 only; if it raises, every rank raises the same error
        (ValueError with rank 0's message), so a refusal (a used run folder, say) ends
        the whole run with one message instead of leaving the others waiting."""
        result, message = None, ""
        if self.main:
            try:
                result = action()
            except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError) as err:
                message = str(err) or type(err).__name__
        if self.world > 1:
            data = torch.zeros(4096, dtype=torch.uint8, device=self.device)
            raw = message.encode()[:4095]
            data[:len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
            dist.broadcast(data, src=0, group=self.group)
            message = bytes(data[data != 0].tolist()).decode(errors="replace")
        if message:
            raise ValueError(message)
        return result

    # -- data parallelism
    def wrap(self, model: nn.Module) -> nn.Module:
        """The model inside DistributedDataParallel (the model itself in a world of one).
        DDP broadcasts rank 0's weights first, so every rank starts from the same ones."""
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, process_group=self.group)

    def loss_share(self, rows: int, global_rows: int) -> float:
        """The weight of a rank's mean loss over `rows` of a global batch of `global_rows`:
        DDP averages gradients over ranks, so sum_r (rows_r * world / global) * mean_r / world
        is the global batch's mean loss, however the rows split."""
        return rows * self.world / global_rows

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn a failed collective (a peer died, hung or lost its connection) into one
        DistributedError line that says which rank saw it and what to check."""
        try:
            yield
        except DistributedError:
            raise
        except RuntimeError as err:
            if not _is_collective_error(err):
                raise
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            raise DistributedError(
                f"{self}: lost contact with another process of the run (it died, was killed, "
                f"or did not answer within {timeout_s():g} s, {TIMEOUT_ENV}); stopping. "
                f"Files rank 0 wrote before are kept. ({type(err).__name__}: {first[:200]})"
            ) from err


def _is_collective_error(err: BaseException) -> bool:
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return any(word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset",
                                         "Timed out", "timed out", "Broken pipe", "TCPStore"))


def setup(device: str = "auto") -> Context:
    """Join the process group torchrun describes (once; later calls return the same).

    device: 'auto' (a GPU per rank when there are enough, else the CPU), 'cpu', or
    'cuda'. NCCL goes with GPUs, gloo with the CPU.
    """
    missing = [name for name in _LAUNCH_ENV if name not in os.environ]
    if missing:
        raise ValueError(f"not started by torchrun: {', '.join(missing)} unset. Start the "
                         f"command as `torchrun --nproc-per-node 2 -m duat ...`")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ["LOCAL_RANK"])
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"under torchrun the device must be auto, cpu or cuda (each rank "
                         f"takes cuda:LOCAL_RANK), got {device!r}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    use_cuda = device == "cuda" or (device == "auto" and gpus > local)
    if use_cuda and local >= gpus:
        raise ValueError(f"rank {rank} has LOCAL_RANK {local} but this machine has {gpus} "
                         f"GPU(s): use --nproc-per-node {max(gpus, 1)}, or --device cpu (gloo)")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s()))
    return Context(rank, world, local, dev, dist.get_backend())


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_in_group(device: str, body: Callable[[Context], int]) -> int:
    """setup(device), body(ctx) with failed collectives as one DistributedError, teardown:
    how `duat train`, `duat reproduce` and `duat bench` run under torchrun."""
    ctx = setup(device)
    try:
        with ctx.guard():
            return body(ctx)
    finally:
        teardown()


class ShardedLoader:
    """One rank's rows of every global batch of `loader` (any iterable of (x, y) with a
    len, e.g. duat.data.BatchLoader).

    Every rank draws the same global batch (same seed, same epoch: the order and the
    augmentation are the single-process ones) and keeps rows rank, rank + world, ...;
    `global_rows` is the size of the batch last drawn. A global batch smaller than the
    world (the epoch's last, at most world - 1 rows) is skipped: DDP needs every rank to
    take every step, and a rank with no rows cannot.
    """

    def __init__(self, loader, rank: int, world: int):
        size = getattr(loader, "batch_size", None)
        if size is not None and size < world:
            raise ValueError(f"the global batch size {size} is smaller than the {world} "
                             f"processes: use --batch-size {world} or more")
        self.loader, self.rank, self.world = loader, rank, world
        self.global_rows = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        batches = len(self.loader)
        rows, size = len(getattr(self.loader, "dataset", ())), getattr(self.loader, "batch_size", 0)
        if size and rows and not getattr(self.loader, "drop_last", False) and 0 < rows % size < self.world:
            batches -= 1  # the short last batch is skipped
        return batches

    def __iter__(self):
        for x, y in self.loader:
            if len(y) < self.world:
                continue
            self.global_rows = len(y)
            yield x[self.rank::self.world], y[self.rank::self.world]   # (B / world, ...)
