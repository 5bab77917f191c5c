"""duat.training: the loop trains, resume is exact, checkpoints are atomic, stops are prompt,
and `duat train` refuses bad input and never overwrites an earlier run by accident."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch
import torch.nn as nn

from duat import cli, storage
from duat.data import load_data
from duat.registry import create_model
from duat.runtime import seed_everything
from duat.training import TrainConfig, evaluate, fit, load_checkpoint
from duat.training.engine import lr_at

from conftest import run_cli, train_cli


def mlp(hidden=64, classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, classes))


@pytest.fixture(scope="module")
def small():  # 100 digits for training (10 per class)
    return load_data("digits", per_class=10, seed=0)


def one_batch(splits, n=32):
    x, y = splits.train.batch(torch.arange(n))
    return [(x, y)]


CPU = dict(device="cpu", warmup_epochs=0.0)


def test_tiny_mlp_overfits_a_small_batch(small):
    seed_everything(0)
    model = mlp()
    result = fit(model, one_batch(small), config=TrainConfig(epochs=150, lr=3e-3, **CPU), progress=False)
    assert result.status == "completed"
    assert result.history[0]["train_loss"] > 1.5
    assert result.history[-1]["train_loss"] < 0.05
    assert result.history[-1]["train_acc"] == 1.0


def test_paraformer_overfits_a_small_batch(small):
    seed_everything(0)
    model = create_model("pf-1-2", patch_size=4)
    result = fit(model, one_batch(small, 16), config=TrainConfig(epochs=60, lr=3e-3, **CPU),
                 progress=False)
    assert result.history[-1]["train_loss"] < 0.1


def test_history_records_and_evaluate(small):
    train, val, test = small.loaders(batch_size=32, seed=0)
    seed_everything(0)
    model = mlp()
    result = fit(model, train, val, TrainConfig(epochs=3, lr=3e-3, device="cpu"), progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_s",
                "train_samples_per_s", "step"):
        assert key in result.history[-1]
    assert result.step == 3 * len(train)
    model.train()
    metrics = evaluate(model, test)
    assert model.training  # evaluate leaves the mode as it found it
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["samples"] == len(small.test)


def test_learning_rate_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def _interrupt_at(step):
    def callback(event):
        if event.kind == "batch" and event.step == step:
            raise KeyboardInterrupt
    return callback


def _fresh_model():
    seed_everything(7)
    return create_model("pf-1-2", patch_size=4, dropout=0.1)  # dropout: the RNG state matters


def test_resume_after_interruption_gives_the_same_weights(small, tmp_path):
    config = TrainConfig(epochs=4, lr=3e-3, seed=7, device="cpu", label_smoothing=0.1)
    train, val, _ = small.loaders(batch_size=16, seed=7)
    steps = len(train)

    full = fit(_fresh_model(), train, val, config, checkpoint=tmp_path / "full.pt", progress=False)

    ckpt = tmp_path / "run.pt"
    cut = fit(_fresh_model(), train, val, config, checkpoint=ckpt, progress=False,
              callbacks=[_interrupt_at(2 * steps + 3)])             # Ctrl-C inside epoch 3
    assert cut.status == "interrupted" and len(cut.history) == 2
    assert load_checkpoint(ckpt)["epoch"] == 2                       # the last good one

    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    resumed = fit(_fresh_model(), train, val, config, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.status == "completed" and resumed.epochs_completed == 4
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def test_stop_event_from_another_thread_stops_within_one_batch(small):
    stop = threading.Event()
    steps = []

    def press_stop_at_step_3(event):
        if event.kind == "batch":
            steps.append(event.step)
            if event.step == 3:
                t = threading.Thread(target=stop.set)
                t.start()
                t.join()

    train, _, _ = small.loaders(batch_size=8, seed=0)
    result = fit(mlp(), train, config=TrainConfig(epochs=5, device="cpu"), progress=False,
                 callbacks=[press_stop_at_step_3], stop_event=stop)
    assert result.status == "stopped" and steps == [1, 2, 3] and result.step == 3


def test_callback_returning_stop_ends_after_that_epoch(small):
    train, _, _ = small.loaders(batch_size=32, seed=0)
    result = fit(mlp(), train, config=TrainConfig(epochs=5, device="cpu"), progress=False,
                 callbacks=[lambda e: "stop" if e.kind == "epoch" and e.epoch == 2 else None])
    assert result.status == "stopped" and len(result.history) == 2


def test_interrupted_checkpoint_write_keeps_the_previous_file(small, tmp_path, monkeypatch):
    ckpt = tmp_path / "c.pt"
    train, _, _ = small.loaders(batch_size=32, seed=0)
    real_fsync, calls = os.fsync, []

    def fsync_then_die(fd):  # Ctrl-C arrives while the second checkpoint is being written
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync_then_die)
    result = fit(mlp(), train, config=TrainConfig(epochs=3, device="cpu"), checkpoint=ckpt,
                 progress=False)
    assert result.status == "interrupted"
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


KILLED_RUN = textwrap.dedent("""
    import sys, torch, torch.nn as nn
    from duat.training import fit, TrainConfig
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2000), nn.Linear(2000, 1000), nn.Linear(1000, 10))
    batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))]
    fit(model, batches, config=TrainConfig(epochs=100000, device="cpu"), checkpoint=sys.argv[1],
        progress=False)
""")


def test_checkpoint_of_a_killed_run_is_never_half_written(tmp_path):
    ckpt = tmp_path / "killed.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(ckpt)])
    try:
        deadline = time.time() + 60
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), "the run wrote no checkpoint"
        time.sleep(0.7)  # several more (~25 MB) checkpoints are being written now
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(ckpt)  # whole, or this raises
    assert state["epoch"] >= 1 and len(state["history"]) == state["epoch"]


def test_checkpoint_from_another_architecture_is_refused(small, tmp_path):
    ckpt = tmp_path / "pf12.pt"
    train, _, _ = small.loaders(batch_size=50, seed=0)
    fit(create_model("pf-1-2", patch_size=4), train, config=TrainConfig(epochs=1, device="cpu"),
        checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="different architecture.*width: 2 in the checkpoint, 4 here"):
        fit(create_model("pf-1-4", patch_size=4), train, config=TrainConfig(epochs=2, device="cpu"),
            checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_checkpoint(ckpt, mlp())
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable duat checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


@pytest.mark.parametrize("kwargs", [dict(epochs=0), dict(lr=-1.0), dict(label_smoothing=1.0),
                                    dict(grad_clip=0.0), dict(seed=-1)])
def test_bad_train_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


# ----------------------------------------------------------------------------- duat train

def test_duat_train_writes_a_run_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli("--model", "pf-1-2", "--epochs", "1", "--out", str(out)) == 0
    for name in ("checkpoint.pt", "results.json", "history.csv", "curves.png"):
        assert (out / name).is_file(), name
    import json

    record = json.loads((out / "results.json").read_text())
    for key in ("config", "seed", "device", "environment", "wall_time_s", "test"):
        assert key in record
    before = (out / "results.json").read_bytes()
    assert train_cli("--model", "pf-1-2", "--epochs", "1", "--out", str(out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before      # the earlier run is untouched
    assert train_cli("--model", "pf-1-2", "--epochs", "2", "--out", str(out), "--resume") == 0
    assert json.loads((out / "results.json").read_text())["epochs_completed"] == 2
    assert train_cli("--model", "pf-1-4", "--epochs", "3", "--out", str(out), "--resume") == 2
    assert "different architecture" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet-50"], "named ones: vit-1"),
    (["--model", "pf-1-2", "--dataset", "imagenet"], "known datasets: digits"),
    (["--model", "pf-1-2", "--fraction", "1.5"], "fraction must be a number in (0, 1]"),
    (["--model", "pf-1-2", "--num-classes", "12"], "the dataset has 10 classes"),
])
def test_duat_train_bad_input(tmp_path, capsys, args, message):
    assert cli.main(["train", "--no-progress", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_duat_train_command_line(tmp_path):
    out = run_cli("train", "--model", "vit-1", "--epochs", "1", "--fraction", "0.1",
                  "--out", tmp_path / "r", "--no-progress")
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout


def test_rng_state_restores_every_generator_a_run_draws_from():
    import random

    import numpy as np

    from duat.training.checkpoints import rng_state, set_rng_state
    state = rng_state()
    first = (random.random(), float(np.random.rand()), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == first
