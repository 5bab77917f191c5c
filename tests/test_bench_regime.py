"""The latency regime map (duat.bench.regime) and its model t = max(ops x tau, F / P): a
sweep over token widths, its grids, boundary and flat limit, the model against the
measurement, the committed map, and a one-device run against the model
(duat.bench.one_process)."""
import math

import pytest

from bench_cases import TINY
from duat import bench
from duat.bench import BenchSpec, run_benchmark

REGIME = dict(TINY, dims=(8, 16), heads=2, layers=(1, 2, 3), batches=(1,),
              implementations=("vit", "pf-batched"))


@pytest.fixture(scope="module")
def regime_results():
    return run_benchmark(BenchSpec(**REGIME))


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


def test_regime_run_saves_its_maps_and_is_found_apart(regime_results, tmp_path):
    paths = bench.save_benchmark(dict(regime_results, preset="regime"), tmp_path / "cpu-regime")
    assert sorted(p.name for p in paths) == sorted(bench.RESULT_FILES + bench.REGIME_FILES)
    bench.save_benchmark(bench.load_benchmark("cpu-2026-12-02"), tmp_path / "cpu-full")  # by depth
    assert bench.latest_run(tmp_path).name == "cpu-full"       # a regime sweep is not a depth run
    assert bench.latest_run(tmp_path, preset="regime").name == "cpu-regime"
    with pytest.raises(ValueError, match="no token width D=99"):
        bench.plot_benchmark(regime_results, dim=99)


def test_the_maps_refuse_what_the_run_does_not_hold_in_one_line(regime_results):
    with pytest.raises(ValueError, match="no eager records at batch 7; it has batch 1 eager"):
        bench.regime_grid(regime_results, batch=7)
    with pytest.raises(ValueError, match="nothing to draw"):
        bench.plot_regime({"records": [], "environment": {}})


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
    a = bench.regime.regime_agreement(bench.load_benchmark("cpu-regime-2026-12-02"))
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


def test_one_process_regime_refuses_what_is_not_a_branch_parallel_run():
    from duat.bench import one_process as op
    with pytest.raises(ValueError, match="branch-parallel run"):
        op.one_process_regime(bench.load_benchmark("cpu-2026-12-02"))


def test_headline_and_one_panel_map_of_the_committed_run():
    import matplotlib.pyplot as plt
    m = bench.load_benchmark("cpu-regime-2026-12-02")
    text = bench.regime.format_headline(m)
    assert "at 14 of 75 grid points" in text and "batch 64: nowhere" in text
    assert "batch 1, D 32: Para-Former-1-24 / Para-Former-1-1 = 1.38 [1.21, 1.54]" in text
    fig = bench.plot_regime(m, panels=("pf",))
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3        # one panel per batch, side by side
    plt.close(fig)
    with pytest.raises(ValueError, match="panels must name some of"):
        bench.plot_regime(m, panels=("speed",))
