"""Language models through the kit's one loop: fit and evaluate score only the positions a
task scores (IGNORE elsewhere), a resumed run ends with the weights of an uninterrupted one,
the schedules record every prefix, `duat train --task` writes a run and refuses bad input
in one line, and duat.inside draws a causal model's attention maps."""
import contextlib
import json

import pytest
import torch
import torch.nn.functional as F

from duat import cli
from duat.inside import attention_maps
from duat.registry import create_model
from duat.tasks import IGNORE, SequenceLoader, SequenceTask, load_task
from duat.training import TrainConfig, evaluate, fit


def tiny_lm(name="pf-1-2", vocab=16, T=12, seed=0):
    torch.manual_seed(seed)
    return create_model(name, language=True, vocab_size=vocab, positions=T, dim=16, heads=2,
                        mlp_ratio=2.0)


def copy_data(count=96, seed=0):
    return SequenceTask("copy", 12, vocab_size=16, offset=2).generate(count, seed)


def test_evaluate_scores_only_the_scored_positions():
    model = tiny_lm()
    x, y = SequenceTask("mqar", 12, vocab_size=16, pairs=3).generate(40, seed=1)
    r = evaluate(model, SequenceLoader(x, y, 16))
    with torch.no_grad():
        logits = model(x)
    scored = y != IGNORE
    assert r["samples"] == int(scored.sum()) == 40 * 3
    expected = F.cross_entropy(logits[scored], y[scored])
    assert r["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert r["accuracy"] == pytest.approx((logits[scored].argmax(-1) == y[scored]).float().mean().item())


def test_fit_lowers_the_loss_on_a_task_and_a_resumed_run_matches(tmp_path):
    x, y = copy_data()
    config = TrainConfig(epochs=2, lr=3e-3, device="cpu")
    whole = fit(tiny_lm(), SequenceLoader(x, y, 32, shuffle=True), None, config, progress=False)
    assert whole.history[-1]["train_loss"] < whole.history[0]["train_loss"]
    ckpt = tmp_path / "ck.pt"
    first = fit(tiny_lm(), SequenceLoader(x, y, 32, shuffle=True), None,
                TrainConfig(epochs=1, lr=3e-3, device="cpu"), checkpoint=ckpt, progress=False)
    assert first.epochs_completed == 1
    resumed = fit(tiny_lm(seed=5), SequenceLoader(x, y, 32, shuffle=True), None, config,
                  checkpoint=ckpt, resume=True, progress=False)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("schedule", ["joint", "progressive", "branchwise"])
def test_every_schedule_trains_a_language_model_and_records_each_prefix(schedule):
    x, y = copy_data(64)
    r = fit(tiny_lm(), SequenceLoader(x, y, 32, shuffle=True), SequenceLoader(x, y, 64),
            TrainConfig(epochs=2, device="cpu"), schedule=schedule, progress=False)
    assert {"prefix_acc_1", "prefix_acc_2", "val_acc"} <= set(r.history[-1])


def test_duat_train_task_writes_a_run_and_refuses_another_task_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "gpt-2", "--task", "copy", "--length", "12", "--vocab-size", "16",
            "--train-sequences", "64", "--epochs", "1", "--no-progress", "--device", "cpu",
            "--out", str(out)]
    assert cli.main(args) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["data"]["task"] == "copy" and record["test"]["samples"] == 1000 * 11
    assert {"checkpoint.pt", "history.csv", "curves.png"} <= {p.name for p in out.iterdir()}
    other = [a if a != "copy" else "induction" for a in args] + ["--epochs", "2", "--resume"]
    assert cli.main(other) == 2
    assert "trained on other data" in capsys.readouterr().err
    assert cli.main(args[:-2] + ["--epochs", "2", "--resume", "--out", str(out)]) == 0


def test_duat_train_on_a_text_file_reports_bits_per_character(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "pf-1-2", "--text", str(text), "--length", "16",
                     "--train-sequences", "64", "--epochs", "1", "--no-progress", "--device",
                     "cpu", "--out", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["test"]["bits_per_char"] > 0 and len(record["sample"]) == 16
    assert record["config"]["data"]["text"] == "notes.txt"            # the name, not a path


@pytest.mark.parametrize("extra, error", [
    (["--task", "sorting"], "invalid choice"),
    (["--task", "mqar", "--vocab-size", "6"], "vocab_size >= 10"),
    (["--task", "induction", "--length", "6"], "below the pattern"),
    (["--task", "copy", "--patch-size", "2"], "--patch-size is for images"),
    (["--task", "copy", "--model", "vit-2"], "serial language model is 'gpt-L'"),
    (["--task", "copy", "--text", "x.txt"], "--text is the corpus of --task text"),
    (["--text", "FOLDER"], "needs a file, got the folder"),
    (["--text", "EMPTY"], "is empty"),
    (["--text", "LATIN1"], "not UTF-8"),
    (["--text", "SHORT", "--length", "32"], "fewer than the context"),
])
def test_duat_train_refuses_bad_language_input_in_one_line(extra, error, tmp_path, capsys):
    files = {"FOLDER": tmp_path, "EMPTY": tmp_path / "empty.txt", "LATIN1": tmp_path / "l.txt",
             "SHORT": tmp_path / "short.txt"}
    files["EMPTY"].write_text("")
    files["LATIN1"].write_bytes("caf\xe9 au lait".encode("latin-1"))
    files["SHORT"].write_text("too short")
    extra = [str(files.get(a, a)) for a in extra]
    out = tmp_path / "run"
    with pytest.raises(SystemExit) if error == "invalid choice" else contextlib.nullcontext():
        status = cli.main(["train", "--model", "gpt-2", *extra, "--out", str(out), "--no-progress"])
        assert status == 2
    err = capsys.readouterr().err
    assert error in err and not out.exists()


def test_attention_maps_of_a_causal_model_are_causal_distributions():
    model = tiny_lm("pf-2-2")
    x, _ = SequenceTask("induction", 12, vocab_size=16, pairs=2).generate(3, seed=0)
    maps = attention_maps(model, x)
    assert len(maps) == 2 and maps[0].shape == (2, 3, 2, 12, 12)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 3, 2, 12))
    assert (maps[1].triu(1) == 0).all()                          # nothing after the query
    splits = load_task("copy", length=12, vocab_size=16, train_sequences=8, test_sequences=8)
    assert splits.model_kwargs() == {"vocab_size": 16, "positions": 12}
