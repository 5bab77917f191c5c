"""duat.distributed on 2 CPU processes with gloo: branch parallelism gives the single-process
logits and gradients, DDP the single-process weights, and a rank that dies or hangs ends
the run with one error instead of a hang.

Every launch goes through duat.distributed.launch with a hard deadline (LIMIT seconds):
a hung collective kills the processes and fails the test instead of stalling the suite.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from duat.distributed import split_branches
from duat.distributed.launch import start, torchrun
from duat.storage import load_tensors
from duat.training.checkpoints import load_checkpoint

HERE = Path(__file__).resolve().parent
CASES = HERE / "distributed_cases.py"
LIMIT = 120          # seconds for a whole launch, start-up included
TOL = 1e-5


def launch(case: str, out: Path, nproc: int = 2, **env) -> list[dict]:
    with start([case, out], nproc, script=CASES, env={"DUAT_DIST_TIMEOUT": 30, **env}) as workers:
        codes = workers.wait(LIMIT)
        assert codes == [0] * nproc, workers.outputs()
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.parametrize("case", ["branch_parallel_contiguous", "branch_parallel_strided",
                                  "branch_parallel_reference"])
def test_branch_parallel_matches_one_process_on_every_rank(case, tmp_path):
    ranks = launch(case, tmp_path)
    for r, got in enumerate(ranks):
        assert got["logits_gap"] < TOL, (r, got["logits_gap"])
        assert got["checked"] == len(got["grad_gaps"]) > 5
        worst = max(got["grad_gaps"], key=got["grad_gaps"].get)
        assert got["grad_gaps"][worst] < TOL, (r, worst, got["grad_gaps"][worst])
        assert any(".local." in k for k in got["grad_gaps"])        # own branches checked
        assert any(k.startswith("head.") for k in got["grad_gaps"])  # replicated parts too
        assert got["local_params"] < got["params"]
        assert got["same_keys"] and got["state_gap"] == 0.0
        assert got["prefix_gap"] < TOL and got["loaded_gap"] < TOL
    ids = [got["ids"] for got in ranks]
    assert sorted(sum(ids, [])) == [0, 1, 2, 3]
    assert ids == ([[0, 1], [2, 3]] if case.endswith("contiguous") else [[0, 2], [1, 3]])


def test_the_saved_split_model_is_an_ordinary_checkpoint(tmp_path):
    launch("branch_parallel_contiguous", tmp_path)
    sys.path.insert(0, str(HERE))
    try:
        from distributed_cases import batch, reference
    finally:
        sys.path.remove(str(HERE))
    model = reference()
    want = model(batch()[0])
    fresh = reference(seed=9)
    load_checkpoint(tmp_path / "split.pt", fresh)        # the single-process reader
    assert (fresh(batch()[0]) - want).abs().max().item() < TOL


def test_f_and_g_sum_the_input_gradient_once(tmp_path):
    ranks = launch("pair", tmp_path)
    for got in ranks:
        assert got["ours"] == [3.0, 3.0, 3.0]                  # (1 + 2): rank 0 and 1's factor
        assert got["torch_nn_all_reduce"] == [6.0, 6.0, 6.0]   # summed again: world times


def test_ddp_ends_with_the_single_process_weights(tmp_path):
    from duat.data import load_data
    from duat.paraformer import ParaFormer
    from duat.training.engine import TrainConfig, fit

    ranks = launch("ddp", tmp_path)
    train, _, _ = load_data("digits", per_class=12, seed=0).loaders(batch_size=24, seed=0)
    torch.manual_seed(0)
    model = ParaFormer(patch_size=4, dim=16, heads=2, depth=1, width=2)
    config = TrainConfig(epochs=2, lr=3e-3, device="cpu", seed=0, warmup_epochs=0.5)
    result = fit(model, train, None, config, progress=False)
    ddp = load_tensors(tmp_path / "ddp.pt", "state dict")
    gaps = {k: (ddp[k] - v).abs().max().item() for k, v in model.state_dict().items()}
    assert max(gaps.values()) < TOL, max(gaps.items(), key=lambda kv: kv[1])
    for got in ranks:
        assert got["steps"] == result.step == 10      # 120 examples, batch 24, 2 epochs
        last, want = got["history"][-1], result.history[-1]
        assert abs(last["train_loss"] - want["train_loss"]) < TOL
    assert [got["wrote_checkpoint"] for got in ranks] == [True, False]   # rank 0 only


def test_a_sweep_trains_data_parallel_and_rank_0_writes_it(tmp_path):
    from duat.experiments.sweeps import run_experiment

    sys.path.insert(0, str(HERE))
    try:
        from distributed_cases import SWEEP
    finally:
        sys.path.remove(str(HERE))
    ranks = launch("sweep", tmp_path)
    alone = run_experiment(**SWEEP, write=False)
    (want,) = alone["records"]
    for got in ranks:
        assert got["processes"] == 2
        (record,) = got["records"]
        assert record["model"] == want["model"] == "pf-1-2"
        assert abs(record["test_acc"] - want["test_acc"]) <= 1 / 359   # at most one image
        assert abs(record["train_loss"] - want["train_loss"]) < 1e-4
        assert abs(record["test_loss"] - want["test_loss"]) < 1e-4 and record["steps"] == want["steps"]
    written = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [r["model"] for r in written["records"]] == ["pf-1-2"]
    assert not (tmp_path / "sweep" / "partial.json").exists()


def test_reproduce_refuses_the_experiments_it_does_not_spread(tmp_path):
    run = torchrun(["reproduce", "progressive", "--quick", "--out", tmp_path / "p"], 2,
                   timeout=LIMIT, cwd=tmp_path)
    assert run.returncode != 0 and "start it without torchrun" in run.stderr
    assert not (tmp_path / "p").exists()


def test_split_errors_name_a_split_that_works():
    assert split_branches(6, 4, "strided") == [[0, 4], [1, 5], [2], [3]]
    with pytest.raises(ValueError, match=r"split='strided'.*1, 2, 3, 6"):
        split_branches(6, 4)
    with pytest.raises(ValueError, match=r"at most 2 processes \(torchrun --nproc-per-node 2\)"):
        split_branches(2, 3, "strided")
    with pytest.raises(ValueError, match="split must be one of"):
        split_branches(4, 2, "round-robin")


def test_branch_parallel_refuses_without_a_process_group():
    from duat.distributed import branch_parallel
    from duat.paraformer import ParaFormer

    with pytest.raises(ValueError, match="torchrun"):
        branch_parallel(ParaFormer(patch_size=4, dim=16, heads=2, width=2))


# ----------------------------------------------------------------------------- duat train

def _train_args(out: Path, *extra) -> list:
    return ["train", "--model", "pf-1-2", "--dataset", "digits", "--per-class", "20",
            "--batch-size", "20", "--no-progress", "--device", "cpu", "--out", out, *extra]


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_rank_ends_the_run_with_one_error_and_the_checkpoint_survives(victim, tmp_path):
    out = tmp_path / "run"
    with start(_train_args(out, "--epochs", "400"), 2, env={"DUAT_DIST_TIMEOUT": 30}) as workers:
        ckpt = out / "checkpoint.pt"
        deadline = time.monotonic() + LIMIT
        while not ckpt.is_file():            # rank 0 wrote its first checkpoint
            assert time.monotonic() < deadline and workers[0].process.poll() is None, workers.outputs()
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(workers[victim].process.pid, signal.SIGKILL)
        codes = workers.wait(LIMIT)
        survivor = workers[1 - victim].output()
    assert codes[victim] == -signal.SIGKILL
    assert codes[1 - victim] == 1, survivor
    errors = [line for line in survivor.splitlines() if "error:" in line]
    assert len(errors) == 1 and "lost contact with another process" in errors[0], survivor
    assert "Traceback" not in survivor
    state = load_checkpoint(ckpt)             # whole and readable, whoever was killed
    assert state["epoch"] >= 1


def test_a_hung_rank_ends_the_run_at_the_timeout(tmp_path):
    with start(["hold", tmp_path], 2, script=CASES, env={"DUAT_DIST_TIMEOUT": 5}) as workers:
        deadline = time.monotonic() + LIMIT
        while not (tmp_path / "ready-rank1").is_file():
            assert time.monotonic() < deadline, workers.outputs()
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(workers[1].process.pid, signal.SIGSTOP)      # alive, but never answers
        try:
            t0 = time.monotonic()
            assert workers[0].process.wait(timeout=LIMIT) != 0
            waited = time.monotonic() - t0
        finally:
            os.kill(workers[1].process.pid, signal.SIGCONT)
        assert waited < 60, waited
        assert "DistributedError" in workers[0].output()


def test_torchrun_trains_data_parallel_and_only_rank_0_writes(tmp_path):
    run = torchrun(_train_args(tmp_path / "run", "--epochs", "2"), 2, timeout=LIMIT, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "data parallel over 2 processes (gloo)" in run.stdout
    assert run.stdout.count("training pf-1-2") == 1            # rank 0 prints
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["processes"] == 2 and record["epochs_completed"] == 2
    again = torchrun(_train_args(tmp_path / "run", "--epochs", "2"), 2, timeout=LIMIT, cwd=tmp_path)
    assert again.returncode != 0 and "--overwrite" in again.stderr   # refused, nothing replaced
    assert json.loads((tmp_path / "run" / "results.json").read_text()) == record


def test_a_global_batch_smaller_than_the_world_is_refused(tmp_path):
    run = torchrun(["train", "--model", "pf-1-2", "--per-class", "10", "--batch-size", "1",
                    "--no-progress", "--device", "cpu", "--out", tmp_path / "r"], 2,
                   timeout=LIMIT, cwd=tmp_path)
    assert run.returncode != 0 and "--batch-size 2 or more" in run.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_branch_parallel_on_a_gpu_with_nccl(tmp_path):
    nproc = torch.cuda.device_count()               # one rank per GPU
    n = max(d for d in (1, 2, 4) if d <= nproc)
    for got in launch("cuda_branch_parallel", tmp_path, nproc=n):
        assert got["backend"] == "nccl" and got["device"].startswith("cuda")
        assert got["logits_gap"] < 1e-4 and got["grad_gap"] < 1e-4    # TF32 may round


# ----------------------------------------------------------------------------- duat bench

def test_the_branch_parallel_benchmark_times_every_way_and_checks_the_logits(tmp_path):
    run = torchrun(["bench", "--impl", "pf-branch-parallel", "--size", "tiny", "--layers", "2", "3",
                    "--reps", "3", "--warmup", "1", "--out", tmp_path, "--name", "bp"], 2,
                   timeout=LIMIT, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "bp" / "results.json").read_text())
    assert results["processes"] == 2 and results["backend"] == "gloo"
    assert [(r["n"], r["split_kind"]) for r in results["records"]] == [(2, "contiguous"), (3, "strided")]
    for r in results["records"]:
        assert r["max_abs_diff"] < TOL
        for way in ("one", "split", "reduce", "local"):
            assert r[way]["median_ms"] > 0
        assert r["speedup"] == pytest.approx(r["one"]["median_ms"] / r["split"]["median_ms"])
    assert (tmp_path / "bp" / "branch_parallel.png").stat().st_size > 0
    assert "max |difference|" in run.stdout


def test_the_branch_parallel_benchmark_refuses_what_it_cannot_time(tmp_path):
    narrow = torchrun(["bench", "--impl", "pf-branch-parallel", "--layers", "1", "--no-save"], 2,
                      timeout=LIMIT, cwd=tmp_path)
    assert narrow.returncode != 0 and "--layers of at least 2" in narrow.stderr
    from conftest import run_cli
    alone = run_cli("bench", "--impl", "pf-branch-parallel", "--no-save", cwd=tmp_path)
    assert alone.returncode == 2 and "under torchrun" in alone.stderr
