"""`duat reproduce progressive` (duat.experiments.progressive), branch scoring and compression
(duat.inside), and `duat train --schedule`: the spec and its refusals, a tiny end-to-end
run with its files, the summary's arithmetic, resume after Ctrl-C, the CLI, and the
committed quick results."""
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import train_cli
from duat.cli import main
from duat.data import load_data
from duat.experiments import EXPERIMENTS, load_results, progressive
from duat.experiments.progressive import (ProgressiveSpec, make_spec, progressive_summary,
                                          run_progressive)
from duat.inside import best_branches, compress, score_branches, without_branch
from duat.paraformer import ParaFormer
from duat.training import evaluate

REPO = Path(__file__).resolve().parents[1]
TINY = dict(width=2, epochs=2, seeds=(0,), batch_size=64, finetune_epochs=1, timing_calls=3,
            width_a=1, extra=1, epochs_a=1, epochs_b=1)
FILES = ("results.json", "schedules.csv", "compression.csv", "latency.csv", "expansion.csv",
         "summary.csv", "prefix_curves.png", "compression.png", "forgetting.png")


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("progressive")
    torch.set_num_threads(1)
    return out, run_progressive("quick", out=out, progress=False, log=None, **TINY)


def test_spec_profiles_and_refusals():
    quick, full = make_spec("quick"), make_spec("full")
    assert quick.dataset == "digits" and quick.device == "cpu" and len(quick.seeds) >= 3
    assert full.dataset == "cifar10" and full.device == "auto"
    assert make_spec("quick", seeds=[4], width=None).seeds == (4,)       # None keeps the default
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['steps'\]"):
        make_spec("quick", steps=3)
    with pytest.raises(ValueError, match="epochs .* must be >= width"):
        ProgressiveSpec(width=4, epochs=3)
    with pytest.raises(ValueError, match="disjoint"):
        ProgressiveSpec(task_a=(0, 1), task_b=(1, 2))
    with pytest.raises(ValueError, match="width must be a positive int"):
        ProgressiveSpec(width=0)


def test_tiny_run_writes_every_file_and_its_records_add_up(tiny_results):
    out, results = tiny_results
    for name in FILES:
        assert (out / name).is_file(), name
    assert not (out / "partial.json").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(progressive_summary(saved)))
    assert {r["schedule"] for r in saved["schedules"]} == {"joint", "progressive", "branchwise"}
    for r in saved["schedules"]:
        assert [p["k"] for p in r["prefixes"]] == [1, 2]
        assert r["test_acc"] == r["prefixes"][-1]["test_acc"]
        assert all(f"prefix_loss_{k}" in h for h in r["history"] for k in (1, 2))
    by = {r["schedule"]: r["updates"] for r in saved["schedules"]}
    assert by["progressive"] == 3 * by["joint"] and by["branchwise"] == by["joint"]  # n + 1 steps a batch
    comp = saved["compression"]
    assert {(r["trained"], r["method"]) for r in comp} == {
        (t, m) for t in ("joint", "progressive") for m in ("loo", "norm", "first")}
    for r in comp:
        assert r["params"] < r["full_params"] or r["k"] == 2
        assert (r["test_acc_finetuned"] is not None) == (r["method"] == "loo" and r["k"] < 2)
    assert [r["k"] for r in saved["latency"]] == [1, 2]
    assert all(r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] for r in saved["latency"])
    (e,) = saved["expansion"]
    assert e["expansion_a_logits_identical"] is True and e["expansion_a_prefix"] == e["a_before"]
    assert e["params_expanded"] > e["params_a"]
    assert "compression" in progressive.format_report(saved)


def test_an_earlier_run_is_not_overwritten(tiny_results):
    out, _ = tiny_results
    with pytest.raises(FileExistsError):
        run_progressive("quick", out=out, progress=False, log=None, **TINY)


def test_an_interrupted_run_resumes_with_the_same_results(tiny_results, tmp_path,
                                                          interrupt_then_resume):
    _, whole = tiny_results
    out = tmp_path / "run"

    def two_units_kept():
        assert len(json.loads((out / "partial.json").read_text())["done"]) == 2

    resumed, calls = interrupt_then_resume(
        lambda **kw: run_progressive("quick", out=out, progress=False, log=None, **TINY, **kw),
        progressive, "schedule_unit", stop_at=3, after_stop=two_units_kept)  # Ctrl-C in branchwise
    assert calls == 1                                                      # only branchwise again
    key = lambda r: (r["schedule"], r["seed"], [p["test_acc"] for p in r["prefixes"]])  # noqa: E731
    assert sorted(map(key, resumed["schedules"])) == sorted(map(key, whole["schedules"]))
    untimed = lambda e: {k: v for k, v in e.items() if not k.endswith("_s")}  # noqa: E731
    assert list(map(untimed, resumed["expansion"])) == list(map(untimed, whole["expansion"]))


def test_cli_hands_over_and_refuses_what_it_does_not_take(tmp_path, capsys, monkeypatch):
    seen = {}

    def fake(profile, **kw):
        seen.update(kw, profile=profile)
        raise SystemExit(0)
    monkeypatch.setitem(EXPERIMENTS, "progressive", replace(EXPERIMENTS["progressive"], run=fake))
    with pytest.raises(SystemExit):
        main(["reproduce", "progressive", "--quick", "--out", str(tmp_path), "--seeds", "3",
              "--no-progress"])
    assert seen["profile"] == "quick" and seen["seeds"] == [3] and seen["out"] == str(tmp_path)
    assert main(["reproduce", "progressive", "--compare", "x"]) == 2
    assert main(["reproduce", "progressive", "--layouts", "vit-4"]) == 2
    err = capsys.readouterr().err
    assert "--compare is not supported" in err and "only `duat reproduce finetune`" in err
    assert main(["reproduce", "--list"]) == 0
    assert "progressive" in capsys.readouterr().out


def _trained():
    torch.manual_seed(0)
    model = ParaFormer(image_size=8, patch_size=4, dim=16, heads=2, depth=2, width=3)
    splits = load_data("digits", per_class=10, seed=0)
    return model, splits.loaders(32)


def test_scores_rank_branches_and_compress_keeps_the_best():
    model, (train, val, _) = _trained()
    base = evaluate(model, val)["loss"]
    loo = score_branches(model, val, "loo")
    assert loo.shape == (2, 3)
    assert loo[1, 2].item() == pytest.approx(evaluate(without_branch(model, 1, 2), val)["loss"] - base)
    norm = score_branches(model, val, "norm", images=16)
    assert norm.shape == (2, 3) and (norm > 0).all()
    first = score_branches(model, val, "first")
    assert best_branches(first, 2) == [[0, 1], [0, 1]]
    scores = torch.tensor([[0.1, 0.3, 0.2], [5.0, -1.0, 0.0]])
    assert best_branches(scores, 2) == [[1, 2], [0, 2]]              # kept in their own order
    small = compress(model, 2, scores)
    assert small.config.width == 2 and small.config.depth == 2
    with pytest.raises(ValueError, match="cannot keep 4 branches"):
        best_branches(scores, 4)
    with pytest.raises(ValueError, match="do not fit"):
        compress(model, 1, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        score_branches(model, val, "random")


def test_duat_train_schedule_records_prefixes_and_refuses_a_resume_with_another(tmp_path):
    out = tmp_path / "run"
    assert train_cli("--model", "pf-1-2", "--epochs", "2", "--schedule", "branchwise",
                     "--out", str(out)) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["schedule"] == "branchwise"
    assert [h["phase"] for h in saved["history"]] == [1, 2]
    assert "prefix_acc_2" in (out / "history.csv").read_text().splitlines()[0]
    assert train_cli("--model", "pf-1-2", "--epochs", "3", "--schedule", "joint", "--out", str(out),
                     "--resume") == 2
    assert train_cli("--model", "pf-1-4", "--epochs", "2", "--schedule", "branchwise",
                     "--out", str(tmp_path / "other")) == 2          # epochs < n
    assert not (tmp_path / "other").exists()


def test_committed_quick_results_are_consistent(monkeypatch):
    monkeypatch.delenv("DUAT_RESULTS", raising=False)
    path = REPO / "duat" / "results" / "progressive" / "results.json"
    assert path.is_file(), "no committed duat/results/progressive"
    results = load_results("progressive")
    assert results == json.loads(path.read_text())
    assert results["profile"] == "quick" and results["experiment"] == "progressive"
    assert json.loads(json.dumps(progressive_summary(results))) == results["summary"]
    spec = results["spec"]
    assert len(results["schedules"]) == 3 * len(spec["seeds"])
    assert len(results["expansion"]) == len(spec["seeds"]) >= 3
    assert all(e["expansion_a_logits_identical"] for e in results["expansion"])


@pytest.mark.parametrize("budget", [None, 16])
def test_the_batched_prefix_never_touches_the_other_branches(budget, monkeypatch):
    """Branches k+1..n poisoned with NaN leave y_k finite and unchanged: they are not computed."""
    from duat.paraformer import ParallelStage

    monkeypatch.setattr(ParallelStage, "cpu_row_budget", budget)
    torch.manual_seed(0)
    model = ParaFormer(image_size=8, patch_size=4, dim=16, heads=2, depth=2, width=4).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        before = model(x, branches=2)
        for stage in model.stages:
            for p in stage.parameters():
                p[2:] = float("nan")
        after = model(x, branches=2)
        assert torch.equal(before, after)
        assert torch.isnan(model(x)).all()


def test_old_task_rows_hold_what_the_old_prefix_uses_and_refuse_bad_input():
    from duat.surgery import expand, old_task_rows

    torch.manual_seed(0)
    old = ParaFormer(image_size=8, patch_size=4, dim=16, heads=2, width=2, num_classes=4)
    big = expand(old, 1, seed=0)
    pairs = old_task_rows(big, 2, [0, 1])
    assert (big.head.weight, [0, 1]) in [(p, i) for p, i in pairs if p is big.head.weight]
    assert any(p is big.pos_embed for p, _ in pairs) and any(p is big.norm.weight for p, _ in pairs)
    assert all(i == [0, 1] for p, i in pairs if p is big.stages[0].qkv_weight)
    with pytest.raises(ValueError, match="head rows in 0..3"):
        old_task_rows(big, 2, [4])
    with pytest.raises(ValueError, match="1 <= k <= n = 3"):
        old_task_rows(big, 0, [0])
