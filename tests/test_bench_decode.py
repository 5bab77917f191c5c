"""The decode benchmark (duat.bench.decode, decode_run, decode_model): well-formed records,
the model's terms, the byte and FLOP counts by hand, clear refusals, the committed run read
back and drawn. Nothing here asserts a timing: the targets are read off a run's output."""
import argparse
import json
import math
from dataclasses import fields

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from duat import bench
from duat.bench import decode, decode_run
from duat.bench.cli import decode_spec_from_args
from duat.bench.decode import DecodeRecord, DecodeSpec, decode_cost
from duat.cli import main

matplotlib.use("Agg")

COMMITTED = "cpu-decode-2026-12-07"
PEER = decode.peer_available() is None
# The smallest run that still exercises everything: D 16 and 32, n 1 and 2, batch 1 and 2.
TINY = dict(layers=(1, 2), dims=(16, 32), batches=(1, 2), peer_layers=(1,) if PEER else (),
            prompt_tokens=3, new_tokens=3, reps=2, min_reps=2, warmup=1, rounds=2,
            peak_sizes=(64,), bandwidth_bytes=2 ** 20, max_case_seconds=0.05, device="cpu",
            threads=1)  # one thread: no stalls on a busy machine (nothing here is a timing)
TINY_ARGS = ["--device", "cpu", "--threads", "1", "--dims", "16", "--layers", "1", "2", "--batch", "1", "--reps",
             "2", "--new-tokens", "3", "--prompt-tokens", "3", "--max-case-seconds", "0.05"]


@pytest.fixture(scope="module")
def tiny():
    return decode_run.run_decode(DecodeSpec(**TINY))


@pytest.fixture(scope="module")
def committed():
    return bench.load_decode_run(COMMITTED)


# ----------------------------------------------------------------------------- records

def test_records_have_every_field(tiny):
    recs = tiny["records"]
    want = {(i, n, B, D) for D in (16, 32) for B in (1, 2)
            for i, n in [("gpt", 1), ("gpt", 2), ("pf", 1), ("pf", 2)] + ([("hf-gpt2", 1)] if PEER else [])}
    assert {(r["implementation"], r["layers"], r["batch"], r["dim"]) for r in recs} == want
    names = {f.name for f in fields(DecodeRecord)}
    for r in recs:
        assert set(r) == names
        assert all(r[k] is not None for k in names - {"graph_max_abs_diff"}), r["model"]
        assert r["device"] == "cpu" and r["variant"] == "eager" and r["positions"] == 6
        assert r["reps"] >= 2 and r["steps"] == r["reps"] * 3 == len(r["samples_ms"])
        assert 0 < r["min_ms"] <= r["p10_ms"] <= r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] <= r["p90_ms"]
        assert r["prefill_p25_ms"] <= r["prefill_median_ms"] <= r["prefill_p75_ms"]
        assert math.isclose(r["tokens_per_s"], r["batch"] / r["median_ms"] * 1e3)
        assert r["bytes"] == r["weights_bytes"] + r["kv_bytes"] and r["ops"] > 0
    for key, unit in (("peak", "gflops"), ("bandwidth", "gbps")):
        rate = tiny[key]
        assert 0 < rate[f"{unit}_p25"] <= rate[unit] <= rate[f"{unit}_p75"]
    assert tiny["kind"] == "decode" and tiny["wall_s"] > 0


def test_prediction_terms_are_positive_and_the_model_is_their_max(tiny):
    tau, gbps, peak = (tiny["overhead"]["us_per_op"], tiny["bandwidth"]["gbps"],
                       tiny["peak"]["gflops"])
    for r in tiny["records"]:
        terms = {"overhead": r["overhead_ms"], "bytes": r["bytes_ms"], "flops": r["flop_ms"]}
        assert all(t > 0 for t in terms.values())
        assert r["predicted_ms"] == max(terms.values()) and terms[r["bound_by"]] == r["predicted_ms"]
        assert math.isclose(r["overhead_ms"], r["ops"] * tau / 1e3)
        assert math.isclose(r["bytes_ms"], r["bytes"] / gbps / 1e6)
        assert math.isclose(r["flop_ms"], r["flops"] / peak / 1e6)
    graph = decode.add_prediction(dict(tiny["records"][0], variant="graph"), tau, gbps, peak)
    assert graph["overhead_ms"] is None and graph["bound_by"] in ("bytes", "flops")


def test_batched_stage_dispatches_as_many_ops_at_every_n(tiny):
    ops = {(r["implementation"], r["layers"]): r["ops"] for r in tiny["records"]
           if r["batch"] == 1 and r["dim"] == 16}
    assert ops["pf", 2] - ops["pf", 1] < ops["gpt", 2] - ops["gpt", 1]


# ----------------------------------------------------------------------------- counts

def test_bytes_and_flops_equal_a_hand_count():
    spec = DecodeSpec(dims=(8,), layers=(1,), vocab_size=16, prompt_tokens=2, new_tokens=2,
                      mlp_ratio=4.0)
    D, H, V, S = 8, 32, 16, 4
    model = decode.build_kit_model("gpt", 1, D, spec)
    params = sum(p.numel() for p in model.parameters())
    layer = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (H * D + H) + (D * H + D)
    assert params == layer + 2 * D + V * D + S * D          # + final norm, embedding, positions
    cost = decode_cost(model.config, 3, S, params, S)
    assert cost["weights_bytes"] == 4 * (layer + 2 * D + V * D + D)   # one position row read
    assert cost["kv_bytes"] == 4 * S * 2 * D * 1 * 3                  # S x (k, v) x D x layers x batch
    assert cost["flops"] == 2 * 3 * (3 * D * D + 2 * S * D + D * D + 2 * D * H) + 2 * 3 * D * V
    pf = decode.build_kit_model("pf", 2, D, spec)
    gpt = decode.build_kit_model("gpt", 2, D, spec)
    n_params = [sum(p.numel() for p in m.parameters()) for m in (pf, gpt)]
    assert n_params[0] == n_params[1] == params + layer
    assert decode_cost(pf.config, 1, S, n_params[0], S) == decode_cost(gpt.config, 1, S, n_params[1], S)
    if PEER:  # HF GPT-2 of GPT-n's sizes has GPT-n's parameters
        hf = decode.build_peer(2, D, spec)
        assert sum(p.numel() for p in hf.parameters()) == n_params[1]


def test_memory_bandwidth_probe():
    bw = bench.memory_bandwidth("cpu", nbytes=2 ** 20, reps=3)
    assert 0 < bw["gbps_p25"] <= bw["gbps"] <= bw["gbps_p75"] and bw["bytes"] == 2 ** 20
    with pytest.raises(ValueError, match="dtype"):
        bench.memory_bandwidth("cpu", dtype="float64")


def test_a_missing_peer_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(decode, "_transformers", lambda: "transformers is not importable (test)")
    res = decode_run.run_decode(DecodeSpec(**dict(TINY, dims=(16,), batches=(1,), layers=(1,),
                                                  peer_layers=(1,))), measure_rates=False)
    assert "not importable" in res["skipped"]["hf-gpt2"]
    assert {r["implementation"] for r in res["records"]} == {"gpt", "pf"}
    assert all(r["predicted_ms"] is None for r in res["records"])


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs, words", [
    (dict(dims=(0,)), "dims"), (dict(layers=()), "layers"), (dict(variants=("turbo",)), "variant"),
    (dict(reps=1, min_reps=2), "reps"), (dict(new_tokens=1), "new_tokens"),
    (dict(dims=(96,), heads=5), "divisible"), (dict(max_case_seconds=0), "max_case_seconds"),
])
def test_spec_refuses_nonsense(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DecodeSpec(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
@pytest.mark.parametrize("args, words", [
    (["--preset", "decode", *TINY_ARGS, "--variants", "eager", "graph"], "CUDA"),
    (["--preset", "decode-gpu", "--no-save"], "not available"),
    (["--preset", "decode", *TINY_ARGS, "--impl", "vit"], "--impl"),
    (["--preset", "decode", *TINY_ARGS, "--dims", "0"], "dims"),
    (["--quick", "--new-tokens", "4"], "decode presets only"),
])
def test_cli_refuses_bad_input_with_status_2(args, words, capsys):
    assert main(["bench", *args, "--no-save"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and words in err


def test_cli_writes_the_files_and_refuses_a_used_folder(tmp_path, monkeypatch, capsys):
    fast = dict(decode.DECODE_PRESETS["decode"], peak_sizes=(64,), bandwidth_bytes=2 ** 20)
    monkeypatch.setitem(decode.DECODE_PRESETS, "decode", fast)
    args = ["bench", "--preset", "decode", *TINY_ARGS, "--peer-layers", "--out", str(tmp_path),
            "--name", "run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "ms/token" in out and "measured / predicted" in out and "wall time" in out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(bench.DECODE_FILES)
    res = bench.load_decode_run(tmp_path / "run")
    assert res["preset"] == "decode" and res["targets"]
    assert {r["implementation"] for r in res["records"]} == {"gpt", "pf"}   # no peer asked for
    before = (tmp_path / "run" / "results.json").read_bytes()
    assert main(args) == 2
    assert "earlier run" in capsys.readouterr().err
    assert (tmp_path / "run" / "results.json").read_bytes() == before


def test_presets_give_valid_specs():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for name in bench.DECODE_PRESETS:
        spec, preset = decode_spec_from_args(parser.parse_args(["--preset", name]))
        assert preset == name and spec.layers == (1, 2, 4, 8, 16, 24)
    spec, _ = decode_spec_from_args(parser.parse_args(["--preset", "decode-gpu"]))
    assert spec.device == "cuda" and "graph" in spec.variants and 768 in spec.dims
    spec, _ = decode_spec_from_args(parser.parse_args(
        ["--preset", "decode", "--peer-layers", "--batch", "4", "--reps", "2"]))
    assert spec.peer_layers == () and spec.batches == (4,) and (spec.reps, spec.min_reps) == (2, 2)  # the floor lowered


# ----------------------------------------------------------------------------- the committed run

def test_committed_run_round_trips_and_holds_no_machine_paths(committed, tmp_path):
    paths = bench.save_decode_results(committed, tmp_path / "again")
    assert sorted(p.name for p in paths) == sorted(bench.DECODE_FILES)
    again = bench.load_decode_run(tmp_path / "again")
    assert again["records"] == committed["records"] and again["spec"] == committed["spec"]
    assert again["targets"] == committed["targets"]

    def strings(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from strings(v)
        elif isinstance(x, list):
            for v in x:
                yield from strings(v)
        elif isinstance(x, str):
            yield x
    raw = json.loads((bench.results_root() / COMMITTED / "results.json").read_text())
    assert not [s for s in strings(raw) if s.startswith(("/", "~")) or ":\\" in s]


def test_committed_run_is_complete(committed):
    spec = committed["spec"]
    assert committed["environment"]["device"] == "cpu" and committed["preset"] == "decode"
    for batch in spec["batches"]:
        g = bench.decode_grid(committed, batch)
        assert g["dims"] == spec["dims"] and g["ns"] == spec["layers"]
        for key in ("pf", "gpt", "pf_vs_gpt", "pf_predicted"):
            assert not (g[key] != g[key]).any(), key          # no NaN: every case timed
    names = {t["target"] for t in committed["targets"]}
    assert any("GPT-24 / GPT-1" in n for n in names) and any("HF GPT-2-12" in n for n in names)
    assert any("measured / predicted" in n for n in names)
    assert "targets" in bench.format_decode_targets(committed["targets"])


def test_heat_maps_and_model_plot_draw_the_committed_run(committed):
    fig = bench.plot_decode_map(committed)
    assert len(fig.axes) == 2 * len(committed["spec"]["batches"]) * 3   # panels and colour bars
    fig2 = bench.plot_decode_model(committed)
    plt.close(fig)
    plt.close(fig2)
    for batch in committed["spec"]["batches"]:
        for D in committed["spec"]["dims"]:
            line = bench.decode_flat_limit(committed, batch, D)
            assert line is None or -0.5 <= line <= len(committed["spec"]["layers"])


def test_saved_runs_are_found_by_kind(committed):
    assert bench.latest_decode_run(bench.results_root()).name.startswith("cpu-decode-")
    assert bench.latest_decode_run(bench.results_root(), device="mps") is None
    assert "decode" not in bench.latest_run(bench.results_root()).name
    with pytest.raises(ValueError, match="not a decode run"):
        bench.load_decode_run("cpu-regime-2026-12-02")
    with pytest.raises(FileNotFoundError, match="cpu-decode"):
        bench.load_decode_run("no-such-run")


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_graph_step_gives_the_eager_logits():
    spec = DecodeSpec(dims=(64,), layers=(1, 4), prompt_tokens=4, new_tokens=6)
    prompt = decode_run._prompt(spec, 2, torch.device("cuda"))
    for impl, n in (("gpt", 4), ("pf", 4), ("pf", 1)):
        model = decode.build_kit_model(impl, n, 64, spec).cuda()
        with torch.inference_mode():
            graph = decode.GraphDecoder(model, prompt, spec.positions)
            assert decode.check_graph(graph, steps=6) <= decode.GRAPH_TOLERANCE
    res = decode_run.run_decode(DecodeSpec(**dict(TINY, device="cuda", variants=("eager", "graph"),
                                                  peak_sizes=None, bandwidth_bytes=None)))
    graphs = [r for r in res["records"] if r["variant"] == "graph"]
    assert graphs and all(r["graph_max_abs_diff"] <= 1e-4 for r in graphs)
    assert not res["skipped"]
