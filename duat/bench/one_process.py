"""One device's batched Para-Former-1-n against the latency model t = max(ops x tau, F / P).

A branch-parallel run (`duat bench --impl pf-branch-parallel`, duat.bench.across_ranks)
times, as its "one" column, batched Para-Former-1-n on a single device: the only GPU
latencies the kit ships (one visit to an NVIDIA H200). Such a run measured neither the
fixed cost per operation tau nor the matmul peak P, and timed no serial ViT-n beside it.
one_process_regime sets it against the model (duat.bench.regime) with only what the run
holds: tau is bounded above by the run itself, and a peak it did not measure must be given
with its source (PUBLISHED_PEAKS: a published specification, labelled as one, never a
measurement). Nothing is taken from a CPU run.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from duat.bench import across_ranks
from duat.bench.timing import count_ops
from duat.counting import flops
from duat.locations import committed
from duat.registry import create_model, model_config

# A peak for a run that measured none: a published specification, never a measurement, and
# labelled as one wherever it is used. The H200 rows ran float32 with matmul precision
# 'highest' (no TF32 tensor cores), so the FP32 figure is the comparable one.
PUBLISHED_PEAKS = {
    "NVIDIA H200": {"gflops": 67_000.0, "source": "NVIDIA's published FP32 peak of the H200 SXM, "
                    "67 TFLOP/s (the H200 NVL is listed at 60): a specification, not a measurement"},
}


def _ops_on_meta(kw: dict, n: int) -> int:
    """Operations one forward pass of batched Para-Former-1-n dispatches, counted on the meta
    device: no arithmetic, and no CPU branch chunks (as on a GPU)."""
    with torch.device("meta"):
        model = create_model(f"pf-1-{n}", stage="batched", **kw).eval()
        x = torch.empty(1, kw["in_channels"], kw["image_size"], kw["image_size"])
    return count_ops(lambda: model(x))


def _model_ratio(ops1, opsn, f1, fn, tau):
    return max(opsn * tau, fn) / max(ops1 * tau, f1)


def one_process_regime(run: dict | str | Path, peak: dict | None = None) -> dict:
    """A branch-parallel run's one-process column (batched Para-Former-1-n on one device, no
    serial model beside it) against t = max(ops x tau, F / P), with what that run measured.

    `run`: its results dict, folder, or the name of a committed run. `peak`: {"gflops",
    "source"} (e.g. PUBLISHED_PEAKS[...]) where the run measured none. tau, unless the run
    measured it, is bounded above by the run itself: Para-Former-1-1's time at the smallest
    batch over its operations (all of it fixed cost). Returns per (batch, n) the measured
    time and ratio, FLOPs, the FLOP bound and the model at that tau; and, at the smallest
    batch and largest n, the tau the model would need for flat latency and for the measured
    ratio ("tau_fit_us", with the time the model then gives n = 1; None if no tau gives it)."""
    if isinstance(run, (str, Path)):
        path = Path(run)
        run = across_ranks.load(path if path.exists() or len(path.parts) > 1
                                   else committed(across_ranks.FOLDER) / path)
    if not isinstance(run, dict) or "records" not in run or not all("one" in r for r in run["records"]):
        raise ValueError("run must be a branch-parallel run (duat bench --impl pf-branch-parallel)")
    spec, env = run["spec"], run["environment"]
    if peak is None and run.get("peak"):
        peak = {"gflops": run["peak"]["gflops"], "source": "measured in the run"}
    if peak is not None and not (isinstance(peak, dict) and isinstance(peak.get("source"), str)
                                 and peak["source"] and isinstance(peak.get("gflops"), (int, float))
                                 and peak["gflops"] > 0):
        raise ValueError(f"peak must be {{'gflops': a rate > 0, 'source': where it comes from}}, got {peak!r}")
    kw = {k: spec[k] for k in ("size", "image_size", "in_channels") if k in spec}
    kw["num_classes"] = spec.get("num_classes", 10)
    if spec.get("patch_size"):
        kw["patch_size"] = spec["patch_size"]
    config = model_config("pf-1-1", **kw)
    ones = {(r["batch"], r["n"]): r["one"] for r in run["records"]}
    batches, ns = sorted({b for b, _ in ones}), sorted({n for _, n in ones})
    if ns[0] != 1:
        raise ValueError("the run has no n = 1 to compare with")
    ops = {n: _ops_on_meta(kw, n) for n in ns}
    measured_tau = (run.get("overhead") or {}).get("us_per_op")
    tau = measured_tau if measured_tau else min(ones[b, 1]["median_ms"] for b in batches) / ops[1] * 1e3
    P = peak["gflops"] if peak else None
    rows = []
    for b in batches:
        for n in ns:
            one, base = ones[b, n], ones[b, 1]
            F = flops(model_config(f"pf-1-{n}", **kw), b)
            flop_ms = F / P / 1e6 if P else None
            model_ms = max(ops[n] * tau / 1e3, flop_ms) if P else None   # the model needs both
            rows.append({"batch": b, "n": n, "median_ms": one["median_ms"], "p25_ms": one["p25_ms"],
                         "p75_ms": one["p75_ms"], "ratio": one["median_ms"] / base["median_ms"],
                         "ratio_low": one["p25_ms"] / base["p75_ms"], "ratio_high": one["p75_ms"] / base["p25_ms"],
                         "gflop": F / 1e9, "achieved_gflops": F / one["median_ms"] / 1e6, "ops": ops[n],
                         "flop_bound_ms": flop_ms, "model_ms": model_ms})
    for r in rows:
        base = next(q["model_ms"] for q in rows if q["batch"] == r["batch"] and q["n"] == 1)
        r["model_ratio"] = r["model_ms"] / base if P else None
    out = {"device_name": env.get("device_name"), "torch": env.get("torch"), "dtype": spec.get("dtype"),
           "matmul_precision": env.get("float32_matmul_precision"), "reps": spec.get("reps"),
           "dim": config.dim, "heads": config.heads, "tokens": config.num_tokens, "rows": rows,
           "peak": peak, "tau_us": tau, "tau_measured": bool(measured_tau), "ops": ops,
           "needs": [w for w, have in (("tau (the fixed cost per operation)", measured_tau),
                                       ("P (the matmul peak)", run.get("peak"))) if not have],
           "serial_timed": False, "flat_tau_us": None, "tau_fit_us": None, "fit_t1_ms": None}
    b, n = batches[0], ns[-1]
    first, last = (next(r for r in rows if r["batch"] == b and r["n"] == k) for k in (1, n))
    out["at"] = {"batch": b, "n": n, "measured": last["ratio"], "low": last["ratio_low"],
                 "high": last["ratio_high"], "model": last["model_ratio"], "t1_ms": first["median_ms"]}
    if P:
        f1, fn = first["flop_bound_ms"], last["flop_bound_ms"]
        out["flat_tau_us"] = fn / ops[n] * 1e3           # tau above which the model says flat to n
        target, lo, hi = last["ratio"], 1e-6, 1e6         # model ratio falls as tau grows: bisect
        if _model_ratio(ops[1], ops[n], f1, fn, hi * 1e-3) <= target <= _model_ratio(ops[1], ops[n], f1, fn, lo * 1e-3):
            for _ in range(200):
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if _model_ratio(ops[1], ops[n], f1, fn, mid * 1e-3) > target else (lo, mid)
            out["tau_fit_us"] = math.sqrt(lo * hi)
            out["fit_t1_ms"] = max(ops[1] * out["tau_fit_us"] / 1e3, f1)
    return out


def format_one_process(c: dict) -> str:
    """one_process_regime as text: what was measured, what was not, the table, the reading."""
    tau = (f"{c['tau_us']:.1f} us, measured" if c["tau_measured"] else
           f"not measured in this run; at most {c['tau_us']:.1f} us (all of Para-Former-1-1's time, "
           f"{c['at']['t1_ms']:.3f} ms, spent on its {c['ops'][1]} operations)")
    lines = [f"{c['device_name']}, one process: batched Para-Former-1-n, D = {c['dim']}, {c['heads']} heads, "
             f"{c['tokens']} tokens, {c['dtype']} (matmul precision {c['matmul_precision']}), torch {c['torch']}, "
             f"medians of {c['reps']} calls",
             "peak P: " + (f"{c['peak']['gflops']:.0f} GFLOP/s, {c['peak']['source']}" if c["peak"] else "none"),
             f"fixed cost per operation tau: {tau}",
             f"operations: {c['ops'][1]} at n = 1, " + ", ".join(f"{v} at n = {k}" for k, v in c["ops"].items() if k > 1)
             + " (counted on the meta device, no arithmetic; the CUDA run may differ by a few)",
             f"{'batch':>5} {'n':>3} {'measured ms':>11} {'p25-p75':>13} {'/ n=1':>6} {'GFLOP':>7} "
             f"{'TFLOP/s':>7} {'F/P ms':>7} {'model ms':>8} {'/ n=1':>6}"]
    for r in c["rows"]:
        model = (f"{r['flop_bound_ms']:7.3f} {r['model_ms']:8.3f} {r['model_ratio']:6.2f}"
                 if r["model_ms"] is not None else f"{'-':>7} {'-':>8} {'-':>6}")
        lines.append(f"{r['batch']:>5} {r['n']:>3} {r['median_ms']:11.3f} {r['p25_ms']:6.3f}-{r['p75_ms']:<6.3f} "
                     f"{r['ratio']:6.2f} {r['gflop']:7.2f} {r['achieved_gflops'] / 1e3:7.1f} {model}")
    a = c["at"]
    for b in sorted({r["batch"] for r in c["rows"]}):
        rs = [r for r in c["rows"] if r["batch"] == b]
        last = rs[-1]
        line = (f"batch {b}: measured Para-Former-1-{last['n']} / Para-Former-1-1 = {last['ratio']:.2f} "
                f"[{last['ratio_low']:.2f}, {last['ratio_high']:.2f}], FLOPs {last['gflop'] / rs[0]['gflop']:.2f}x; ")
        if last["model_ms"] is None:
            line += "the model cannot be evaluated: it needs a peak P, which the run did not measure"
        else:
            above = [r["median_ms"] / r["flop_bound_ms"] for r in rs]
            line += (f"the model at tau = {c['tau_us']:.1f} us: {last['model_ratio']:.2f}; measured time "
                     f"{min(above):.1f}x to {max(above):.1f}x the FLOP bound F / P")
        lines.append(line)
    if c["flat_tau_us"] is not None:
        lines.append(f"at batch {a['batch']} the model says flat to n = {a['n']} for any tau >= {c['flat_tau_us']:.1f} us; "
                     + (f"it gives the measured {a['measured']:.2f} only at tau = {c['tau_fit_us']:.2f} us, and "
                        f"then puts Para-Former-1-1 at {c['fit_t1_ms']:.3f} ms, {a['t1_ms'] / c['fit_t1_ms']:.1f}x "
                        f"below the measured {a['t1_ms']:.3f} ms" if c["tau_fit_us"] else
                        f"no tau gives the measured {a['measured']:.2f}"))
    lines.append("not measured in this run: " + ", ".join(c["needs"] + ["a serial ViT-n beside it"]))
    return "\n".join(lines)


def plot_one_process(c: dict):
    """one_process_regime drawn: measured time against n (median, IQR) per batch, the FLOP
    bound F / P and the model at the run's tau (and at tau_fit_us, where there is one).
    Linear axes: the question is flat or linear in n."""
    batches = sorted({r["batch"] for r in c["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 3.8), squeeze=False)
    spec = c["peak"] is not None and c["peak"]["source"] != "measured in the run"
    for ax, b in zip(axes[0], batches):
        rs = [r for r in c["rows"] if r["batch"] == b]
        ns = [r["n"] for r in rs]
        ax.errorbar(ns, [r["median_ms"] for r in rs], fmt="o-", capsize=3, label="measured (median, IQR)",
                    yerr=[[r["median_ms"] - r["p25_ms"] for r in rs], [r["p75_ms"] - r["median_ms"] for r in rs]])
        if c["peak"]:
            ax.plot(ns, [r["flop_bound_ms"] for r in rs], "k:", label="F / P" + (" (P: published spec)" if spec else ""))
            which = "measured" if c["tau_measured"] else "its upper bound"
            ax.plot(ns, [r["model_ms"] for r in rs], "--", label=f"model, tau = {c['tau_us']:.1f} us ({which})")
        if c["tau_fit_us"]:
            fit = [max(r["ops"] * c["tau_fit_us"] / 1e3, r["flop_bound_ms"]) for r in rs]
            ax.plot(ns, fit, "-.", label=f"model, tau = {c['tau_fit_us']:.2f} us (gives the measured ratio)")
        ax.set(xlabel="n (parallel branches)", ylabel="ms per forward pass", title=f"batch {b}", ylim=(0, None))
        ax.legend(fontsize=7)
    fig.suptitle(f"{c['device_name']}, one process, batched Para-Former-1-n (D = {c['dim']}, {c['tokens']} tokens): "
                 "measured against t = max(ops x tau, F / P)", fontsize=10)
    fig.tight_layout()
    return fig
