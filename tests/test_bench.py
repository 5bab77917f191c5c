"""The latency benchmark (duat.bench): well-formed records, clear refusals, the roofline's
FLOP count. Nothing here asserts a timing: the kit's targets are read off a run's output."""
import math

import pytest
import torch

from duat import bench
from duat.bench import BenchSpec, build_model, check_targets, run_benchmark
from duat.bench import harness
from duat.cli import main
from duat.counting import flops, measured_flops

# The smallest run that still exercises everything: 8x8 images, tiny width, L = 1 and 2.
TINY = dict(size="tiny", image_size=8, in_channels=1, layers=(1, 2), batches=(1, 3),
            reps=3, min_reps=3, warmup=1, rounds=2, peak_sizes=(64, 128), device="cpu")
TINY_ARGS = ["--device", "cpu", "--size", "tiny", "--image-size", "8", "--in-channels", "1",
             "--layers", "1", "2", "--batch", "2", "--reps", "3", "--warmup", "1"]


@pytest.fixture(scope="module")
def tiny_results():
    return run_benchmark(BenchSpec(**TINY))


def expected_impls():
    return [i for i in bench.IMPLEMENTATIONS
            if i != "timm-parallel" or bench.timm_available() is None]


# ----------------------------------------------------------------------------- records

def test_records_are_well_formed(tiny_results):
    recs = tiny_results["records"]
    impls = expected_impls()
    assert len(recs) == 2 * 2 * len(impls)  # L x batch x implementation (eager only)
    assert {(r["implementation"], r["layers"], r["batch"]) for r in recs} == {
        (i, L, B) for i in impls for L in (1, 2) for B in (1, 3)}
    for r in recs:
        for key in ("device_name", "torch", "dtype", "threads", "date", "batch"):
            assert r[key] not in (None, ""), key
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["threads"] >= 1
        assert r["reps"] == len(r["samples_ms"]) >= 3
        assert 0 < r["min_ms"] <= r["p10_ms"] <= r["p25_ms"] <= r["median_ms"] \
            <= r["p75_ms"] <= r["p90_ms"]
        assert math.isclose(r["iqr_ms"], r["p75_ms"] - r["p25_ms"])
        assert math.isclose(r["achieved_gflops"], r["flops"] / r["median_ms"] / 1e6)
        assert math.isclose(r["peak_fraction"], r["achieved_gflops"] / r["peak_gflops"])
    env = tiny_results["environment"]
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    peak = tiny_results["peak"]
    assert peak["gflops_p25"] <= peak["gflops"] <= peak["gflops_p75"]
    # the peak's GEMM is timed before every round of every (batch, L): 2 x 2 groups x 2 rounds
    assert peak["calls"] == 2 * 2 * 2 * harness.PEAK_CALLS_PER_ROUND
    assert peak["size"] in (64, 128)


def test_flop_bound_line_uses_the_models_own_flop_count(tiny_results):
    peak = tiny_results["peak"]["gflops"]
    for r in tiny_results["records"]:
        model = build_model(r["implementation"], r["layers"], BenchSpec(**TINY))
        assert r["flops"] == flops(model.config, r["batch"])
        assert math.isclose(r["flop_bound_ms"], r["flops"] / peak / 1e6)
    # the same FLOPs at the same L, whatever the implementation (one bound line per batch)
    for L in (1, 2):
        assert len({r["flops"] for r in tiny_results["records"]
                    if r["layers"] == L and r["batch"] == 1}) == 1


@pytest.mark.parametrize("impl", list(bench.IMPLEMENTATIONS))
def test_analytic_flops_match_torchs_flop_counter(impl):
    if impl == "timm-parallel" and bench.timm_available() is not None:
        pytest.skip("timm not installed")
    spec = BenchSpec(**TINY)
    model = build_model(impl, 3, spec)
    x = torch.randn(2, 1, 8, 8)
    assert measured_flops(model, x) == flops(model.config, 2)


def test_vit_and_paraformer_of_equal_layers_have_equal_flops():
    spec = BenchSpec(size="small", image_size=32, in_channels=3)
    vit, pf = build_model("vit", 12, spec), build_model("pf-batched", 12, spec)
    assert vit.config.num_tokens == 65 and vit.config.dim == 192  # 64 patches + class token
    assert flops(vit.config, 1) == flops(pf.config, 1)


def test_implementations_compute_the_same_function_where_they_should():
    spec = BenchSpec(**TINY)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = build_model("pf-batched", 3, spec)(x)
        err = (build_model("pf-reference", 3, spec)(x) - y).abs().max().item()
    assert err < 1e-5  # same seed, same weights: batched and loop agree


def test_timm_missing_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setattr(harness, "timm_available", lambda: "timm is not importable (test)")
    res = run_benchmark(BenchSpec(**dict(TINY, layers=(1,), batches=(1,))), measure_peak=False)
    assert "timm-parallel" in res["skipped"]
    assert not any(r["implementation"] == "timm-parallel" for r in res["records"])
    assert res["peak"] is None and all(r["flop_bound_ms"] is None for r in res["records"])


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs, words", [
    (dict(batches=(0,)), "batch"),
    (dict(batches=(1, -4)), "batch"),
    (dict(batches=()), "batch"),
    (dict(layers=(0,)), "layers"),
    (dict(layers=(1, 2.5)), "layers"),
    (dict(implementations=("vit", "resnet")), "unknown implementation 'resnet'"),
    (dict(variants=("turbo",)), "unknown variant 'turbo'"),
    (dict(dtype="float64"), "dtype"),
    (dict(size="huge"), "size"),
    (dict(reps=2, min_reps=3), "reps"),
    (dict(min_reps=2), "min_reps"),
    (dict(threads=0), "threads"),
    (dict(max_case_seconds=0), "max_case_seconds"),
])
def test_spec_refuses_nonsense(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BenchSpec(**kwargs)


def test_build_model_refuses_unknown_implementation_and_zero_layers():
    with pytest.raises(ValueError, match="unknown implementation 'mlp'"):
        build_model("mlp", 2)
    with pytest.raises(ValueError, match="layers"):
        build_model("vit", 0)


def test_cuda_only_variant_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        run_benchmark(BenchSpec(**dict(TINY, variants=("eager", "graph"))))
    with pytest.raises(TypeError, match="BenchSpec"):
        run_benchmark({"layers": (1,)})


@pytest.mark.parametrize("args, words", [
    (["--batch", "0"], "batch"),
    (["--layers", "0", "4"], "layers"),
    (["--impl", "vit", "nope"], "unknown implementation 'nope'"),
    (["--device", "tpu"], "device"),
])
def test_cli_refuses_nonsense_with_status_2(args, words, capsys):
    assert main(["bench", *TINY_ARGS, "--no-save", *args]) == 2
    assert words in capsys.readouterr().err


# ----------------------------------------------------------------------------- output

def test_cli_writes_json_csv_png_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["bench", *TINY_ARGS, "--impl", "vit", "pf-batched", "--out", str(tmp_path),
            "--name", "run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "pf-batched" in out and "matmul peak" in out
    folder = tmp_path / "run"
    assert sorted(p.name for p in folder.iterdir()) == sorted(bench.RESULT_FILES)
    res = bench.load_results(folder)
    assert len(res["records"]) == 4 and "targets" in res
    csv_lines = (folder / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("implementation,variant,label,layers,batch")
    assert len(csv_lines) == 1 + 4
    assert (folder / "latency_vs_layers.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 2  # the folder holds an earlier run
    assert "earlier run" in capsys.readouterr().err
    assert bench.list_runs(tmp_path) == [folder]


def test_table_lists_every_case(tiny_results):
    table = bench.format_table(tiny_results)
    for impl in expected_impls():
        assert impl in table
    lines = 5 + len(tiny_results["records"]) + len(tiny_results["skipped"])  # with the overhead
    assert len(table.splitlines()) == lines


def _fake(impl, L, batch, median, device="cpu", variant="eager", dim=192, tokens=65):
    r = dict(implementation=impl, variant=variant, label=impl, layers=L, batch=batch,
             dim=dim, tokens=tokens, median_ms=median, p25_ms=0.9 * median, p75_ms=1.1 * median,
             flops=10 ** 9, peak_gflops=100.0)
    return bench.add_roofline(r, 100.0)


def test_targets_are_decided_from_the_records():
    recs = [_fake("vit", 12, 1, 20.0), _fake("pf-batched", 12, 1, 12.5),
            _fake("pf-reference", 12, 1, 18.0), _fake("vit", 12, 64, 100.0),
            _fake("pf-batched", 12, 64, 104.0)]
    checks = check_targets({"environment": {"device": "cpu"}, "records": recs})
    got = {c["target"].split(": ", 1)[1]: c for c in checks}
    assert got["speed-up of pf-1-12 batched over serial ViT-12"]["value"] == pytest.approx(1.6)
    assert got["speed-up of pf-1-12 batched over serial ViT-12"]["holds"]
    assert not got["speed-up of pf-1-12 batched over reference loop"]["holds"]
    assert got["pf-1-12 batched achieved / matmul peak"]["value"] == pytest.approx(0.8)
    assert got["latency pf-1-12 batched / serial ViT-12"]["holds"]  # 1.04 <= 1.05
    assert "timm" not in " ".join(got)  # no timm record: that target is not decidable
    gpu = [_fake(i, L, 1, m, device="cuda", dim=384) for i, L, m in
           (("pf-batched", 1, 1.0), ("pf-batched", 24, 1.2), ("vit", 1, 1.0), ("vit", 24, 9.0))]
    checks = check_targets({"environment": {"device": "cuda"}, "records": gpu})
    assert [c["holds"] for c in checks] == [True, False]


# ----------------------------------------------------------------------------- more refusals

def test_nothing_left_to_time_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(harness, "timm_available", lambda: "timm is not importable (test)")
    with pytest.raises(ValueError, match="nothing to time.*timm"):
        run_benchmark(BenchSpec(**dict(TINY, implementations=("timm-parallel",))))
    args = ["bench", *TINY_ARGS, "--impl", "timm-parallel", "--out", str(tmp_path), "--name", "r"]
    assert main(args) == 2
    assert "nothing to time" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # the empty folder made for the run is removed


def test_a_variant_that_fails_to_build_is_skipped_not_fatal(monkeypatch):
    def broken_compile(model, **kwargs):
        def call(x):
            raise RuntimeError("no compiler here (test)")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    spec = BenchSpec(**dict(TINY, layers=(1,), batches=(1,), implementations=("vit",),
                            variants=("eager", "compile")))
    res = run_benchmark(spec, measure_peak=False)
    assert [r["label"] for r in res["records"]] == ["vit"]
    assert "no compiler here" in res["skipped"]["vit+compile"]


def test_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--preset", "turbo"])
    assert exit_info.value.code == 2
    assert "turbo" in capsys.readouterr().err


def test_presets_give_valid_specs():
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for name in bench.PRESETS:
        spec, preset = bench.spec_from_args(parser.parse_args(["--preset", name]))
        assert preset == name and spec.layers[0] == 1 and spec.layers[-1] == 24
    spec, _ = bench.spec_from_args(parser.parse_args(["--preset", "gpu"]))
    assert (spec.device, spec.size, spec.image_size) == ("cuda", "base", 224)
    assert "graph" in spec.variants
    spec, _ = bench.spec_from_args(parser.parse_args(["--full", "--batch", "2", "--device", "cpu"]))
    assert spec.batches == (2,) and spec.device == "cpu" and spec.reps == 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_gpu_preset_on_a_machine_without_cuda_exits_2(capsys):
    assert main(["bench", "--preset", "gpu", "--no-save"]) == 2
    assert "not available" in capsys.readouterr().err


# ----------------------------------------------------------------------------- saved runs

def test_save_results_refuses_to_overwrite(tiny_results, tmp_path):
    folder = tmp_path / "run"
    paths = bench.save_results(tiny_results, folder)
    assert sorted(p.name for p in paths) == sorted(bench.RESULT_FILES)
    before = (folder / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match="earlier run"):
        bench.save_results(tiny_results, folder)
    assert (folder / "results.json").read_bytes() == before
    bench.save_results(tiny_results, folder, overwrite=True)  # only when asked
    with pytest.raises(TypeError, match="run_benchmark"):
        bench.save_results({"records": []}, tmp_path / "other")


def test_load_results_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        bench.load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a duat benchmark"):
        bench.load_results(tmp_path)


def test_latest_run_picks_the_newest_full_run_of_a_device(tiny_results, tmp_path):
    def save(name, date, device="cpu", preset="full"):
        env = dict(tiny_results["environment"], date=date, device=device)
        bench.save_results(dict(tiny_results, environment=env, preset=preset), tmp_path / name)

    assert bench.latest_run(tmp_path) is None and bench.latest_run(tmp_path / "absent") is None
    save("cpu-2026-01-02", "2026-01-02T10:00:00+00:00")
    save("cpu-2026-03-01", "2026-03-01T10:00:00+00:00")
    save("cpu-quick-2026-04-01-101010", "2026-04-01T10:10:10+00:00", preset="quick")
    save("cuda-2026-02-01", "2026-02-01T10:00:00+00:00", device="cuda")
    (tmp_path / "notes").mkdir()  # a folder without results.json is not a run
    assert bench.latest_run(tmp_path).name == "cpu-2026-03-01"
    assert bench.latest_run(tmp_path, include_quick=True).name.startswith("cpu-quick-")
    assert bench.latest_run(tmp_path, device="cuda").name == "cuda-2026-02-01"
    assert bench.latest_run(tmp_path, device="mps") is None


def test_quick_cli_run_gets_its_own_folder_and_is_marked_quick(tmp_path, capsys):
    args = ["bench", "--quick", *TINY_ARGS, "--impl", "vit", "--layers", "1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (folder,) = bench.list_runs(tmp_path)
    assert folder.name.startswith("cpu-quick-")
    res = bench.load_results(folder)
    assert res["preset"] == "quick" and bench.is_quick(res, folder)
    assert bench.latest_run(tmp_path) is None  # quick runs are not the committed results


def test_committed_runs_are_found_from_any_folder_and_by_name(tmp_path, monkeypatch):
    from duat import locations

    monkeypatch.delenv(locations.RESULTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)                       # nowhere near the checkout
    root = bench.results_root()
    assert root == locations.packaged() / "bench" and (root / "cpu-2026-11-28").is_dir()
    assert bench.latest_run(device="cpu") == root / "cpu-2026-12-02"      # the newest full run
    assert bench.latest_run(device="cpu", preset="regime") == root / "cpu-regime-2026-12-02"
    assert bench.load_results("cpu-2026-11-28")["environment"]["device"] == "cpu"
    with pytest.raises(FileNotFoundError, match="cpu-2026-11-28") as err:  # names the committed runs
        bench.load_results("cpu-1999-01-01")
    assert str(root) in str(err.value)


def test_an_installed_kit_lists_the_committed_runs_and_those_written_here(tiny_results, tmp_path,
                                                                          monkeypatch, capsys):
    from duat import locations

    monkeypatch.delenv(locations.RESULTS_ENV, raising=False)
    monkeypatch.setattr(locations, "in_checkout", lambda: False)   # as from a wheel
    monkeypatch.chdir(tmp_path)
    assert bench.run_roots() == [locations.packaged() / "bench", tmp_path / "results" / "bench"]
    assert main(["bench", "--quick", *TINY_ARGS, "--impl", "vit", "--layers", "1"]) == 0
    capsys.readouterr()
    (mine,) = (tmp_path / "results" / "bench").iterdir()        # the default --out: ./results/bench
    assert mine.name.startswith("cpu-quick-")
    shipped = [p.name for p in bench.list_runs(locations.packaged() / "bench")]
    assert {"cpu-2026-11-28", "cpu-2026-12-02", "cpu-regime-2026-12-02"} <= set(shipped)
    assert [p.name for p in bench.list_runs()] == sorted(shipped + [mine.name])
    assert bench.latest_run(include_quick=True) == mine
    assert not (locations.packaged() / "bench" / mine.name).exists()   # nothing into the package


def test_results_override_is_read_and_refused_when_absent(tiny_results, tmp_path, monkeypatch, capsys):
    from duat import locations

    monkeypatch.setenv(locations.RESULTS_ENV, str(tmp_path))
    assert bench.results_root() is None and bench.list_runs() == []  # no bench/ in it yet
    bench.save_results(tiny_results, tmp_path / "bench" / "cpu-2030-01-01")
    assert bench.results_root() == tmp_path / "bench"
    assert bench.latest_run() == tmp_path / "bench" / "cpu-2030-01-01"
    monkeypatch.setenv(locations.RESULTS_ENV, str(tmp_path / "nowhere"))
    assert main(["bench", *TINY_ARGS, "--impl", "vit"]) == 2           # before any timing
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duat bench: error: DUAT_RESULTS=")
    assert "no such folder" in err[0] and str(locations.packaged()) in err[0]


# ----------------------------------------------------------------------------- rerun vs committed

def test_compare_runs_marks_cases_outside_the_spread(tiny_results):
    import copy

    from duat.bench.report import compare_runs, format_comparison

    same = compare_runs(tiny_results, tiny_results)
    assert len(same) == len(tiny_results["records"])
    assert all(r["within_spread"] and r["ratio"] == 1.0 for r in same)
    slower = copy.deepcopy(tiny_results)
    first = slower["records"][0]
    for k in ("median_ms", "p25_ms", "p75_ms"):  # one case 10x slower than its spread allows
        first[k] = 10 * first["p75_ms"] + 10 * first[k]
    rows = compare_runs(slower, tiny_results)
    assert [r["within_spread"] for r in rows].count(False) == 1
    text = format_comparison(rows, "then")
    assert "NO" in text and f"{len(rows) - 1} of {len(rows)} cases" in text
    other = copy.deepcopy(tiny_results)
    for r in other["records"]:
        r["batch"] = 999
    assert compare_runs(other, tiny_results) == []


def test_cli_compare_reads_an_earlier_run_and_refuses_a_missing_one(tmp_path, capsys):
    base = ["bench", *TINY_ARGS, "--impl", "vit", "--out", str(tmp_path)]
    assert main([*base, "--name", "a"]) == 0
    capsys.readouterr()
    code = main([*base, "--name", "b", "--compare", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert "this run against" in out and "cases within the measured spread" in out
    assert code in (0, 1)  # timing noise decides which; both are valid answers
    assert main([*base, "--name", "c", "--compare", str(tmp_path / "nothing")]) == 2
    assert "no benchmark results" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_latency_plot_is_linear_unless_log_is_asked(tiny_results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    linear = bench.plot_results(tiny_results)
    assert {ax.get_yscale() for ax in linear.axes} == {"linear"}
    assert all(ax.get_ylim()[0] == 0 for ax in linear.axes)  # latency and %-of-peak from 0
    logged = bench.plot_results(tiny_results, log=True)
    assert "log" in {ax.get_yscale() for ax in logged.axes}
    plt.close("all")


# ----------------------------------------------------------------------------- the regime map

REGIME = dict(TINY, dims=(8, 16), heads=2, layers=(1, 2, 3), batches=(1,),
              implementations=("vit", "pf-batched"))


@pytest.fixture(scope="module")
def regime_results():
    return run_benchmark(BenchSpec(**REGIME))


def test_count_ops_sees_the_serial_layers_and_not_the_parallel_branches():
    spec = BenchSpec(**TINY)
    x = torch.randn(1, 1, 8, 8)

    def ops(impl, L, batch=1):
        model = build_model(impl, L, spec)
        return bench.count_ops(lambda: model(torch.randn(batch, 1, 8, 8)))

    per_layer = ops("vit", 2) - ops("vit", 1)
    assert per_layer > 10 and ops("vit", 5) - ops("vit", 1) == 4 * per_layer
    assert ops("pf-batched", 5) == ops("pf-batched", 2)   # one batched computation at any n >= 2
    assert ops("pf-reference", 3) - ops("pf-reference", 2) > 10  # the loop: a layer's ops per branch
    assert ops("vit", 3, batch=4) == ops("vit", 3)          # the count does not depend on the batch
    assert x.shape == (1, 1, 8, 8)


def test_op_overhead_is_measured_and_positive():
    ov = bench.op_overhead("cpu", reps=5)
    assert ov["ops"] > 100 and ov["calls"] == 5
    assert 0 < ov["us_p25"] <= ov["us_per_op"] <= ov["us_p75"]
    with pytest.raises(ValueError, match="dtype"):
        bench.op_overhead("cpu", dtype="float8")


def test_overhead_model_takes_the_larger_term():
    r = bench.add_overhead_model({"ops": 100, "flop_bound_ms": 0.5}, us_per_op=10.0)
    assert r["overhead_ms"] == pytest.approx(1.0) and r["predicted_ms"] == pytest.approx(1.0)
    assert r["bound_by"] == "overhead"
    r = bench.add_overhead_model({"ops": 100, "flop_bound_ms": 3.0}, us_per_op=10.0)
    assert r["predicted_ms"] == pytest.approx(3.0) and r["bound_by"] == "flops"
    assert bench.add_overhead_model({"ops": 100, "flop_bound_ms": 3.0}, None)["predicted_ms"] is None


def test_regime_sweep_records_every_width_with_its_model(regime_results):
    recs = regime_results["records"]
    assert {(r["dim"], r["heads"], r["layers"], r["implementation"]) for r in recs} == {
        (D, 2, L, i) for D in (8, 16) for L in (1, 2, 3) for i in ("vit", "pf-batched")}
    ov = regime_results["overhead"]
    assert ov["us_per_op"] > 0 and ov["calls"] >= 2
    for r in recs:
        assert r["ops"] > 0 and r["bound_by"] in ("overhead", "flops")
        assert r["predicted_ms"] == pytest.approx(max(r["ops"] * ov["us_per_op"] / 1e3,
                                                      r["flop_bound_ms"]))
    assert bench.is_regime(regime_results)


def test_regime_grid_holds_the_measured_ratios(regime_results):
    g = bench.regime_grid(regime_results, batch=1)
    assert g["dims"] == [8, 16] and g["ns"] == [1, 2, 3]
    recs = regime_results["records"]
    pf3 = bench.find(recs, implementation="pf-batched", layers=3, dim=16)
    pf1 = bench.find(recs, implementation="pf-batched", layers=1, dim=16)
    vit3 = bench.find(recs, implementation="vit", layers=3, dim=16)
    assert g["pf"][1, 2] == pytest.approx(pf3["median_ms"] / pf1["median_ms"])
    assert g["pf_vs_vit"][1, 2] == pytest.approx(pf3["median_ms"] / vit3["median_ms"])
    assert g["pf"][0, 0] == 1.0 and g["pf_low"][1, 2] <= g["pf"][1, 2] <= g["pf_high"][1, 2]
    assert math.isfinite(g["pf_predicted"][1, 2])
    cells = bench.claim_cells(regime_results, limit=1e9)  # every n > 1 passes an endless limit
    assert len(cells) == 2 * 2 and all(c["n"] > 1 for c in cells)
    assert bench.claim_cells(regime_results, limit=0.0) == []
    text = bench.format_regime(regime_results)
    assert "per-op overhead" in text and "batch 1" in text


def test_boundary_is_where_flops_overtake_the_overhead():
    def rec(n, overhead, flop):
        return dict(implementation="pf-batched", variant="eager", batch=1, dim=32, layers=n,
                    overhead_ms=overhead, flop_bound_ms=flop)
    res = {"records": [rec(1, 1.0, 0.25), rec(2, 1.0, 0.5), rec(4, 1.0, 2.0)]}
    assert bench.boundary(res, 1, 32) == pytest.approx(1.5)   # log-midway between n=2 and n=4
    res = {"records": [rec(1, 1.0, 0.1), rec(2, 1.0, 0.2)]}
    assert bench.boundary(res, 1, 32) is None                 # the overhead holds throughout
    res = {"records": [rec(1, 1.0, 2.0), rec(2, 1.0, 4.0)]}
    assert bench.boundary(res, 1, 32) == -0.5                 # FLOPs dominate from the start


def test_regime_run_saves_its_maps_and_is_found_apart(regime_results, tiny_results, tmp_path):
    paths = bench.save_results(dict(regime_results, preset="regime"), tmp_path / "cpu-regime")
    assert sorted(p.name for p in paths) == sorted(bench.RESULT_FILES + bench.REGIME_FILES)
    bench.save_results(dict(tiny_results, preset="full"), tmp_path / "cpu-full")
    assert bench.latest_run(tmp_path).name == "cpu-full"       # a regime sweep is not a depth run
    assert bench.latest_run(tmp_path, preset="regime").name == "cpu-regime"
    with pytest.raises(ValueError, match="no token width D=99"):
        bench.plot_results(regime_results, dim=99)


@pytest.mark.parametrize("args, words", [
    (["--dims", "30", "--heads", "4"], "D=30 is not divisible by 4 heads"),
    (["--dims", "32", "--layers", "0"], "layers"),
    (["--dims", "0"], "dims"),
    (["--dims", "32", "--batch", "100000000"], "GiB free"),
])
def test_regime_preset_refuses_bad_input_in_one_line(args, words, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["bench", "--preset", "regime", "--device", "cpu", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith("duat bench: error:") and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())   # no run folder left behind


def test_regime_preset_never_overwrites_an_earlier_run(tmp_path, capsys):
    args = ["bench", "--preset", "regime", "--device", "cpu", "--size", "tiny", "--image-size", "8",
            "--in-channels", "1", "--dims", "8", "--heads", "2", "--layers", "1", "2",
            "--batch", "1", "--reps", "3", "--warmup", "1", "--rounds", "1",
            "--max-case-seconds", "0.05", "--out", str(tmp_path), "--name", "r"]
    assert main(args) == 0
    assert "flat latency" in capsys.readouterr().out
    before = (tmp_path / "r" / "results.json").read_bytes()
    assert main(args) == 2
    assert "earlier run" in capsys.readouterr().err
    assert (tmp_path / "r" / "results.json").read_bytes() == before


def test_count_ops_counts_a_steady_call_unless_told_the_call_is_warm():
    state = {"first": True}
    x = torch.ones(3)

    def fn():  # one-off work on the first call only, as a lazily built cache would do
        if state.pop("first", False):
            (x + 1) * 2
        return x + 1

    assert bench.count_ops(fn) == 1                 # warm: the first call is not counted
    state["first"] = True
    assert bench.count_ops(fn, warm=False) == 3     # the first call itself
    with pytest.raises(TypeError, match="needs a callable"):
        bench.count_ops(3)


def test_new_public_functions_refuse_bad_input_in_one_line(regime_results):
    with pytest.raises(ValueError, match="not a device name"):
        bench.op_overhead("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            bench.op_overhead("cuda")
        with pytest.raises(ValueError, match="not available"):
            bench.matmul_peak("cuda")
    with pytest.raises(ValueError, match="us_per_op must be a time >= 0"):
        bench.add_overhead_model({"ops": 3, "flop_bound_ms": 1.0}, -1.0)
    with pytest.raises(TypeError, match="ParaFormerConfig"):
        bench.estimate_bytes(None, 1)
    with pytest.raises(ValueError, match="no eager records at batch 7; it has batch 1 eager"):
        bench.regime_grid(regime_results, batch=7)
    with pytest.raises(ValueError, match="nothing to draw"):
        bench.plot_regime({"records": [], "environment": {}})


def test_estimate_bytes_counts_the_weights_it_holds():
    from duat.counting import count_parameters
    from duat.registry import create_model, model_config

    c = model_config("pf-1-4", size="tiny", image_size=8, in_channels=1)
    params = count_parameters(create_model("pf-1-4", size="tiny", image_size=8, in_channels=1))
    one, two = bench.estimate_bytes(c, 1), bench.estimate_bytes(c, 2)
    assert one > 4 * params and two > one                     # weights, then activations per batch
    assert bench.estimate_bytes(c, 1, "bfloat16") * 2 == one   # half the bytes per number


# ----------------------------------------------------------------------------- the model, read

def _regime_run(pf: dict, predicted: dict, ops: dict | None = None, batch: int = 1, dim: int = 32):
    """A hand-made regime run: Para-Former-1-n measured and predicted times (ms) by n."""
    recs = []
    for n in pf:
        for impl in ("pf-batched", "vit"):
            t = pf[n] if impl == "pf-batched" else pf[n] * n
            recs.append(dict(implementation=impl, variant="eager", batch=batch, dim=dim, layers=n,
                             median_ms=t, p25_ms=0.9 * t, p75_ms=1.1 * t, predicted_ms=predicted[n],
                             ops=(ops or {}).get(n, 44), bound_by="overhead" if predicted[n] < 2 else "flops",
                             overhead_ms=1.0, flop_bound_ms=predicted[n]))
    return {"records": recs, "environment": {}, "spec": {}}


def test_the_cartoon_writes_tau_not_a_tab():
    import matplotlib.pyplot as plt
    fig = bench.regime.plot_cartoon()
    titles = [ax.get_title() for ax in fig.axes]
    assert all("\\tau" in t and "\t" not in t for t in titles), titles
    assert titles[0].startswith("overhead regime") and titles[1].startswith("FLOP regime")
    assert "\\tau" in fig.axes[0].get_ylabel()
    plt.close(fig)


def test_flat_limit_is_where_the_predicted_ratio_passes_the_limit():
    res = _regime_run({1: 1.0, 2: 1.0, 4: 2.0}, {1: 1.0, 2: 1.0, 4: 2.25})
    # predicted ratio 1.0 at n=2 and 2.25 at n=4: log(1.5) is halfway between log 1 and log 2.25
    assert bench.regime.flat_limit(res, 1, 32) == pytest.approx(1.5)
    assert bench.regime.flat_limit(res, 1, 32, limit=3.0) is None
    with pytest.raises(ValueError, match="no token width D=64"):
        bench.regime.flat_limit(res, 1, 64)


def test_agreement_counts_where_the_model_and_the_measurement_say_flat():
    # n=2: both flat; n=4: the model says flat (1.2), measured 2.0 (optimistic);
    # n=8: the model says 3.0, measured 1.4 (pessimistic); n=16: both not flat
    res = _regime_run({1: 1.0, 2: 1.1, 4: 2.0, 8: 1.4, 16: 5.0}, {1: 1.0, 2: 1.1, 4: 1.2, 8: 3.0, 16: 9.0},
                      ops={1: 40, 2: 44, 4: 44, 8: 60, 16: 90})
    a = bench.regime.regime_agreement(res)
    assert a["predicted"]["cells"] == 4 and a["predicted"]["agree"] == 2
    assert a["predicted"]["optimistic"] == 1 and a["predicted"]["pessimistic"] == 1
    assert a["predicted"]["by_batch"][1]["agree"] == 2
    assert a["ops"] == {1: [44, 90]}
    text = bench.regime.format_agreement(a)
    assert "agrees at 2 of 4 (50%)" in text and "n 4: 2.00 / 1.20" in text
    with pytest.raises(ValueError, match="limit"):
        bench.regime.regime_agreement(res, limit=0.5)
    bare = {"records": [dict(r, predicted_ms=None) for r in res["records"]]}
    with pytest.raises(ValueError, match="no model predictions"):
        bench.regime.regime_agreement(bare)


def test_the_committed_map_against_its_model():
    """The figures notebook 05 prints beside its reading of the committed map."""
    a = bench.regime.regime_agreement(bench.load_results("cpu-regime-2026-12-02"))
    p, o = a["predicted"], a["overhead_bound"]
    assert (p["cells"], p["agree"], p["optimistic"], p["pessimistic"]) == (75, 68, 6, 1)
    assert (o["agree"], o["optimistic"]) == (63, 11)
    assert a["ops"] == {1: [44, 44], 8: [44, 185], 64: [69, 707]}   # the CPU stage's chunks


def test_compare_regimes_names_what_differs(regime_results):
    import copy
    other = copy.deepcopy(regime_results)
    other["spec"]["reps"] = 40
    other["environment"]["threads"] = 7
    for r in other["records"]:
        r["median_ms"] *= 2 if (r["layers"], r["implementation"]) == (1, "pf-batched") else 1
    c = bench.regime.compare_regimes(regime_results, other)
    assert {(x["dim"], x["n"]) for x in c["cells"]} == {(8, 2), (8, 3), (16, 2), (16, 3)}
    cell = c["cells"][0]
    assert cell["pf"] == pytest.approx(2 * cell["pf_reference"])
    d = c["differences"]
    assert d["reps"] == (regime_results["spec"]["reps"], 40) and d["threads"][1] == 7
    assert "tau_us" in d and "median reps per case" in d
    assert len(regime_results["environment"]["load_average"]) == 2   # recorded by every run now
    text = bench.regime.format_comparison(c, ("live", "committed"))
    assert "live against committed" in text and "reps:" in text


def test_the_committed_gpu_run_against_the_model():
    from duat.bench import one_process as op
    bare = op.one_process_regime("cuda-h200-1x1-2026-12-04")
    assert bare["device_name"] == "NVIDIA H200" and (bare["dim"], bare["tokens"]) == (384, 197)
    assert len(bare["needs"]) == 2 and bare["peak"] is None                # it measured neither
    assert all(r["model_ms"] is None for r in bare["rows"])                 # so no prediction
    assert "cannot be evaluated" in op.format_one_process(bare)
    one1 = next(r for r in bare["rows"] if (r["batch"], r["n"]) == (1, 1))
    assert bare["tau_us"] == pytest.approx(one1["median_ms"] / bare["ops"][1] * 1e3)  # its upper bound
    c = op.one_process_regime("cuda-h200-1x1-2026-12-04", peak=op.PUBLISHED_PEAKS["NVIDIA H200"])
    at = c["at"]
    assert at["measured"] == pytest.approx(1.060192 / 0.364416, rel=1e-4)   # 2.91: not flat
    assert at["model"] < 1.2                      # at the largest tau the run allows: flat
    ops1, opsn = c["ops"][1], c["ops"][at["n"]]
    first, last = (next(r for r in c["rows"] if (r["batch"], r["n"]) == (1, k)) for k in (1, at["n"]))
    assert op._model_ratio(ops1, opsn, first["flop_bound_ms"], last["flop_bound_ms"],
                           c["tau_fit_us"] / 1e3) == pytest.approx(at["measured"], rel=1e-6)
    assert c["fit_t1_ms"] < at["t1_ms"] / 3       # ... and then far too fast at n = 1
    text = op.format_one_process(c)
    assert "a specification, not a measurement" in text and "a serial ViT-n beside it" in text
    import matplotlib.pyplot as plt
    fig = op.plot_one_process(c)
    assert len(fig.axes) == 2
    plt.close(fig)


@pytest.mark.parametrize("peak", [{"gflops": 1e3}, {"gflops": -1, "source": "x"}, 67000.0])
def test_one_process_regime_refuses_a_peak_without_its_source(peak):
    from duat.bench import one_process as op
    with pytest.raises(ValueError, match="peak must be"):
        op.one_process_regime("cuda-h200-1x1-2026-12-04", peak=peak)


def test_one_process_regime_refuses_what_is_not_a_branch_parallel_run(tiny_results):
    from duat.bench import one_process as op
    with pytest.raises(ValueError, match="branch-parallel run"):
        op.one_process_regime(tiny_results)


def test_headline_and_one_panel_map_of_the_committed_run():
    import matplotlib.pyplot as plt
    m = bench.load_results("cpu-regime-2026-12-02")
    text = bench.regime.format_headline(m)
    assert "at 14 of 75 grid points" in text and "batch 64: nowhere" in text
    assert "batch 1, D 32: Para-Former-1-24 / Para-Former-1-1 = 1.38 [1.21, 1.54]" in text
    fig = bench.plot_regime(m, panels=("pf",))
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3        # one panel per batch, side by side
    plt.close(fig)
    with pytest.raises(ValueError, match="panels must name some of"):
        bench.plot_regime(m, panels=("speed",))
