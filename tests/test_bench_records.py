"""duat.bench records and reports: a run's typed records, the FLOP count behind the
roofline, the targets table, the table, comparing runs, the saved runs and their files, the
plot. Nothing here asserts a timing: the targets are read off a run's output."""
import json
from dataclasses import asdict, fields

import pytest
import torch

from bench_cases import TINY, expected_impls
from duat import bench
from duat.bench import BenchSpec, build_model, check_targets, harness, run_benchmark
from duat.bench.records import BenchRecord
from duat.bench.report import compare_runs, format_comparison
from duat.cli import main
from duat.counting import flops, measured_flops


@pytest.fixture(scope="module")
def tiny_results():
    return run_benchmark(BenchSpec(**TINY))


# ----------------------------------------------------------------------------- records

def test_records_are_typed_and_well_formed(tiny_results):
    recs = tiny_results["records"]
    impls = expected_impls()
    assert len(recs) == 2 * 2 * len(impls)  # L x batch x implementation (eager only)
    assert {(r["implementation"], r["layers"], r["batch"]) for r in recs} == {
        (i, L, B) for i in impls for L in (1, 2) for B in (1, 3)}
    names = [f.name for f in fields(BenchRecord)]
    for r in recs:
        assert list(r) == names                            # every field, in the declared order
        assert asdict(BenchRecord(**r)) == r
        for key in ("device_name", "torch", "dtype", "threads", "date", "batch"):
            assert r[key] not in (None, ""), key
        assert r["device"] == "cpu" and r["dtype"] == "float32" and r["threads"] >= 1
        assert r["reps"] == len(r["samples_ms"]) >= 3
        assert 0 < r["min_ms"] <= r["p10_ms"] <= r["p25_ms"] <= r["median_ms"] \
            <= r["p75_ms"] <= r["p90_ms"]
        assert r["ops"] > 0 and r["bound_by"] in ("overhead", "flops")
        assert r["peak_gflops"] == tiny_results["peak"]["gflops"]
    env = tiny_results["environment"]
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    peak = tiny_results["peak"]
    assert peak["gflops_p25"] <= peak["gflops"] <= peak["gflops_p75"] and peak["size"] in (64, 128)


def test_flop_bound_line_uses_the_models_own_flop_count(tiny_results):
    peak = tiny_results["peak"]["gflops"]
    for r in tiny_results["records"]:
        model = build_model(r["implementation"], r["layers"], BenchSpec(**TINY))
        assert r["flops"] == flops(model.config, r["batch"])
        assert r["flop_bound_ms"] == pytest.approx(r["flops"] / peak / 1e6)
    # the same FLOPs at the same L, whatever the implementation (one bound line per batch)
    for L in (1, 2):
        assert len({r["flops"] for r in tiny_results["records"]
                    if r["layers"] == L and r["batch"] == 1}) == 1


@pytest.mark.parametrize("impl", list(bench.IMPLEMENTATIONS))
def test_analytic_flops_match_torchs_flop_counter(impl):
    if impl == "timm-parallel" and bench.timm_available() is not None:
        pytest.skip("timm not installed")
    model = build_model(impl, 3, BenchSpec(**TINY))
    assert measured_flops(model, torch.randn(2, 1, 8, 8)) == flops(model.config, 2)


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


def test_table_lists_every_case(tiny_results):
    table = bench.format_table(tiny_results)
    for impl in expected_impls():
        assert impl in table
    lines = 5 + len(tiny_results["records"]) + len(tiny_results["skipped"])  # with the overhead
    assert len(table.splitlines()) == lines


@pytest.mark.parametrize("name", ["cpu-2026-12-02", "cpu-regime-2026-12-02"])
def test_committed_tables_regenerate_byte_for_byte(name):
    folder = bench.results_root() / name
    results = bench.load_benchmark(folder)
    assert bench.records_csv(results["records"]) == (folder / "results.csv").read_text()
    typed = [asdict(BenchRecord(**r)) for r in results["records"]]
    assert json.dumps(typed) == json.dumps(results["records"])


# ----------------------------------------------------------------------------- targets

def _fake(impl, L, batch, median, variant="eager", dim=192, tokens=65):
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
    vs_vit = got["speed-up of pf-1-12 batched over serial ViT-12"]
    # 20 / 12.5; its range 18 / 13.75 to 22 / 11.25
    assert (vs_vit["value"], vs_vit["low"], vs_vit["high"]) == pytest.approx((1.6, 18 / 13.75, 22 / 11.25))
    assert vs_vit["holds"] and vs_vit["sizes_match"]
    assert not got["speed-up of pf-1-12 batched over reference loop"]["holds"]   # 1.44 < 1.5
    assert got["pf-1-12 batched achieved / matmul peak"]["value"] == pytest.approx(0.8)  # 80 of 100
    assert got["latency pf-1-12 batched / serial ViT-12"]["holds"]  # 1.04 <= 1.05
    assert "timm" not in " ".join(got)  # no timm record: that target is not decidable
    gpu = [_fake(i, L, 1, m, variant=v, dim=384) for v in ("graph", "eager") for i, L, m in
           (("pf-batched", 1, 1.0), ("pf-batched", 24, 1.2), ("vit", 1, 1.0), ("vit", 24, 9.0))]
    checks = check_targets({"environment": {"device": "cuda"}, "records": gpu})
    assert [(c["target"], c["holds"]) for c in checks] == [
        ("GPU batch 1 (eager): latency pf-batched L=24 / L=1", True),
        ("GPU batch 1 (eager): latency vit L=24 / L=1", False),      # 9 < 10
        ("GPU batch 1 (graph): latency pf-batched L=24 / L=1", True),
        ("GPU batch 1 (graph): latency vit L=24 / L=1", False)]


def test_targets_are_a_table_checked_at_their_width():
    assert all(t.op in (">=", "<=") and t.threshold > 0 for t in bench.TARGETS)
    # the overhead-regime target is set at D = 32 only: a run at D = 64 cannot decide it
    recs = [_fake("pf-batched", L, 1, m, dim=64, tokens=17) for L, m in ((1, 1.0), (24, 1.2))]
    assert check_targets({"environment": {"device": "cpu"}, "records": recs}) == []
    at32 = [dict(r, dim=32) for r in recs]
    (check,) = check_targets({"environment": {"device": "cpu"}, "records": at32})
    assert check["target"] == "CPU batch 1: latency pf-1-24 batched / pf-1-1" and check["holds"]
    # a table of one's own: a ViT-1 over pf-1-1 at a width of the run's
    mine = bench.Target("cpu", "mine", ("pf-batched", 1, 24), ("pf-batched", 1, 1), "<=", 1.1, 64)
    (check,) = check_targets({"environment": {"device": "cpu"}, "records": recs}, targets=(mine,))
    assert check["value"] == pytest.approx(1.2) and not check["holds"] and check["sizes_match"]


# ----------------------------------------------------------------------------- rerun vs committed

def _case(median, spread=0.1, **fields_):
    r = dict(implementation="vit", variant="eager", label="vit", batch=1, layers=1, dim=192,
             tokens=65, dtype="float32", device="cpu", median_ms=median,
             p25_ms=median * (1 - spread), p75_ms=median * (1 + spread))
    return dict(r, **fields_)


def test_compare_runs_gives_the_ratio_and_whether_the_spreads_overlap():
    reference = {"records": [_case(2.0), _case(2.0, layers=2), _case(2.0, layers=4),
                             _case(5.0, layers=16)]}
    new = {"records": [_case(3.0), _case(2.1, layers=2), _case(2.5, 0.2, layers=4),
                       _case(1.0, layers=8)]}
    rows = compare_runs(new, reference)
    assert [(r["layers"], r["ratio"], r["within_spread"]) for r in rows] == [
        (1, pytest.approx(1.5), False),     # 2.7-3.3 against 1.8-2.2: apart
        (2, pytest.approx(1.05), True),     # 1.89-2.31 against 1.8-2.2: they overlap
        (4, pytest.approx(1.25), True),     # 2.0-3.0 against 1.8-2.2: the ranges overlap,
    ]                                       # though the median lies outside; L = 8, 16: one run each
    text = format_comparison(rows, "then")
    assert "NO" in text and "2 of 3 cases" in text
    assert compare_runs({"records": [_case(3.0, batch=999)]}, reference) == []


# ----------------------------------------------------------------------------- saved runs

def test_save_refuses_to_overwrite(tiny_results, tmp_path):
    folder = tmp_path / "run"
    paths = bench.save_benchmark(tiny_results, folder)
    assert sorted(p.name for p in paths) == sorted(bench.RESULT_FILES)
    before = (folder / "results.json").read_bytes()
    with pytest.raises(FileExistsError, match="earlier run"):
        bench.save_benchmark(tiny_results, folder)
    assert (folder / "results.json").read_bytes() == before
    bench.save_benchmark(tiny_results, folder, overwrite=True)  # only when asked
    with pytest.raises(TypeError, match="run_benchmark"):
        bench.save_benchmark({"records": []}, tmp_path / "other")


def test_load_benchmark_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError):
        bench.load_benchmark(tmp_path)
    (tmp_path / "results.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a duat benchmark"):
        bench.load_benchmark(tmp_path)


def test_latest_run_picks_the_newest_full_run_of_a_device(tiny_results, tmp_path):
    def save(name, date, device="cpu", preset="full"):
        env = dict(tiny_results["environment"], date=date, device=device)
        bench.save_benchmark(dict(tiny_results, environment=env, preset=preset), tmp_path / name)

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


def test_committed_runs_are_found_from_any_folder_and_by_name(tmp_path, monkeypatch):
    from duat import locations

    monkeypatch.delenv(locations.RESULTS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)                       # nowhere near the checkout
    root = bench.results_root()
    assert root == locations.packaged() / "bench" and (root / "cpu-2026-11-28").is_dir()
    assert bench.latest_run(device="cpu") == root / "cpu-2026-12-02"      # the newest full run
    assert bench.latest_run(device="cpu", preset="regime") == root / "cpu-regime-2026-12-02"
    assert bench.load_benchmark("cpu-2026-11-28")["environment"]["device"] == "cpu"
    with pytest.raises(FileNotFoundError, match="cpu-2026-11-28") as err:  # names the committed runs
        bench.load_benchmark("cpu-1999-01-01")
    assert str(root) in str(err.value)


def test_an_installed_kit_lists_the_committed_runs_and_those_written_here(tmp_path, monkeypatch, capsys):
    from bench_cases import TINY_ARGS
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
    from bench_cases import TINY_ARGS
    from duat import locations

    monkeypatch.setenv(locations.RESULTS_ENV, str(tmp_path))
    assert bench.results_root() is None and bench.list_runs() == []  # no bench/ in it yet
    bench.save_benchmark(tiny_results, tmp_path / "bench" / "cpu-2030-01-01")
    assert bench.results_root() == tmp_path / "bench"
    assert bench.latest_run() == tmp_path / "bench" / "cpu-2030-01-01"
    monkeypatch.setenv(locations.RESULTS_ENV, str(tmp_path / "nowhere"))
    assert main(["bench", *TINY_ARGS, "--impl", "vit"]) == 2           # before any timing
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("duat bench: error: DUAT_RESULTS=")
    assert "no such folder" in err[0] and str(locations.packaged()) in err[0]


def test_latency_plot_is_linear_unless_log_is_asked(tiny_results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    linear = bench.plot_benchmark(tiny_results)
    assert {ax.get_yscale() for ax in linear.axes} == {"linear"}
    assert all(ax.get_ylim()[0] == 0 for ax in linear.axes)  # latency and %-of-peak from 0
    logged = bench.plot_benchmark(tiny_results, log=True)
    assert "log" in {ax.get_yscale() for ax in logged.axes}
    plt.close("all")


def test_quick_is_read_from_the_preset():
    assert bench.is_quick({"preset": "quick"}) and not bench.is_quick({"preset": "full"})
    assert not bench.is_quick({"records": []})
