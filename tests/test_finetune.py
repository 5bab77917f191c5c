"""`duat reproduce finetune` (duat.experiments.finetune): the spec, a tiny end-to-end run (a ViT-2
pre-trained for one epoch on digits 0-4, fine-tuned on digits 5-9), the summary's
arithmetic, refusals, the CLI hand-over from `duat reproduce`, and the committed quick
results."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from duat.experiments import EXPERIMENTS, load_results
from duat.cli import main
from duat.storage import PARTIAL
from duat.experiments.finetune import (FinetuneSpec, format_carry_over, format_table, make_spec,
                                       paired_summary, run_finetune)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(source_model="vit-2", source_epochs=1, per_class=(2,), seeds=(0, 1),
            layouts=("vit-2", "pf-1-2"), steps=4, head_steps=2, carry_steps=2, batch_size=8)


def test_spec_profiles_and_refusals():
    quick, full = make_spec("quick"), make_spec("full")
    assert quick.source == "pretrain" and quick.device == "cpu"
    assert full.source == "ViT_B_16_Weights.IMAGENET1K_V1" and full.targets == ("cifar10", "cifar100")
    assert make_spec("quick", seeds=[4], steps=None).seeds == (4,)      # None keeps the default
    with pytest.raises(ValueError, match="unknown profile 'medium'"):
        make_spec("medium")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['epochs'\]"):
        make_spec("quick", epochs=3)
    with pytest.raises(ValueError, match="per_class values must be positive"):
        FinetuneSpec(per_class=(0, 5))
    with pytest.raises(ValueError, match="layouts must be a non-empty sequence"):
        FinetuneSpec(layouts="vit-4")
    with pytest.raises(ValueError, match="unknown model name 'pf-2'"):
        FinetuneSpec(layouts=("pf-2",))
    with pytest.raises(ValueError, match="head_steps must be an int >= 0"):
        FinetuneSpec(head_steps=-1)


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune")
    return out, run_finetune("quick", out=out, progress=False, **TINY)


def test_tiny_experiment_end_to_end(tiny_results):
    out, results = tiny_results
    for name in ("results.json", "results.csv", "runs.csv", "finetune_curves.png", "carry_over.png"):
        assert (out / name).is_file(), name
    assert load_results(out)["summary"] == json.loads(json.dumps(results["summary"]))
    runs = results["runs"]
    assert len(runs) == 1 * 2 * 2 * 2                  # per_class x seeds x layouts x inits
    for r in runs:
        assert r["train_size"] == 2 * 5 and r["per_class"] == 2
        assert (r["head_acc"] is None) == (r["init"] == "scratch")
    # the same number of updates for both inits, on the same examples
    steps = {(r["layout"], r["seed"], r["init"]): r["steps"] for r in runs}
    assert all(steps[(l, s, "pretrained")] == steps[(l, s, "scratch")] for l, s, _ in steps)
    # carry-over: the serial layout is the source itself, the parallel one is not
    carry = {(r["layout"], r["assignment"]): r for r in results["carry_over"]}
    assert set(carry) == {("vit-2", "stage-major"), ("pf-1-2", "stage-major")}   # strided: same
    serial = carry[("vit-2", "stage-major")]
    assert serial["source_acc"] == results["source"]["test_acc"]
    assert serial["agreement"] == 1.0 and serial["feature_cosine"] == pytest.approx(1.0)
    assert carry[("pf-1-2", "stage-major")]["placement"] == [[0, 1]]
    for r in carry.values():
        assert 0.0 <= r["source_acc_after"] <= 1.0 and 0.0 <= r["source_scratch_after"] <= 1.0
    assert "pf-1-2" in format_carry_over(results["carry_over"])
    assert "wins" in format_table(results["summary"])


def test_summary_statistics_are_paired_over_seeds():
    runs = [dict(dataset="d", layout="vit-2", per_class=5, train_size=25, seed=s, init=i,
                 test_acc=a, head_acc=0.3 if i == "pretrained" else None)
            for s, i, a in [(0, "pretrained", 0.6), (0, "scratch", 0.5),
                            (1, "pretrained", 0.4), (1, "scratch", 0.5)]]
    (row,) = paired_summary(runs)
    assert row["pretrained_mean"] == pytest.approx(0.5) and row["scratch_mean"] == pytest.approx(0.5)
    assert row["pretrained_std"] == pytest.approx(0.1414, abs=1e-4)      # sample std
    assert row["gain_mean"] == pytest.approx(0.0) and row["gain_std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["gain_wins"] == 1 and row["probe_mean"] == pytest.approx(0.3)


def test_an_earlier_run_is_not_overwritten(tiny_results):
    out, _ = tiny_results
    with pytest.raises(FileExistsError, match="overwrite"):
        run_finetune("quick", out=out, progress=False, **TINY)
    with pytest.raises(FileNotFoundError, match="give a results.json, its folder"):
        load_results(out / "nothing-here")


def test_layouts_must_fit_the_source(tmp_path):
    with pytest.raises(ValueError, match=r"m\*n = 4 blocks but the source has L = 2"):
        run_finetune("quick", out=tmp_path, progress=False, **{**TINY, "layouts": ("pf-2-2",)})


def test_duat_reproduce_hands_finetune_over(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(profile, **kwargs):
        seen.update(kwargs, profile=profile)
        return {"experiment": "finetune", "runs": [], "wall_time_s": 0.0, "summary": [],
                "out": str(tmp_path)}

    monkeypatch.setitem(EXPERIMENTS, "finetune", replace(EXPERIMENTS["finetune"], run=fake))
    assert main(["reproduce", "finetune", "--quick", "--out", str(tmp_path), "--seeds", "3", "4",
                 "--per-class", "5", "--layouts", "vit-4", "pf-1-4", "--weights", "w.pt",
                 "--arch", "vit-4", "--threads", "1", "--no-download"]) == 0
    assert seen["profile"] == "quick" and seen["out"] == str(tmp_path)
    assert seen["seeds"] == [3, 4] and seen["per_class"] == [5]
    assert seen["layouts"] == ["vit-4", "pf-1-4"] and seen["source"] == "w.pt"
    assert seen["source_arch"] == "vit-4" and seen["threads"] == 1 and seen["download"] is False
    assert main(["reproduce", "--list"]) == 0
    assert "finetune" in capsys.readouterr().out
    assert main(["reproduce", "finetune", "--compare", "x.json"]) == 2


def test_duat_reproduce_finetune_reports_errors(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("an earlier run")
    assert main(["reproduce", "finetune", "--quick", "--out", str(tmp_path)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert main(["reproduce", "finetune", "--quick", "--out", str(tmp_path / "new"),
                 "--weights", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err
    assert "torchvision's named weights" in err and "checkpoint of the kit's own training" in err


def test_committed_quick_results_are_consistent(monkeypatch):
    monkeypatch.delenv("DUAT_RESULTS", raising=False)
    path = REPO / "duat" / "results" / "finetune" / "results.json"   # shipped as package data
    assert path.is_file(), "no committed duat/results/finetune"
    results = load_results("finetune")
    assert results == json.loads(path.read_text())   # the default: the committed run
    assert results["profile"] == "quick" and results["experiment"] == "finetune"
    assert paired_summary(results["runs"]) == results["summary"]
    spec = results["spec"]
    assert len(results["runs"]) == (len(spec["per_class"]) * len(spec["seeds"])
                                    * len(spec["layouts"]) * 2 * len(spec["targets"]))


def test_a_run_without_its_source_leaves_no_empty_folder(tmp_path):
    from duat.experiments.finetune import run_finetune

    out = tmp_path / "run"
    with pytest.raises(Exception, match="nothing.pth"):
        run_finetune("quick", out=out, progress=False, source=str(tmp_path / "nothing.pth"),
                       source_arch="vit-4")
    assert not out.exists()


def test_an_interrupted_run_resumes_with_the_same_source_and_results(tiny_results, tmp_path,
                                                                     interrupt_then_resume):
    import duat.experiments.finetune as ft

    _, whole = tiny_results
    out = tmp_path / "run"

    def three_runs_and_the_source_kept():
        assert len(json.loads((out / PARTIAL).read_text())["done"]) == 3
        assert (out / ft.PARTIAL_SOURCE).is_file() and not (out / "results.json").exists()

    def other_settings_are_refused():
        with pytest.raises(ValueError, match="other settings"):
            run_finetune("quick", out=out, progress=False, resume=True, **{**TINY, "lr": 1e-4})

    resumed, calls = interrupt_then_resume(
        lambda **kw: run_finetune("quick", out=out, progress=False, **TINY, **kw),
        ft, "finetune_run", stop_at=4, after_stop=three_runs_and_the_source_kept,  # Ctrl-C in run 4
        before_resume=other_settings_are_refused)
    assert calls == len(whole["runs"]) - 3                # only the runs not done
    assert not (out / PARTIAL).exists() and not (out / ft.PARTIAL_SOURCE).exists()
    key = lambda r: (r["layout"], r["per_class"], r["seed"], r["init"], r["test_acc"])
    assert sorted(map(key, resumed["runs"])) == sorted(map(key, whole["runs"]))
    assert resumed["source"]["test_acc"] == whole["source"]["test_acc"]
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_finetune("quick", out=tmp_path / "none", progress=False, resume=True, **TINY)


def test_a_layout_that_does_not_fit_the_source_is_refused_before_training(tmp_path):
    from duat.experiments.finetune import run_finetune

    with pytest.raises(ValueError, match=r"m\*n = 9 blocks but the source has L = 4"):
        run_finetune("quick", out=tmp_path / "run", progress=False, layouts=("pf-3-3",))
    assert not (tmp_path / "run").exists()
    assert make_spec("quick", layouts=("pf-1-2",), select="last").layouts == ("pf-1-2",)


def test_the_carry_over_figure_gives_each_quantity_its_own_axis():
    # accuracy, the agreement (a fraction of images) and the cosine (a similarity) are
    # different quantities: one panel, one y label each, none a catch-all "fraction"
    import matplotlib.pyplot as plt

    from duat.experiments.plots import plot_carry_over

    fig = plot_carry_over(load_results(REPO / "duat" / "results" / "finetune"))
    try:
        labels = [ax.get_ylabel() for ax in fig.axes]
        assert labels == ["test accuracy", "fraction of target images", "cosine similarity"]
        assert [len(ax.patches) for ax in fig.axes] == [3 * 4, 4, 4]   # 4 committed layouts
    finally:
        plt.close(fig)
