"""duat.experiments.composition: the spec refuses what cannot run, a tiny experiment writes
its files, resumes after Ctrl-C to the same records, gives the same records in worker
processes, and the prediction and comparison rules answer as stated."""
import json

import pytest

from duat import cli
from duat.experiments import composition as comp
from duat.storage import PARTIAL

TINY = dict(models=("gpt-1", "pf-1-2"), tasks=(("copy", 8, 2), ("induction", 9, 2)),
            text_models=("gpt-1",), seeds=(0, 1), dim=16, heads=2, mlp_ratio=2.0,
            train_sequences=64, test_sequences=32, epochs=1, batch_size=32, context=16,
            text_windows=64, workers=1)


def run_tiny(out, **kw):
    return comp.run_composition("quick", out=out, progress=False, log=None, **{**TINY, **kw})


@pytest.mark.parametrize("overrides, error", [
    (dict(models=("vit-x",)), "unknown model name"),
    (dict(tasks=(("induction", 8, 4),)), "below the pattern"),
    (dict(tasks=(("sorting", 8, 1),)), "unknown task"),
    (dict(workers=0), "workers must be >= 1"),
    (dict(seeds=[0, -1]), "seed must be an int >= 0"),
    (dict(threads=0), "threads must be a positive int"),
    (dict(colour="red"), "unknown option"),
])
def test_the_spec_refuses_what_cannot_run(overrides, error):
    with pytest.raises(ValueError, match=error):
        comp.spec("quick", **overrides)
    with pytest.raises(ValueError, match="unknown profile"):
        comp.spec("huge")


def test_profiles_pair_every_para_former_with_its_equal_size_serial_model():
    for profile in comp.PROFILES:
        s = comp.spec(profile)
        layers = {m: int(m.split("-")[1]) * (int(m.split("-")[2]) if m.startswith("pf") else 1)
                  for m in s.models}
        for model, L in layers.items():       # GPT-L or another layout of L layers is there
            assert model == "gpt-1" or any(other != model and n == L for other, n in layers.items()), model
        assert len(s.seeds) >= 3 and len({t[1] for t in s.tasks if t[0] == "induction"}) >= 2


def test_a_tiny_experiment_writes_its_files_and_records(tmp_path):
    res = run_tiny(tmp_path / "run")
    out = tmp_path / "run"
    assert {"results.json", "summary.csv", "runs.csv", "accuracy.png"} <= {p.name for p in out.iterdir()}
    assert not (out / PARTIAL).exists()
    assert len(res["records"]) == 2 * 2 * 2 + 2                 # tasks x seeds x models + text
    text = [r for r in res["records"] if r["task"] == "text"]
    assert all(r["bits_per_char"] > 0 and len(r["sample"]) == 16 for r in text)
    pf, gpt = ([r for r in res["records"] if r["model"] == m and r["task"] == "copy"][0]
               for m in ("pf-1-2", "gpt-1"))
    assert pf["params"] > gpt["params"]                         # pf-1-2 = GPT-2's size, not GPT-1's
    rows = {(r["task"], r["model"]): r for r in res["summary"]}
    assert rows[("copy", "gpt-1")]["n"] == 2
    assert json.loads((out / "results.json").read_text())["spec"]["seeds"] == [0, 1]
    with pytest.raises(FileExistsError):
        run_tiny(out)                                           # never overwritten silently


def test_an_interrupted_experiment_resumes_to_the_same_records(tmp_path, interrupt_then_resume):
    whole = run_tiny(tmp_path / "whole", tasks=(("copy", 8, 2),), text_models=())
    out = tmp_path / "run"
    resumed, calls = interrupt_then_resume(
        lambda **kw: run_tiny(out, tasks=(("copy", 8, 2),), text_models=(), **kw), comp, "fit",
        stop_at=3)
    assert calls == 2                                           # the two runs not done
    acc = lambda res: [(r["model"], r["seed"], r["test_acc"]) for r in res["records"]]
    assert acc(resumed) == acc(whole)
    with pytest.raises(ValueError, match="other settings"):
        (out / "results.json").unlink()
        json.dump({"identity": {}, "done": {}}, open(out / PARTIAL, "w"))
        run_tiny(out, resume=True)


@pytest.mark.slow
def test_worker_processes_give_the_same_records(tmp_path):
    tasks = (("copy", 8, 2),)
    one = comp.run_composition("quick", write=False, progress=False, log=None, **{**TINY, "tasks": tasks,
                                                                                   "text_models": ()})
    two = comp.run_composition("quick", write=False, progress=False, log=None,
                              **{**TINY, "tasks": tasks, "text_models": (), "workers": 2})
    key = lambda res: [(r["model"], r["seed"], r["test_acc"], r["test_loss"]) for r in res["records"]]
    assert key(one) == key(two)


def _summary(task, length, means, std=0.01):
    return [{"task": task, "length": length, "model": m, "depth": int(m.split("-")[1]) if m.startswith("pf")
             else int(m.split("-")[1]), "width": int(m.split("-")[2]) if m.startswith("pf") else 1,
             "mean": v, "std": std, "n": 3} for m, v in means.items()]


@pytest.mark.parametrize("means, verdict", [
    ({"gpt-2": 0.99, "pf-1-2": 0.4, "pf-1-4": 0.5, "pf-2-2": 0.98}, "held"),
    ({"gpt-2": 0.99, "pf-1-2": 0.4, "pf-1-4": 0.95, "pf-2-2": 0.98}, "did not hold"),
    ({"gpt-2": 0.99, "pf-1-2": 0.4, "pf-1-4": 0.89, "pf-2-2": 0.98}, "did not hold"),  # within 2 sd
    ({"gpt-2": 0.99, "pf-1-2": 0.4, "pf-1-4": 0.5, "pf-2-2": 0.3}, "partly"),
    ({"gpt-2": 0.6, "pf-1-2": 0.4, "pf-1-4": 0.5, "pf-2-2": 0.98}, "not tested"),
])
def test_the_prediction_rule(means, verdict):
    rows = comp.prediction({"summary": _summary("induction", 16, means) + _summary("copy", 16, means)})
    assert len(rows) == 1 and rows[0]["verdict"].startswith(verdict)   # copy is not a composed task


def test_compare_flags_a_mean_outside_the_seed_spread():
    ref = {"summary": _summary("mqar", 16, {"gpt-2": 0.9, "pf-1-2": 0.3}, std=0.05)}
    new = {"summary": _summary("mqar", 16, {"gpt-2": 0.85, "pf-1-2": 0.5})}
    within = {r["model"]: r["within"] for r in comp.compare_composition(new, ref)}
    assert within == {"gpt-2": True, "pf-1-2": False}


def test_the_command_line_refuses_in_one_line(capsys):
    assert cli.main(["reproduce", "composition", "--data-root", "x"]) == 2
    assert cli.main(["reproduce", "composition", "--layouts", "pf-1-2"]) == 2
    assert cli.main(["reproduce", "composition", "--compare", "composition"]) == 2  # the committed
    err = capsys.readouterr().err                                  # folder is not rerun into
    assert err.count("error:") == 3 and "ships with Python" in err and "only `duat reproduce finetune`" in err
    assert "write the rerun elsewhere: --out DIR" in err


@pytest.mark.parametrize("copy_mean, induction_pf, verdict", [
    (0.99, 0.5, "holds"), (0.5, 0.5, "partly"), (0.99, 0.95, "does not")])
def test_the_claims_row_reads_rule_g(copy_mean, induction_pf, verdict):
    from duat.experiments.composition_claims import composition_claim
    from duat.experiments.verdicts import VERDICTS
    means = {"gpt-2": 0.99, "pf-1-2": induction_pf, "pf-2-2": 0.98}
    summary = (_summary("induction", 16, means) + _summary("copy", 16, {m: copy_mean for m in means})
               + _summary("mqar", 16, {"gpt-2": 0.5, "pf-1-2": 0.3, "pf-2-2": 0.98}))  # not tested
    res = {"summary": summary, "environment": {"device": "cpu", "cpu": "x", "threads": 1},
           "spec": {"seeds": [0, 1, 2]}}
    claim = composition_claim(res)
    assert claim.verdict == verdict and claim.verdict in VERDICTS and claim.rule == "G"
    assert f"held in {int(induction_pf < 0.9)} and partly in 0 of 1 tested cases" in claim.measured
    assert "mqar T=16: not tested" in claim.measured
