"""duat.experiments and `duat reproduce`: the experiments are data, a run writes complete
records (JSON + CSV + PNG), earlier results are never overwritten by accident, summaries
and comparisons do the arithmetic they claim, and the committed quick results agree with
their own records. Training runs here use a tiny plan (two small models, 50 digits, one
epoch) monkeypatched into the registry; the real quick plans run with `duat reproduce`."""
import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from duat import experiments as ex
from duat.experiments import plots, sweeps
from duat.experiments.runs import bootstrap_interval, stats
from duat.experiments.twins import twin_differences, width_and_size
from duat.locations import RESULTS_ENV
from duat.storage import PARTIAL, write_csv
from duat.cli import main
from duat.registry import create_model

from conftest import TINY_MODEL, run_cli

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["accuracy-vs-width", "accuracy-vs-depth", "data-scale", "data-diversity"]

TINY = sweeps.Plan(dataset="digits", models=("pf-1-1", "pf-1-2"), variants=({"per_class": 5},),
               seeds=(0, 1), size="tiny", model_overrides=dict(TINY_MODEL),
               epochs=1, batch_size=32, device="cpu", threads=1)


@pytest.fixture
def tiny(monkeypatch):
    """'accuracy-vs-width' with the tiny plan as its quick profile (about a second a run)."""
    name = "accuracy-vs-width"
    monkeypatch.setitem(sweeps.SWEEPS, name, replace(sweeps.SWEEPS[name], quick=TINY))
    return name


def run_tiny(name, out, **kwargs):
    return ex.run_experiment(name, "quick", out=out, progress=False, log=None, **kwargs)


# ----------------------------------------------------------------------------- the registry

def test_list_and_unknown_name():
    assert list(sweeps.SWEEPS) == NAMES
    assert list(ex.EXPERIMENTS) == NAMES + ["finetune", "progressive", "composition"]
    with pytest.raises(ValueError, match="unknown experiment 'nope'") as err:
        sweeps.get_sweep("nope")
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", list(ex.EXPERIMENTS))
def test_every_committed_table_regenerates_byte_identical_from_its_results(name, tmp_path, monkeypatch):
    """load_results finds the experiment by results["experiment"]; its tables, written again
    from the committed results.json, are the committed files byte for byte."""
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    results = ex.load_results(name)
    tables = ex.EXPERIMENTS[name].tables(results)
    assert tables
    for file_name, rows in tables.items():
        write_csv(tmp_path / file_name, rows, float_format=ex.EXPERIMENTS[name].float_format)
        committed = ROOT / "duat" / "results" / name / file_name
        assert (tmp_path / file_name).read_bytes() == committed.read_bytes(), file_name


def test_load_results_refuses_results_of_no_known_experiment(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "nope", "summary": []}))
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        ex.load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"experiment": "finetune", "summary": []}))
    with pytest.raises(ValueError, match="no 'profile', 'spec', 'runs', 'carry_over'"):
        ex.load_results(tmp_path)
    with pytest.raises(ValueError, match="not supported for the finetune experiment"):
        ex.compare_results(ex.load_results("finetune"), ex.load_results("finetune"))


def test_results_compare_only_with_results_of_the_same_kind():
    with pytest.raises(ValueError, match="the reference holds accuracy-vs-width results"):
        ex.compare_results(ex.load_results("composition"), ex.load_results("accuracy-vs-width"))
    assert ex.compare_results(ex.load_results("data-scale"), ex.load_results("data-scale"))


def test_quick_plans_are_the_documented_sweeps():
    width = sweeps.get_sweep("accuracy-vs-width").quick
    assert {f"pf-1-{n}" for n in (1, 2, 4, 8, 12)} <= set(width.models)
    assert {f"vit-{n}" for n in (2, 4, 8, 12)} <= set(width.models)
    depth = sweeps.get_sweep("accuracy-vs-depth").quick
    assert {"pf-2-2", "pf-3-4", "vit-12"} <= set(depth.models)
    scale = sweeps.get_sweep("data-scale").quick
    assert [v["fraction"] for v in scale.variants] == [0.1, 0.25, 0.5, 1.0]
    diversity = sweeps.get_sweep("data-diversity").quick
    assert [v["num_classes"] for v in diversity.variants] == [2, 5, 10]
    totals = {v["num_classes"] * v["per_class"] for v in diversity.variants}
    assert totals == {250}  # the same number of training images for every k
    for name in NAMES:
        plan = sweeps.get_sweep(name).quick
        assert plan.dataset == "digits" and plan.device == "cpu" and plan.threads == 1
        assert len(plan.seeds) >= 2  # a spread to report
        assert sweeps.get_sweep(name).full.dataset != "digits"


@pytest.mark.parametrize("n", [2, 12])
def test_paraformer_1_n_and_vit_n_have_equal_parameter_counts(n):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    kw = dict(image_size=8, in_channels=1, num_classes=10, patch_size=4)
    assert count(create_model(f"pf-1-{n}", **kw)) == count(create_model(f"vit-{n}", **kw))
    assert count(create_model(f"pf-1-{n}", **kw)) > count(create_model("vit-1", **kw))


@pytest.mark.parametrize("name", ["data-scale", "data-diversity"])
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_data_sweeps_run_every_paraformer_next_to_its_serial_twin_of_equal_cost(name, profile):
    """Para-Former-1-n with n > 1 is compared with ViT-n (same layers, parameters and FLOPs),
    not only with ViT-1 (about n times smaller), in both profiles."""
    from duat.counting import count_parameters, flops
    from duat.registry import parse_name

    plan = sweeps.get_sweep(name).plan(profile)
    assert set(plan.models) == {"pf-1-1", "pf-1-4", "pf-1-12", "vit-4", "vit-12"}
    kw = dict(image_size=8, in_channels=1, patch_size=4)
    for model in plan.models:
        m, n = parse_name(model)
        if n > 1:
            for k in sorted({v.get("num_classes", 10) for v in plan.variants}):
                pf, vit = (create_model(x, plan.size, num_classes=k, **kw) for x in (model, f"vit-{n}"))
                assert f"vit-{n}" in plan.models
                assert count_parameters(pf) == count_parameters(vit)
                assert flops(pf.config) == flops(vit.config) and pf.config.layers == vit.config.layers == n
                assert count_parameters(pf) > 3 * count_parameters(create_model("pf-1-1", plan.size,
                                                                                num_classes=k, **kw))


def test_every_question_points_to_its_section_of_the_method():
    method = (ROOT / "docs" / "method.md").read_text()
    for name in NAMES:
        question = sweeps.get_sweep(name).question
        assert question.startswith("docs/method.md 5."), question
        section = question.split()[1].rstrip(":")
        assert f"\n### {section} " in method, f"docs/method.md has no section {section}"
        assert "PAPER" not in question
    assert sweeps.get_sweep("data-scale").question.startswith("docs/method.md 5.3:")
    assert sweeps.get_sweep("accuracy-vs-width").question.startswith("docs/method.md 5.1:")


def test_plan_needs_epochs_or_steps():
    with pytest.raises(ValueError, match="either epochs or steps"):
        sweeps.Plan(dataset="digits", models=("vit-1",))
    with pytest.raises(ValueError, match="either epochs or steps"):
        sweeps.Plan(dataset="digits", models=("vit-1",), epochs=1, steps=10)


# ----------------------------------------------------------------------------- running

def test_tiny_run_writes_complete_records_and_refuses_to_overwrite(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))   # the default folder: $DUAT_RESULTS/<name>
    results = run_tiny(tiny, None)
    out = tmp_path / tiny
    assert results["out"] == str(out)
    for f in ("results.json", "results.csv", "summary.csv", f"{tiny}.png"):
        assert (out / f).is_file(), f
    assert (out / f"{tiny}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    saved = json.loads((out / "results.json").read_text())
    records = saved["records"]
    assert len(records) == 4  # 2 models x 2 seeds
    assert {(r["model"], r["seed"]) for r in records} == {(m, s) for m in TINY.models for s in (0, 1)}
    for r in records:
        assert r["device"] == "cpu" and r["threads"] == 1 and r["wall_time_s"] > 0
        assert {"torch", "python", "numpy", "duat"} <= set(r["versions"])
        assert r["config"]["model"]["dim"] == 16 and r["config"]["model"]["width"] == r["width"]
        assert r["config"]["train"]["seed"] == r["seed"] and r["config"]["data"]["per_class"] == 5
        assert r["train_samples"] == 50 and r["test_samples"] == 359
        assert 0.0 <= r["test_acc"] <= 1.0
    assert saved["summary"] == sweeps.sweep_summary(records)
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4
    assert {"model", "seed", "test_acc", "device", "wall_time_s"} <= set(rows[0].split(","))
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + 2

    # A second run into the same folder is refused before any training, files untouched.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import duat.training.engine as engine

    def no_training(*a, **k):
        raise AssertionError("trained although the run was refused")

    with monkeypatch.context() as m:
        m.setattr(engine, "fit", no_training)
        with pytest.raises(FileExistsError, match="overwrite"):
            run_tiny(tiny, None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # With overwrite it runs again; on one CPU thread the same seeds give the same accuracies.
    again = run_tiny(tiny, None, overwrite=True)
    assert [r["test_acc"] for r in again["records"]] == [r["test_acc"] for r in records]
    assert json.loads((out / "results.json").read_text())["wall_time_s"] == again["wall_time_s"]
    assert ex.load_results(tiny)["records"][0]["test_acc"] == records[0]["test_acc"]


def test_run_options_are_checked(tiny, tmp_path):
    with pytest.raises(ValueError, match="seeds"):
        run_tiny(tiny, tmp_path / "a", seeds=[-1])
    with pytest.raises(ValueError, match="threads"):
        run_tiny(tiny, tmp_path / "b", threads=0)
    with pytest.raises(ValueError, match="no runs"):
        run_tiny(tiny, tmp_path / "c", write=False, limit=lambda r: False)
    with pytest.raises(ValueError, match="unknown experiment"):
        ex.run_experiment("nope", write=False)


def test_limit_runs_a_slice_without_writing(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    results = run_tiny(tiny, None, write=False, limit=lambda r: r["model"] == "pf-1-2" and r["seed"] == 1)
    assert [(r["model"], r["seed"]) for r in results["records"]] == [("pf-1-2", 1)]
    assert "out" not in results and not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- arithmetic

def record(model="pf-1-2", seed=0, acc=0.9, fraction=1.0, k=10, per_class=None):
    from duat.registry import parse_name

    m, n = parse_name(model)
    return {"model": model, "depth": m, "width": n, "layers": m * n, "params": 1000 * m * n,
            "family": "vit" if n == 1 else "paraformer", "fraction": fraction, "per_class": per_class,
            "num_classes": k, "seed": seed, "test_acc": acc,
            "test_acc_above_chance": (acc - 1 / k) / (1 - 1 / k), "test_samples": 100}


def test_summarize_gives_mean_and_sample_std_over_seeds():
    rows = sweeps.sweep_summary([record(seed=0, acc=0.8), record(seed=1, acc=0.9), record(seed=2, acc=1.0),
                         record("vit-2", acc=0.5), record(fraction=0.5, acc=0.7)])
    assert len(rows) == 3  # grouped by model and data variant, never across them
    main_row = rows[0]
    assert main_row["seeds"] == 3
    assert main_row["test_acc_mean"] == pytest.approx(0.9)
    assert main_row["test_acc_std"] == pytest.approx(0.1)          # sample std (n - 1)
    assert (main_row["test_acc_min"], main_row["test_acc_max"]) == (0.8, 1.0)
    assert main_row["test_acc_above_chance_mean"] == pytest.approx((0.9 - 0.1) / 0.9)
    assert rows[1]["seeds"] == 1 and rows[1]["test_acc_std"] == 0.0
    assert rows[2]["fraction"] == 0.5 and rows[2]["test_acc_mean"] == pytest.approx(0.7)


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_means():
    values = [3.0, -1.0, 4.0, 1.0, 5.0, -2.0, 6.0]
    low, high = bootstrap_interval(values, level=0.9, resamples=400,
                                      generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)             # the documented recipe, step by step
    idx = torch.randint(len(values), (400, len(values)), generator=g)
    means = torch.tensor(values, dtype=torch.float64)[idx].mean(1)
    assert (low, high) == (torch.quantile(means, 0.05).item(), torch.quantile(means, 0.95).item())
    assert min(values) < low < sum(values) / len(values) < high < max(values)
    wider = bootstrap_interval(values, level=0.99, resamples=400,
                                  generator=torch.Generator().manual_seed(7))
    assert wider[0] <= low and wider[1] >= high      # a higher level, a wider interval
    assert bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    for bad in ({"values": []}, {"values": [1.0], "level": 1.0}, {"values": [1.0], "resamples": 0},
                {"values": [1.0, float("nan")]}, {"values": "abc"}, {"values": [1.0, "x"]},
                {"values": [1.0], "resamples": 2.5}):
        with pytest.raises(ValueError):
            bootstrap_interval(**bad)


def test_compare_results_flags_differences_beyond_the_seed_spread():
    ref = {"summary": sweeps.sweep_summary([record(seed=s, acc=a) for s, a in enumerate((0.90, 0.92, 0.94))]
                                   + [record("vit-2", seed=s, acc=0.8) for s in range(3)])}
    same = {"summary": sweeps.sweep_summary([record(seed=s, acc=a) for s, a in enumerate((0.93, 0.95, 0.97))]
                                    + [record("vit-2", seed=s, acc=0.8) for s in range(3)])}
    rows = {r["model"]: r for r in sweeps.compare_sweep(same, ref)}
    assert rows["pf-1-2"]["difference"] == pytest.approx(0.03)
    assert rows["pf-1-2"]["tolerance"] == pytest.approx(0.04)      # 2 sd over seeds
    assert rows["pf-1-2"]["within"] and rows["vit-2"]["within"]
    assert rows["vit-2"]["tolerance"] == pytest.approx(0.01)       # sd 0: one test image of 100

    moved = {"summary": sweeps.sweep_summary([record(seed=s, acc=a) for s, a in enumerate((0.96, 0.98, 1.0))]
                                     + [record("vit-2", seed=s, acc=0.82) for s in range(3)])}
    rows = {r["model"]: r for r in sweeps.compare_sweep(moved, ref)}
    assert not rows["pf-1-2"]["within"] and not rows["vit-2"]["within"]

    other = {"summary": sweeps.sweep_summary([record("pf-1-8")])}
    with pytest.raises(ValueError, match="share no configuration"):
        sweeps.compare_sweep(other, ref)


def synthetic_results(name):
    """Records shaped like a real run of the quick plan (two seeds), for the plots."""
    plan = sweeps.get_sweep(name).quick
    records = []
    for v in plan.variants:
        for seed in (0, 1):
            for i, model in enumerate(plan.models):
                k = v.get("num_classes", 10)
                records.append(record(model, seed, 0.8 + 0.01 * i + 0.005 * seed,
                                      v.get("fraction", 1.0), k, v.get("per_class")))
    e = sweeps.get_sweep(name)
    return {"experiment": name, "title": e.title, "x": e.x, "profile": "quick",
            "environment": {"device_name": "test CPU"}, "records": records,
            "summary": sweeps.sweep_summary(records)}


@pytest.mark.parametrize("name", NAMES)
def test_every_experiment_has_a_plot_and_a_table(name):
    import matplotlib.pyplot as plt

    results = synthetic_results(name)
    fig = ex.plot_results(results)
    assert any(a.lines or a.collections for a in fig.axes)
    plt.close(fig)
    table = ex.format_summary(results).splitlines()
    assert len(table) == len(results["summary"])
    assert all("+-" in line and "2 seeds" in line for line in table)


def test_load_results_explains_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="duat reproduce data-scale --quick"):
        ex.load_results("data-scale")


def test_compare_with_a_file_that_is_not_an_experiments_results_is_one_line(tmp_path, capsys):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "results.json").write_text('{"records": []}')  # e.g. a benchmark's, cut short
    args = ["reproduce", "accuracy-vs-width", "--out", str(tmp_path / "new"), "--compare", str(tmp_path / "ref")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a results file of this kind: no 'experiment'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]  # nothing trained or written


# ----------------------------------------------------------------------------- CLI

def test_cli_list_and_bad_names(capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    for name in NAMES + ["finetune"]:
        assert name in listed
    assert main(["reproduce", "no-such-experiment"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-experiment'" in err
    assert all(name in err for name in NAMES + ["finetune"])
    assert main(["reproduce"]) == 2                              # no name: the list and the usage
    assert "usage" in capsys.readouterr().err
    assert main(["reproduce", "all", "--compare", "x.json"]) == 2
    assert "single experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:                     # argparse: a bad option value
        main(["reproduce", "data-scale", "--seeds", "one"])
    assert exit_.value.code == 2


def test_cli_bad_name_exits_2_as_a_process():
    proc = run_cli("reproduce", "nope", timeout=120)
    assert proc.returncode == 2
    assert "unknown experiment 'nope'" in proc.stderr and "accuracy-vs-width" in proc.stderr


def test_cli_runs_refuses_overwrite_and_compares(tiny, tmp_path, capsys):
    first = tmp_path / "first"
    args = ["reproduce", tiny, "--quick", "--no-progress"]
    assert main(args + ["--out", str(first)]) == 0
    out = capsys.readouterr().out
    assert "Para-Former-1-2" in out and "+-" in out and str(first) in out

    assert main(args + ["--out", str(first)]) == 2                       # an earlier run's folder
    assert "--overwrite" in capsys.readouterr().err

    # The rerun matches the first run within the seed spread: exit 0.
    assert main(args + ["--out", str(tmp_path / "rerun"), "--compare", str(first)]) == 0
    out = capsys.readouterr().out
    assert "2/2 configurations within the seed spread" in out and "OUTSIDE" not in out

    # A reference whose means lie far away: flagged, exit 1.
    moved = json.loads((first / "results.json").read_text())
    for row in moved["summary"]:
        shift = 0.45 if row["test_acc_mean"] < 0.5 else -0.45      # beyond any 2-seed spread
        row["test_acc_mean"] += shift
        row["test_acc_std"] = 0.0
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    assert main(args + ["--out", str(tmp_path / "third"), "--compare", str(tmp_path / "moved.json")]) == 1
    out = capsys.readouterr().out
    assert "OUTSIDE" in out and "0/2 configurations within the seed spread" in out

    # A missing reference fails before any training.
    assert main(args + ["--out", str(tmp_path / "fourth"), "--compare", str(tmp_path / "none")]) == 2
    assert "no results" in capsys.readouterr().err
    assert not (tmp_path / "fourth").exists()


def test_cli_compare_without_out_does_not_clash_with_the_reference(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    (tmp_path / tiny).mkdir()
    (tmp_path / tiny / "results.json").write_text(json.dumps({"summary": []}))
    assert main(["reproduce", tiny, "--quick", "--compare", tiny]) == 2
    assert "--out DIR" in capsys.readouterr().err


# ----------------------------------------------------------------------------- committed results

@pytest.mark.parametrize("name", NAMES)
def test_committed_quick_results_agree_with_their_records(name, monkeypatch):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    path = ROOT / "duat" / "results" / name / "results.json"   # committed, shipped as package data
    assert path.is_file(), f"no committed results for {name}"
    assert ex.load_results(name) == json.loads(path.read_text())  # by name: the committed ones
    results = json.loads(path.read_text())
    plan = sweeps.get_sweep(name).quick
    assert results["profile"] == "quick" and results["experiment"] == name
    runs = {(r["model"], json.dumps({k: r[k] for k in ("fraction", "per_class")}), r["seed"])
            for r in results["records"]}
    assert len(runs) == len(plan.models) * len(plan.variants) * len(plan.seeds) == len(results["records"])
    assert {r["model"] for r in results["records"]} == set(plan.models)
    assert results["summary"] == sweeps.sweep_summary(results["records"])
    for r in results["records"]:
        assert r["device"] == "cpu" and r["dataset"] == "digits" and math.isfinite(r["wall_time_s"])
    assert (path.parent / f"{name}.png").is_file() and (path.parent / "results.csv").is_file()


def test_twin_differences_pair_paraformer_with_the_serial_vit_of_equal_size():
    results = {"records": [record("pf-1-4", 0, 0.95), record("vit-4", 0, 0.93), record("pf-1-4", 1, 0.90),
                           record("vit-4", 1, 0.92), record("pf-2-2", 0, 0.91), record("pf-1-2", 0, 0.9),
                           record("vit-1", 0, 0.5)]}
    rows = twin_differences(results)
    assert [(r["model"], r["twin"], r["seed"]) for r in rows] == [("pf-1-4", "vit-4", 0), ("pf-1-4", "vit-4", 1),
                                                                 ("pf-2-2", "vit-4", 0)]
    assert [r["difference"] for r in rows] == pytest.approx([0.02, -0.02, -0.02])
    assert [r["images"] for r in rows] == [2, -2, -2]   # of 100 test images; pf-1-2 has no vit-2 here


def test_width_and_size_split_the_gain_of_n_layers_into_arrangement_and_size():
    recs = []
    for seed, (one, serial, parallel) in enumerate([(0.80, 0.85, 0.88), (0.82, 0.86, 0.85), (0.78, 0.84, 0.87)]):
        recs += [record("pf-1-1", seed, one), record("vit-4", seed, serial), record("pf-1-4", seed, parallel),
                 record("pf-1-4", seed, parallel - 0.1, fraction=0.5)]   # a variant without its twins
    recs.append(record("pf-1-4", 3, 0.99))                                # a seed without its twins
    rows = width_and_size({"records": recs}, n=4)
    assert len(rows) == 1
    r = rows[0]
    assert r["seeds"] == [0, 1, 2] and (r["parallel_model"], r["serial_model"]) == ("pf-1-4", "vit-4")
    assert r["parallel_mean"] == pytest.approx((0.88 + 0.85 + 0.87) / 3)
    assert r["arrangement_mean"] == pytest.approx((0.03 - 0.01 + 0.03) / 3)     # paired by seed
    assert r["size_mean"] == pytest.approx((0.05 + 0.04 + 0.06) / 3)
    assert r["total_mean"] == pytest.approx(r["arrangement_mean"] + r["size_mean"])
    assert r["arrangement_std"] == pytest.approx(stats([0.03, -0.01, 0.03])["std"])
    assert (r["arrangement_wins"], r["arrangement_losses"], r["size_wins"]) == (2, 1, 3)
    assert r["one_image"] == pytest.approx(0.01)                              # 100 test images
    above = width_and_size({"records": recs}, n=4, metric="test_acc_above_chance")[0]
    assert above["one_image"] == pytest.approx(0.01 / 0.9)
    table = plots.format_width_and_size(rows, "fraction").splitlines()
    assert len(table) == 3 + 1 and "100% of the data" in table[-1] and "+5.0 +- 1.0 (3/3)" in table[-1]
    with pytest.raises(ValueError, match="no variant"):
        width_and_size({"records": recs}, n=12)
    with pytest.raises(ValueError, match="n >= 2"):
        width_and_size({"records": recs}, n=1)


@pytest.mark.parametrize("name", ["data-scale", "data-diversity"])
def test_committed_data_sweeps_hold_the_equal_cost_comparison(name, monkeypatch):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    results = ex.load_results(name)
    rows = width_and_size(results, n=12)
    assert len(rows) == len(sweeps.get_sweep(name).quick.variants)
    for r in rows:
        assert r["seeds"] == [0, 1, 2]
        assert r["total_mean"] == pytest.approx(r["arrangement_mean"] + r["size_mean"])
    params = {r["model"]: r["params"] for r in results["records"] if r["num_classes"] == 10}
    assert params["pf-1-12"] == params["vit-12"] and params["pf-1-4"] == params["vit-4"]


def test_committed_results_point_to_the_method_not_a_missing_file(monkeypatch):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    for name in NAMES:
        folder = ROOT / "duat" / "results" / name
        assert ex.load_results(name)["question"] == sweeps.get_sweep(name).question
        for f in folder.iterdir():
            if f.suffix in (".json", ".csv"):
                assert "PAPER.md" not in f.read_text(), f
        env = json.dumps(ex.load_results(name)["environment"])
        assert not re.search(r"(^|[\s\"'=])(/|~|[A-Za-z]:\\)", env), env   # no paths of the machine


def test_heat_map_colours_span_at_least_two_seed_spreads_each_way():
    low, high = plots.heatmap_range([[0.94, 0.96]], [[0.004, 0.012]])
    assert (low, high) == (pytest.approx(0.95 - 0.024), pytest.approx(0.95 + 0.024))
    low, high = plots.heatmap_range([[0.5, 0.9]], [[0.01, 0.01]])        # wide means: all shown
    assert (low, high) == (pytest.approx(0.5), pytest.approx(0.9))


def test_a_run_that_fails_leaves_no_empty_folder(tiny, tmp_path, monkeypatch):
    def unavailable(*args, **kwargs):
        raise RuntimeError("dataset not available (test)")

    monkeypatch.setattr("duat.data.load_data", unavailable)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="not available"):
        run_tiny(tiny, out)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("an earlier file")
    with pytest.raises(RuntimeError):
        run_tiny(tiny, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "an earlier file"  # a folder with files stays


def test_an_interrupted_sweep_keeps_its_runs_and_resumes_to_the_same_results(tiny, tmp_path,
                                                                              interrupt_then_resume):
    from duat.training import engine

    whole = run_tiny(tiny, tmp_path / "whole")                  # 4 runs, uninterrupted
    out = tmp_path / "run"

    def two_runs_kept():
        saved = json.loads((out / PARTIAL).read_text())
        assert len(saved["done"]) == 2 and not (out / "results.json").exists()

    resumed, calls = interrupt_then_resume(lambda **kw: run_tiny(tiny, out, **kw), engine, "fit",
                                           stop_at=3, after_stop=two_runs_kept)  # Ctrl-C in run 3
    assert calls == 2                                            # only the runs not done
    assert not (out / PARTIAL).exists()
    acc = lambda res: [(r["model"], r["seed"], r["test_acc"]) for r in res["records"]]
    assert acc(resumed) == acc(whole)
    with pytest.raises(FileExistsError, match="finished run"):
        run_tiny(tiny, out, resume=True)


def test_resume_refuses_another_plan_or_nothing_to_resume(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_tiny(tiny, tmp_path / "empty", resume=True)
    out = tmp_path / "run"
    out.mkdir()
    (out / PARTIAL).write_text(json.dumps({"experiment": tiny, "profile": "quick",
                                              "plan": {"seeds": [9]}, "keys": [], "records": []}))
    with pytest.raises(ValueError, match="another experiment, profile or plan"):
        run_tiny(tiny, out, resume=True)
