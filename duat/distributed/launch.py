"""Start N processes of a duat command from Python, each with a deadline.

    run = torchrun(["train", "--model", "pf-1-4", "--epochs", "2"], nproc=2, timeout=120)
    print(run.returncode, run.stdout)

`torchrun` runs the command under torch's own launcher (`python -m torch.distributed.run`,
what the `torchrun` script runs), as a reader would in a terminal: the notebooks use it.
`start` sets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) itself and hands back one process per rank, so that a test can kill or
stop any one of them. Both kill every process still running at the deadline: a hung
collective ends the call instead of the caller.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    """A TCP port nothing listens on now (for rank 0's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(threads: int | None, extra: dict | None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def torchrun(argv: Sequence[str], nproc: int = 2, *, timeout: float = 300,
             threads: int | None = 1, env: dict | None = None,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node NPROC -m duat ARGV...`, output captured as text.

    threads: OMP_NUM_THREADS of every process (torchrun's own default is 1 too).
    TimeoutError (every process killed) if it runs past `timeout` seconds.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "duat", *map(str, argv)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(threads, env), cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise TimeoutError(f"torchrun {' '.join(map(str, argv))} ran past {timeout:g} s; "
                           f"every process was stopped") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


@dataclass
class Rank:
    rank: int
    process: subprocess.Popen
    log: Path                   # stdout and stderr together

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


class Workers:
    """The processes of one launch, rank by rank; `wait` enforces the deadline."""

    def __init__(self, ranks: list[Rank], folder: tempfile.TemporaryDirectory):
        self.ranks, self._folder = ranks, folder

    def __getitem__(self, rank: int) -> Rank:
        return self.ranks[rank]

    def wait(self, timeout: float) -> list[int]:
        """Every rank's exit status; TimeoutError (all killed) past `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for r in self.ranks:
            try:
                r.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise TimeoutError(f"rank {r.rank} still ran after {timeout:g} s; every "
                                   f"process was killed. Output:\n" + self.outputs()) from None
        return [r.process.returncode for r in self.ranks]

    def kill(self) -> None:
        for r in self.ranks:
            if r.process.poll() is None:
                r.process.kill()
                r.process.wait()

    def outputs(self) -> str:
        return "\n".join(f"--- rank {r.rank}\n{r.output()}" for r in self.ranks)

    def close(self) -> None:
        self.kill()
        self._folder.cleanup()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(argv: Sequence[str], nproc: int = 2, *, threads: int | None = 1,
          env: dict | None = None, cwd: str | Path | None = None,
          script: str | Path | None = None) -> Workers:
    """`python -m duat ARGV...` (or `python SCRIPT ARGV...`) in `nproc` processes with
    torchrun's environment, one Popen per rank (output to a log file each). Use as a
    context manager: leaving it kills what still runs."""
    folder = tempfile.TemporaryDirectory(prefix="duat-launch-")
    port, ranks = free_port(), []
    for rank in range(nproc):
        log = Path(folder.name) / f"rank{rank}.log"
        extra = {"RANK": rank, "WORLD_SIZE": nproc, "LOCAL_RANK": rank, "LOCAL_WORLD_SIZE": nproc,
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **(env or {})}
        with open(log, "w") as handle:
            head = [str(script)] if script is not None else ["-m", "duat"]
            proc = subprocess.Popen([sys.executable, *head, *map(str, argv)],
                                    stdout=handle, stderr=subprocess.STDOUT,
                                    env=_env(threads, extra), cwd=cwd)
        ranks.append(Rank(rank, proc, log))
    return Workers(ranks, folder)
