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


def _one_process_ddp_case(batch_size: int):
    """What case_ddp trains, in this one process: (model, FitResult)."""
    from duat.data import load_data
    from duat.paraformer import ParaFormer
    from duat.training.engine import TrainConfig, fit

    train, _, _ = load_data("digits", per_class=12, seed=0).loaders(batch_size=batch_size, seed=0)
    torch.manual_seed(0)
    model = ParaFormer(patch_size=4, dim=16, heads=2, depth=1, width=2)
    config = TrainConfig(epochs=2, lr=3e-3, device="cpu", seed=0, warmup_epochs=0.5)
    return model, fit(model, train, None, config, progress=False)


@pytest.mark.parametrize("case,batch", [("ddp", 24), ("ddp_uneven", 25)])
def test_ddp_ends_with_the_single_process_weights(case, batch, tmp_path):
    # 25 rows split 13 / 12: Context.loss_share must weight the ranks' mean losses. The key
    # biases are set apart (their gradient is zero in exact arithmetic: AdamW walks them on
    # rounding noise; duat.distributed.agreement); the rest is rounding, grown by 10 steps.
    from duat.distributed.agreement import weight_gap

    ranks = launch(case, tmp_path)
    model, result = _one_process_ddp_case(batch)
    gap = weight_gap(model.state_dict(), load_tensors(tmp_path / "ddp.pt", "state dict"))
    assert gap.rest < TOL, gap
    for got in ranks:
        assert got["steps"] == result.step == 10      # 120 examples, batch 24 or 25, 2 epochs
        last, want = got["history"][-1], result.history[-1]
        assert abs(last["train_loss"] - want["train_loss"]) < TOL
    assert [got["wrote_checkpoint"] for got in ranks] == [True, False]   # rank 0 only


def test_the_ddp_weight_check_catches_a_wrong_loss_weighting(tmp_path):
    """The comparison above has the power to see a real bug: every rank's mean loss weighted
    1 where the rows split 13 / 12 ends far outside TOL."""
    from duat.distributed.agreement import weight_gap

    launch("ddp_unweighted", tmp_path)
    model, _ = _one_process_ddp_case(25)
    gap = weight_gap(model.state_dict(), load_tensors(tmp_path / "ddp.pt", "state dict"))
    assert gap.rest > 10 * TOL, gap


def test_a_sweep_trains_data_parallel_and_rank_0_writes_it(tmp_path):
    from duat.experiments.sweeps import run_sweep

    sys.path.insert(0, str(HERE))
    try:
        from distributed_cases import SWEEP
    finally:
        sys.path.remove(str(HERE))
    ranks = launch("sweep", tmp_path)
    alone = run_sweep(**SWEEP, write=False)
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


def test_the_committed_runs_table_names_each_model_and_what_its_speed_up_measures():
    from duat.bench import across_ranks as bp

    runs = {p.parent.name: bp.load(p) for p in bp.saved_runs()}
    table = bp.speedup_table(runs)
    assert len(table) == sum(len(r["records"]) for r in runs.values())
    for name, r in runs.items():
        rows = table[table["run"] == name]
        spec = r["spec"]
        assert set(rows["image"]) == {spec["image_size"]}
        assert set(rows["D"]) == {bp.model_of(r)["D"]}
        assert set(rows["measures"]) == {bp.SPLIT if r["processes"] > 1 else bp.WRAPPER}
        assert f"D = {bp.model_of(r)['D']}" in bp.describe(name, r)
    gpu = table[table["run"] == "cuda-h200-1x1-2026-12-04"]
    assert set(gpu["D"]) == {384} and set(gpu["image"]) == {224} and set(gpu["tokens"]) == {197}
    assert set(gpu["measures"]) == {bp.WRAPPER} and set(gpu["W"]) == {1}
    assert set(table[table["run"] == "cpu2-2x1-2026-12-04"]["D"]) == {192}
    grid = bp.speedup_grid(table)
    assert list(grid.index.names) == ["run", "model", "measures", "B"]
    assert grid.loc[("cpu16-8x1-2026-12-04", "small, D 192, 32 px", bp.SPLIT, 16), 24] == 1.44


# ----------------------------------------------------------------------------- weight_gap

def test_weight_gap_sets_the_key_biases_apart_and_scales_by_the_largest_weight():
    from duat.distributed.agreement import DDP_TOLERANCE, weight_gap
    from duat.registry import create_model

    for stage, name in (("batched", "stages.0.qkv_bias"), ("reference", "stages.0.blocks.1.attn.qkv.bias")):
        one = create_model("pf-1-2", stage=stage).state_dict()
        two = {k: v.clone() for k, v in one.items()}
        D = one[name].shape[-1] // 3
        two[name][..., D:2 * D] += 0.05                 # a key bias: apart from the rest
        two["head.weight"][0, 0] += 1e-6
        gap = weight_gap(one, two)
        assert gap.key_bias == pytest.approx(0.05, rel=1e-3)
        assert gap.rest == pytest.approx(1e-6, rel=0.05) and gap.worst == "head.weight"
        assert gap.scale == max(v.abs().max().item() for v in one.values())
        assert gap.relative == gap.rest / gap.scale and gap.within(DDP_TOLERANCE)
        two[name][..., 2 * D:] += 0.05                  # a value bias counts
        assert weight_gap(one, two).rest == pytest.approx(0.05, rel=1e-3)
        assert not weight_gap(one, two).within(DDP_TOLERANCE)
    with pytest.raises(ValueError, match="different tensors"):
        weight_gap(one, {k: v for k, v in one.items() if k != "head.bias"})


def test_the_key_bias_gets_no_gradient_in_exact_arithmetic():
    """Why weight_gap sets the key biases apart: the softmax ignores q . b_k, a shift shared
    by every key of a query, so their gradient is zero and a float32 run's is rounding noise."""
    import torch.nn.functional as F

    from duat.registry import create_model

    torch.manual_seed(0)
    model = create_model("pf-1-2").double()
    x, y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (6,))
    F.cross_entropy(model(x), y).backward()
    g = model.stages[0].qkv_bias.grad                   # (n, 3D): q, k, v
    D = g.shape[-1] // 3
    assert g[:, D:2 * D].abs().max() < 1e-15
    assert g[:, :D].abs().max() > 1e-5 and g[:, 2 * D:].abs().max() > 1e-3
