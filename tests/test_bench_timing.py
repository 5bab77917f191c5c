"""duat.bench.timing: latency statistics, the probes and their readings, the timing loop, the
op count and the overhead model, on inputs whose answers are known by hand. Nothing here
asserts how fast anything ran."""
import math
from types import SimpleNamespace

import pytest
import torch

from duat import bench
from duat.bench import timing
from duat.bench.records import add_roofline

MS = [1.0, 2.0, 3.0, 4.0, 5.0]          # five calls, in milliseconds
SECONDS = [t / 1e3 for t in MS]


def test_latency_stats_of_known_times():
    s = bench.latency_stats(SECONDS)
    # linear interpolation between sorted values: the q-quantile sits at q (n - 1) = 4q
    want = dict(median_ms=3.0, mean_ms=3.0, min_ms=1.0, p10_ms=1.4, p25_ms=2.0, p75_ms=4.0,
                p90_ms=4.6, iqr_ms=2.0, rel_iqr=2 / 3)
    assert s == pytest.approx(want)
    assert list(s) == list(want)                       # the record's column order
    assert bench.latency_stats([0.002])["iqr_ms"] == 0.0
    with pytest.raises(ValueError, match="no timings"):
        bench.latency_stats([])


def test_latency_ratio_pairs_opposite_quartiles():
    a = dict(median_ms=6.0, p25_ms=5.0, p75_ms=8.0)
    b = dict(median_ms=3.0, p25_ms=2.0, p75_ms=4.0)
    assert bench.latency_ratio(a, b) == {"value": 2.0, "low": 1.25, "high": 4.0}


def test_probe_readings_of_known_times():
    gemm = timing.Probe("matmul-peak", lambda: None, work=2 * 10 ** 9, about="x", seconds=SECONDS)
    peak = timing.peak_reading(gemm, {"size": 1000, "dtype": "float32"})
    # 2e9 FLOPs in 3 ms (median), 4 ms (p75: the slow quartile), 2 ms (p25)
    assert (peak["gflops"], peak["gflops_p25"], peak["gflops_p75"]) == pytest.approx((2000 / 3, 500, 1000))
    assert (peak["size"], peak["dtype"], peak["calls"]) == (1000, "float32", 5)
    ops = timing.Probe("op-overhead", lambda: None, work=100, about="a probe", seconds=SECONDS)
    tau = timing.overhead_reading(ops)                 # 3 ms over 100 operations: 30 us each
    assert (tau["us_per_op"], tau["us_p25"], tau["us_p75"]) == pytest.approx((30, 20, 40))
    assert (tau["ops"], tau["calls"], tau["probe"]) == (100, 5, "a probe")
    read = timing.Probe("memory-bandwidth", lambda: None, work=4 * 10 ** 6, about="b", seconds=SECONDS)
    bw = timing.bandwidth_reading(read)                # 4 MB in 2 ms at the fast quartile: 2 GB/s
    assert (bw["gbps"], bw["gbps_p25"], bw["gbps_p75"]) == pytest.approx((4 / 3, 1, 2))


def test_probes_do_what_they_say():
    gemm = timing.gemm_probe(16, torch.device("cpu"), "float32")
    assert gemm.work == 2 * 16 ** 3 and gemm.fn().shape == (16, 16)
    read = timing.bandwidth_probe(torch.device("cpu"), "float32", nbytes=4096)
    assert read.work == 4096 and read.fn().item() == 1024.0   # the sum of 1024 ones
    ops = timing.overhead_probe(torch.device("cpu"), "float32")
    assert ops.work == bench.count_ops(ops.fn) > 100


def test_time_cases_times_the_probes_before_every_round():
    log = []
    model = SimpleNamespace(config=SimpleNamespace(dim=8))
    case = timing.Case("vit", "eager", 1, 1, model, lambda: log.append("case"))
    probe = timing.Probe("matmul-peak", lambda: log.append("probe"), work=1, about="")
    spec = SimpleNamespace(warmup=1, reps=4, min_reps=4, rounds=2, max_case_seconds=10.0)
    timing.time_cases([case], spec, torch.device("cpu"), say=lambda _: None, probes=probe)
    timed = log[1:]                                    # after the one warm-up call
    assert timed == ["probe", "probe", "case", "case", "probe", "probe", "case", "case"]
    assert (len(probe.seconds), len(case.seconds), case.warmup) == (4, 4, 1)


def test_overhead_model_takes_the_larger_term():
    r = bench.add_overhead_model({"ops": 100, "flop_bound_ms": 0.5}, us_per_op=10.0)
    assert r["overhead_ms"] == pytest.approx(1.0) and r["predicted_ms"] == pytest.approx(1.0)
    assert r["bound_by"] == "overhead"
    given = {"ops": 100, "flop_bound_ms": 3.0}
    r = bench.add_overhead_model(given, us_per_op=10.0)
    assert r["predicted_ms"] == pytest.approx(3.0) and r["bound_by"] == "flops"
    assert given == {"ops": 100, "flop_bound_ms": 3.0}  # a new record; the given one unchanged
    assert bench.add_overhead_model(given, None)["predicted_ms"] is None


def test_roofline_of_a_known_record():
    given = {"flops": 2 * 10 ** 9, "median_ms": 4.0}
    r = add_roofline(given, 1000.0)       # 2 GFLOP in 4 ms: 500 GFLOP/s, half a 1000 GFLOP/s peak
    assert (r["achieved_gflops"], r["flop_bound_ms"], r["peak_fraction"]) == pytest.approx((500, 2, 0.5))
    assert "achieved_gflops" not in given
    bare = add_roofline(given, None)
    assert bare["achieved_gflops"] == pytest.approx(500) and bare["flop_bound_ms"] is None


def test_count_ops_sees_the_serial_layers_and_not_the_parallel_branches():
    from bench_cases import TINY

    spec = bench.BenchSpec(**TINY)

    def ops(impl, L, batch=1):
        model = bench.build_model(impl, L, spec)
        return bench.count_ops(lambda: model(torch.randn(batch, 1, 8, 8)))

    per_layer = ops("vit", 2) - ops("vit", 1)
    assert per_layer > 10 and ops("vit", 5) - ops("vit", 1) == 4 * per_layer
    assert ops("pf-batched", 5) == ops("pf-batched", 2)   # one batched computation at any n >= 2
    assert ops("pf-reference", 3) - ops("pf-reference", 2) > 10  # the loop: a layer's ops per branch
    assert ops("vit", 3, batch=4) == ops("vit", 3)          # the count does not depend on the batch


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


def test_op_overhead_is_measured_and_positive():
    ov = bench.op_overhead("cpu", reps=5)
    assert ov["ops"] > 100 and ov["calls"] == 5
    assert 0 < ov["us_p25"] <= ov["us_per_op"] <= ov["us_p75"] and math.isfinite(ov["us_per_op"])


def test_the_probes_and_the_model_refuse_bad_input_in_one_line():
    for probe in (bench.op_overhead, bench.matmul_peak, bench.memory_bandwidth):
        with pytest.raises(ValueError, match="unknown dtype 'float8'; known: float32"):
            probe("cpu", dtype="float8")
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


def test_estimate_bytes_counts_the_weights_it_holds():
    from duat.counting import count_parameters
    from duat.registry import create_model, model_config

    c = model_config("pf-1-4", size="tiny", image_size=8, in_channels=1)
    params = count_parameters(create_model("pf-1-4", size="tiny", image_size=8, in_channels=1))
    one, two = bench.estimate_bytes(c, 1), bench.estimate_bytes(c, 2)
    assert one > 4 * params and two > one                     # weights, then activations per batch
    assert bench.estimate_bytes(c, 1, "bfloat16") * 2 == one   # half the bytes per number
    with pytest.raises(ValueError, match="unknown dtype"):
        bench.estimate_bytes(c, 1, "float64")
