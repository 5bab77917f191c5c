"""The claims table (duat.experiments.claims, .verdicts): generated from the committed results,
never typed. It fails when a committed result changes and the README's block or notebook 00's
stored table no longer follows from it (rerun `duat claims --write-readme` and re-execute
notebook 00), when a verdict rule stops doing what it states, or when `duat claims` does not
behave as the other commands do.
"""
from __future__ import annotations

import copy
import json
import re
import statistics
from pathlib import Path

import pytest
from conftest import run_cli

from duat.bench import load_decode_run
from duat.cli import main
from duat.experiments import claims as C
from duat.experiments.decode_claims import decode_claim
from duat.experiments import load_results
from duat.experiments.verdicts import (DOES_NOT, HOLDS, NOT_TESTED, PARTLY, THRESHOLDS, VERDICTS,
                                       Comparison, Pooled, cap, compression_verdict, current_block,
                                       readme_block, replace_block, rules, share_verdict,
                                       to_markdown, to_text, verdict_of)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table():
    return C.claims_table()


# ----------------------------------------------------------------------------- (a) generated

def test_readme_block_is_the_generated_table(table):
    block = current_block((ROOT / "README.md").read_text(encoding="utf-8"))
    assert block is not None, "README.md has no claims block"
    assert block == readme_block(to_markdown(table)), (
        "the README's claims table no longer follows from the committed results: "
        "run `duat claims --write-readme`")


def test_notebook_00_shows_the_generated_table(table):
    nb = json.loads((ROOT / "notebooks" / "00_start_here.ipynb").read_text(encoding="utf-8"))
    shown = ["".join(out["data"]["text/markdown"]) for cell in nb["cells"]
             for out in cell.get("outputs", []) if "text/markdown" in out.get("data", {})]
    assert shown == [to_markdown(table)], (
        "notebook 00's stored claims table is stale: re-execute it with tools/nb.py")


def test_every_row_is_complete_and_points_at_what_exists(table):
    assert len({c.key for c in table}) == len(table)
    for c in table:
        assert c.verdict in VERDICTS and c.rule in {r.key for r in rules()}, c
        assert c.source.startswith("method.md "), c
        assert all([c.claim, c.measured, c.device, c.seeds, c.where]), c
        assert not re.search(r"(/work/|/home/|/Users/|site-packages)", c.measured + c.where), c
        for nb in re.findall(r"\b\d\d\b", c.where.split("·")[0]):
            assert list((ROOT / "notebooks").glob(f"{nb}_*.ipynb")), c.where
        for path in re.findall(r"(?:tests|duat/results)/[\w./-]+", c.where):
            assert (ROOT / path.rstrip(",")).exists(), path
        if c.verdict == NOT_TESTED:
            assert c.rule == "F"


def test_every_committed_latency_run_has_a_row(table):
    keys = {c.key for c in table}
    assert {f"{'decode' if r.get('kind') == 'decode' else 'latency'}:{name}"
            for name, r in C.bench_runs().items()} <= keys
    assert {f"latency:{k}" for k, r in C.branch_runs().items() if r["processes"] == 1} <= keys


def test_missing_results_make_rows_not_tested(tmp_path, monkeypatch):
    monkeypatch.setenv("DUAT_RESULTS", str(tmp_path))      # an empty results folder
    rows = C.claims_table()
    assert {c.key for c in rows if c.verdict != NOT_TESTED} == {"mvm", "duat"}   # the identities
    assert all("no committed results" in c.measured for c in rows if c.key.startswith(("width", "scale")))


# ----------------------------------------------------------------------------- (b) the rules

def test_rule_a_reaches_every_verdict_and_a_small_change_flips_it():
    t = THRESHOLDS["spread"]
    just_above, just_below = Comparison("a", t * 0.01 + 1e-6, 0.01), Comparison("b", t * 0.01 - 1e-6, 0.01)
    assert just_above.counts and not just_below.counts
    assert verdict_of([just_above, just_above]) == HOLDS
    assert verdict_of([just_above, just_below]) == PARTLY
    assert verdict_of([just_below, just_below]) == DOES_NOT
    assert verdict_of([]) == NOT_TESTED
    assert not Comparison("one image", 0.002, 0.0, unit=1 / 359).counts   # below one test image


def test_rule_a_pooled_pairs():
    n = THRESHOLDS["min_pairs"]
    strong = Pooled.of([0.01, 0.012, 0.011, 0.009, 0.010, 0.011][:n])
    assert strong.counts and not Pooled.of([0.01, 0.012]).counts           # too few pairs
    assert not Pooled.of([0.01, -0.01] * n).counts
    small = Comparison("within the spread", 0.005, 0.01)
    assert verdict_of([small, small], strong) == HOLDS                      # pooled, all > 0
    assert verdict_of([small, Comparison("zero", 0.0, 0.01)], strong) == PARTLY
    assert verdict_of([small, small], Pooled.of([0.01, -0.01] * n)) == DOES_NOT


def test_caps_shares_and_compression():
    assert [cap(v) for v in VERDICTS] == [PARTLY, PARTLY, DOES_NOT, NOT_TESTED]
    assert [share_verdict(h, 3) for h in (3, 1, 0)] == [HOLDS, PARTLY, DOES_NOT]
    assert share_verdict(0, 0) == NOT_TESTED
    paper, least = THRESHOLDS["compress_paper"], THRESHOLDS["compress_min"]
    assert [compression_verdict(r) for r in (paper, paper - 0.01, least, least - 0.01)] == [
        HOLDS, PARTLY, PARTLY, DOES_NOT]


def test_rules_state_their_thresholds():
    text = " ".join(r.text for r in rules())
    for key in ("spread", "pooled_se", "min_pairs", "flat", "compress_paper", "compress_min"):
        assert f"{THRESHOLDS[key]:g}" in text, key


def _sweep(accs: dict, seeds=(0, 1, 2), test_samples=359) -> dict:
    """A synthetic data-scale result: accs[(model, fraction)] = one accuracy per seed."""
    records, summary = [], []
    for (model, fraction), values in accs.items():
        parts = [int(x) for x in model.split("-")[1:]]
        depth, width = (parts[0], parts[1]) if model.startswith("pf-") else (parts[0], 1)
        base = dict(model=model, depth=depth, width=width, layers=depth * width,
                    params=1000 * depth * width, fraction=fraction, per_class=None, num_classes=10,
                    test_samples=test_samples)
        records += [dict(base, seed=s, test_acc=v, test_acc_above_chance=v) for s, v in zip(seeds, values)]
        stat = {"mean": statistics.fmean(values), "std": statistics.stdev(values)}
        summary.append(dict(base, **{f"{m}_{k}": v for m in ("test_acc", "test_acc_above_chance")
                                     for k, v in stat.items()}))
    return {"records": records, "summary": summary, "plan": {"seeds": list(seeds)},
            "environment": {"device": "cpu", "cpu": "test CPU", "cpu_count": 2}}


def _scale(vit: float | None) -> dict:
    accs = {}
    for f, base in ((0.1, 0.80), (1.0, 0.93)):
        for n, gain in ((1, 0.0), (4, 0.02), (12, 0.03)):
            accs[(f"pf-1-{n}", f)] = [base + gain - 0.002, base + gain, base + gain + 0.002]
            if vit is not None and n > 1:
                accs[(f"vit-{n}", f)] = [base + vit * gain - 0.002, base + vit * gain, base + vit * gain + 0.002]
    return _sweep(accs)


def test_width_at_every_scale_follows_the_serial_control():
    without = {c.key: c for c in C.scale_claims(_scale(None))}
    assert without["scale-width"].verdict == PARTLY                     # size alone: capped
    assert "serial control ViT-n missing" in without["scale-width"].measured
    worse, same = ({c.key: c for c in C.scale_claims(_scale(v))} for v in (0.0, 1.0))
    assert worse["scale-width"].verdict == HOLDS and "ViT-n - ViT-1" in worse["scale-width"].measured
    assert same["scale-width"].verdict == DOES_NOT                      # parallel = serial
    assert worse["scale"].verdict == HOLDS                              # data +0.13 > width +0.03


def test_data_scale_must_beat_the_width_to_count_as_strong():
    res = _scale(None)
    for r in res["records"] + res["summary"]:
        if r["fraction"] == 1.0:        # data now gains 0.01 (and it still counts), width 0.03
            for key in ("test_acc", "test_acc_above_chance", "test_acc_mean", "test_acc_above_chance_mean"):
                if key in r:
                    r[key] -= 0.12
    row = {c.key: c for c in C.scale_claims(res)}["scale"]
    assert row.verdict == PARTLY and "not larger than the width's" in row.measured


def test_perturbing_committed_numbers_flips_their_verdicts():
    ft = copy.deepcopy(load_results("finetune"))
    for r in ft["summary"]:
        r["pretrained_mean"] = r["scratch_mean"] - 0.05
    for r in ft["runs"]:
        r["test_acc"] -= 0.2 * (r["init"] == "pretrained")
    assert C.finetune_claims(ft)[0].verdict == DOES_NOT

    pr = copy.deepcopy(load_results("progressive"))
    for e in pr["expansion"]:               # the old task kept exactly in every seed ...
        e["expansion_a_prefix"], e["expansion_a_logits_identical"] = e["a_before"], True
    assert C.progressive_claims(pr)[2].verdict in (HOLDS, PARTLY)
    pr["expansion"][0]["expansion_a_prefix"] -= 1 / 180     # ... but for one image of one seed
    assert C.progressive_claims(pr)[2].verdict == DOES_NOT
    for r in pr["summary"]["compression"]:
        r["lost_mean"], r["ratio"] = (0.0, 16.0) if r["k"] == 1 else (r["lost_mean"], r["ratio"])
    assert C.progressive_claims(pr)[1].verdict == HOLDS
    for r in pr["summary"]["compression"]:
        r["lost_mean"] = 0.0 if r["ratio"] < 2 else 0.02
    assert C.progressive_claims(pr)[1].verdict == DOES_NOT

    width = copy.deepcopy(load_results("accuracy-vs-width"))
    for r in width["summary"] + width["records"]:
        if r["model"].startswith("vit-"):
            for key in ("test_acc", "test_acc_mean"):
                if key in r:
                    r[key] += 0.1              # every serial twin far ahead
    assert {c.key: c for c in C.width_claims(width)}["width-twin"].verdict == DOES_NOT


def test_latency_rule_on_a_committed_run():
    name, res = next((k, r) for k, r in sorted(C.bench_runs().items()) if r["records"])
    res = copy.deepcopy(res)
    n = max(r["layers"] for r in res["records"])
    for r in res["records"]:   # make Para-Former flat and the serial ViT linear in every case
        one = next(o for o in res["records"] if o["implementation"] == r["implementation"] and o["layers"] == 1
                   and all(o[k] == r[k] for k in ("batch", "dim", "variant")))
        factor = 1.0 if r["implementation"] == "pf-batched" else r["layers"]
        for q in ("median_ms", "p25_ms", "p75_ms"):
            r[q] = one[q] * factor
    assert C.latency_claim(res, name).verdict == HOLDS
    for r in res["records"]:
        if r["implementation"] == "pf-batched" and r["layers"] == n:
            r["median_ms"] *= 2 * THRESHOLDS["flat"]
    assert C.latency_claim(res, name).verdict == DOES_NOT


# ----------------------------------------------------------------------------- (c) the command

def test_duat_claims_prints_every_row(table):
    out = run_cli("claims")
    assert out.returncode == 0, out.stderr
    assert len(re.findall(r"(?m)^\s*\d+\. \[", out.stdout)) == len(table)
    for c in table:
        assert f"[{c.verdict}]" in out.stdout


def test_duat_claims_markdown(capsys, table):
    assert main(["claims", "--markdown"]) == 0
    assert capsys.readouterr().out == to_markdown(table) + "\n"
    assert to_text(table).count("\n    measured: ") == len(table)


@pytest.mark.parametrize("args", [["claims", "--no-such-option"], ["claims", "--markdown", "--write-readme"],
                                  ["claims", "extra"]])
def test_bad_usage_exits_2_with_usage(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "usage: duat" in capsys.readouterr().err


def test_write_readme(tmp_path, capsys, table):
    readme = tmp_path / "README.md"
    readme.write_text("# a copy\n\n<!-- claims:begin -->\nold\n<!-- claims:end -->\n\nthe rest\n")
    assert main(["claims", "--write-readme", str(readme)]) == 0
    text = readme.read_text()
    assert current_block(text) == readme_block(to_markdown(table)) and text.endswith("the rest\n")
    assert main(["claims", "--write-readme", str(readme)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert replace_block(text, to_markdown(table)) == text
    readme.write_text("no markers here\n")
    assert main(["claims", "--write-readme", str(readme)]) == 2
    assert main(["claims", "--write-readme", str(tmp_path / "absent.md")]) == 2
    assert capsys.readouterr().err.count("duat claims: error:") == 2


def test_the_decode_row_reads_the_committed_decode_run_and_would_say_holds_if_flat():
    name = "cpu-decode-2026-12-07"
    run = load_decode_run(name)
    row = decode_claim(run, name)
    assert row.rule == "B" and name in row.where and "notebook 13" in row.where
    assert row.verdict in (DOES_NOT, PARTLY) and "GPT-24" in row.measured
    flat = copy.deepcopy(run)                      # every Para-Former-1-n as fast as its n = 1
    ones = {(r["batch"], r["dim"]): r for r in flat["records"] if r["implementation"] == "pf" and r["layers"] == 1}
    for r in flat["records"]:
        if r["implementation"] == "pf":
            r.update({k: ones[r["batch"], r["dim"]][k] for k in ("median_ms", "p25_ms", "p75_ms")})
    cases = len({(r["batch"], r["dim"]) for r in run["records"]})
    assert decode_claim(flat, name).verdict == HOLDS
    assert f"in {cases} of {cases} cases" in decode_claim(flat, name).measured
