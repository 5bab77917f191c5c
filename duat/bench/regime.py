"""The latency regime map: where adding parallel layers costs little, measured over (D, n, batch).

docs/method.md section 4 ends with "time does not grow with n only where the device has idle
parallel capacity". A regime sweep (`duat bench --preset regime`) measures how far that
reaches on this machine. Each forward pass costs at least two things, both measured in the
same run (duat.bench.harness):

- a fixed cost per dispatched operation (the overhead probe: us_per_op), times the ops the
  model dispatches: ops x overhead. The batched stage dispatches about as many ops at any
  n; the serial ViT-n dispatches n times a layer's;
- its arithmetic at the matmul peak: FLOPs / peak, linear in n for both.

The model t = max(ops x overhead, FLOPs / peak) predicts every case. Para-Former-1-n stays
near Para-Former-1-1 while the overhead term dominates, and turns linear in n where FLOPs /
peak overtakes it: the predicted boundary drawn on the maps. Here:

- regime_grid: the measured ratios on the (D, n) grid of one batch size, and the model's;
- boundary: where, along n, FLOPs / peak overtakes the overhead floor;
- claim_cells / format_regime: where the flat-latency claim holds on this device;
- plot_regime (heat maps) and plot_model (predicted against measured).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import FixedLocator, FuncFormatter

# The flat-latency claim, read on measured numbers: Para-Former-1-n within this factor of
# Para-Former-1-1 (the kit's target at D = 32, T = 17; a serial ViT-24 is ~15-18x there).
FLAT_LIMIT = 1.5

PANELS = (("pf", "Para-Former-1-n / Para-Former-1-1"),
          ("vit", "ViT-n / ViT-1 (serial)"),
          ("pf_vs_vit", "Para-Former-1-n / ViT-n (equal FLOPs)"))


def is_regime(results: dict) -> bool:
    """Whether a run is a regime sweep: made with that preset, or over several widths D."""
    return results.get("preset") == "regime" or len({r["dim"] for r in results["records"]}) > 1


def regime_grid(results: dict, batch: int, variant: str = "eager") -> dict:
    """The (D, n) grid of one batch size: dims, ns, and for each panel of PANELS the
    measured ratio (rows D, columns n; NaN where a case is missing) with its range from the
    interquartile ranges, and the same ratio predicted by the overhead model."""
    recs = [r for r in results["records"] if r["batch"] == batch and r["variant"] == variant]
    if not recs:
        have = sorted({(r["batch"], r["variant"]) for r in results["records"]})
        raise ValueError(f"this run has no {variant} records at batch {batch}; it has "
                         + (", ".join(f"batch {b} {v}" for b, v in have) or "no records"))
    dims = sorted({r["dim"] for r in recs})
    ns = sorted({r["layers"] for r in recs})
    shape = (len(dims), len(ns))
    out = {"batch": batch, "dims": dims, "ns": ns}
    for key, _ in PANELS:
        for suffix in ("", "_low", "_high", "_predicted"):
            out[key + suffix] = np.full(shape, np.nan)
    index = {(r["implementation"], r["dim"], r["layers"]): r for r in recs}
    for i, D in enumerate(dims):
        def get(impl, n):
            return index.get((impl, D, n))
        for j, n in enumerate(ns):
            pairs = {"pf": (get("pf-batched", n), get("pf-batched", 1)),
                     "vit": (get("vit", n), get("vit", 1)),
                     "pf_vs_vit": (get("pf-batched", n), get("vit", n))}
            for key, (a, b) in pairs.items():
                if a is None or b is None:
                    continue
                out[key][i, j] = a["median_ms"] / b["median_ms"]
                out[key + "_low"][i, j] = a["p25_ms"] / b["p75_ms"]
                out[key + "_high"][i, j] = a["p75_ms"] / b["p25_ms"]
                if a.get("predicted_ms") and b.get("predicted_ms"):
                    out[key + "_predicted"][i, j] = a["predicted_ms"] / b["predicted_ms"]
    return out


def boundary(results: dict, batch: int, dim: int, implementation: str = "pf-batched",
             variant: str = "eager") -> float | None:
    """Where along n, for Para-Former-1-n at this (D, batch), FLOPs / peak overtakes the
    overhead floor ops x overhead, as a fractional index into the run's sorted n values
    (log-linear between grid points); -0.5 if FLOPs already dominate at the first n,
    None if the overhead still dominates at the last."""
    rs = sorted((r for r in results["records"] if r["batch"] == batch and r["dim"] == dim
                 and r["implementation"] == implementation and r["variant"] == variant),
                key=lambda r: r["layers"])
    g = [math.log(r["flop_bound_ms"] / r["overhead_ms"]) for r in rs
         if r.get("overhead_ms") and r.get("flop_bound_ms")]
    if len(g) != len(rs) or not g:
        return None
    if g[0] >= 0:
        return -0.5
    for j in range(1, len(g)):
        if g[j] >= 0:
            return j - 1 + (-g[j - 1]) / (g[j] - g[j - 1])
    return None


def claim_cells(results: dict, limit: float = FLAT_LIMIT, variant: str = "eager") -> list[dict]:
    """Every (batch, D, n > 1) whose measured Para-Former-1-n / Para-Former-1-1 is <= limit:
    where adding parallel layers costs little on this device. Each with the serial ViT's
    ratio at the same place, for contrast."""
    cells = []
    for batch in sorted({r["batch"] for r in results["records"] if r["variant"] == variant}):
        grid = regime_grid(results, batch, variant)
        for i, D in enumerate(grid["dims"]):
            for j, n in enumerate(grid["ns"]):
                if n > 1 and grid["pf"][i, j] <= limit:
                    cells.append({"batch": batch, "dim": D, "n": n, "pf": float(grid["pf"][i, j]),
                                  "vit": float(grid["vit"][i, j])})
    return cells


def model_error(results: dict) -> dict:
    """How well t = max(ops x overhead, FLOPs / peak) predicts the measured medians: the
    median and the largest |log(predicted / measured)|, as factors, and the median signed
    factor (above 1: the model predicts too slow; below: too fast), per dominant term; and,
    for comparison, the same for ops x overhead + FLOPs / peak ("sum model")."""
    def factors(predicted, rs):  # predicted(record) against each record's median
        logs = np.array([math.log(predicted(r) / r["median_ms"]) for r in rs])
        return {"cases": len(rs), "median_factor": float(np.exp(np.median(np.abs(logs)))),
                "worst_factor": float(np.exp(np.abs(logs).max())),
                "median_signed": float(np.exp(np.median(logs)))}

    modelled = [r for r in results["records"] if r.get("predicted_ms")]
    out = {}
    if modelled:  # the same two terms added instead of maxed, for comparison
        out["sum model"] = factors(lambda r: r["overhead_ms"] + r["flop_bound_ms"], modelled)
    for bound in ("overhead", "flops", None):
        rs = [r for r in modelled if bound is None or r["bound_by"] == bound]
        if rs:
            out[bound or "all"] = factors(lambda r: r["predicted_ms"], rs)
    return out


def format_regime(results: dict, limit: float = FLAT_LIMIT) -> str:
    """The maps as text: per batch, Para-Former-1-n / Para-Former-1-1 and ViT-n / ViT-1 by
    (D, n); then where the flat-latency claim holds, and how well the model predicts."""
    ov = results.get("overhead") or {}
    lines = []
    if ov:
        lines.append(f"per-op overhead {ov['us_per_op']:.1f} us (p25-p75 {ov['us_p25']:.1f}-"
                     f"{ov['us_p75']:.1f}; {ov['probe']}, {ov['ops']} ops)")
    for batch in sorted({r["batch"] for r in results["records"] if r["variant"] == "eager"}):
        g = regime_grid(results, batch)
        head = f"{'D':>5} " + " ".join(f"{'n=' + str(n):>11}" for n in g["ns"])
        lines += ["", f"batch {batch}: Para-Former-1-n / Para-Former-1-1 (ViT-n / ViT-1)", head]
        for i, D in enumerate(g["dims"]):
            cells = [f"{g['pf'][i, j]:5.2f} ({g['vit'][i, j]:4.1f})" for j in range(len(g["ns"]))]
            lines.append(f"{D:>5} " + " ".join(f"{c:>11}" for c in cells))
    cells = claim_cells(results, limit)
    lines += ["", f"flat latency (Para-Former-1-n <= {limit}x Para-Former-1-1, n > 1) holds at "
                  f"{len(cells)} of the grid's points:"]
    by = {}
    for c in cells:
        by.setdefault((c["batch"], c["dim"]), []).append(c["n"])
    if not by:
        lines.append("  none")
    for (batch, D), ns in sorted(by.items()):
        lines.append(f"  batch {batch:>2}, D {D:>3}: n = {', '.join(map(str, ns))}")
    for key, e in model_error(results).items():
        what = ("t = ops x overhead + FLOPs / peak, all cases" if key == "sum model" else
                f"t = max(ops x overhead, FLOPs / peak), {key}-bound cases")
        lines.append(f"model {what} ({e['cases']}): "
                     f"off by a factor {e['median_factor']:.2f} (median), {e['worst_factor']:.2f} "
                     f"(worst); median predicted / measured {e['median_signed']:.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def plot_regime(results: dict, variant: str = "eager"):
    """Heat maps over (D, n), one row per batch size: the three ratios of PANELS, annotated,
    with the predicted boundary (where FLOPs / peak overtakes ops x overhead for
    Para-Former-1-n) drawn as a white line. Colours on a log scale centred on 1."""
    norm = LogNorm(vmin=1 / 16, vmax=16)   # the same colours for the same ratio, every panel
    ticks = [1 / 16, 1 / 4, 1 / 2, 1, 2, 4, 16]
    batches = sorted({r["batch"] for r in results["records"] if r["variant"] == variant})
    if not batches:
        raise ValueError(f"nothing to draw: the run has no {variant} records")
    fig, axes = plt.subplots(len(batches), len(PANELS), figsize=(5.0 * len(PANELS), 3.6 * len(batches)),
                             squeeze=False)
    for row, batch in enumerate(batches):
        g = regime_grid(results, batch, variant)
        line = [boundary(results, batch, D, variant=variant) for D in g["dims"]]
        for col, (key, title) in enumerate(PANELS):
            ax, values = axes[row][col], g[key]
            image = ax.imshow(np.clip(values, norm.vmin, norm.vmax), cmap="RdBu_r",
                              origin="lower", aspect="auto", norm=norm)
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    if np.isfinite(values[i, j]):
                        ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7)
            # the boundary: left of it the overhead floor dominates (None: it does at every n)
            xs = [len(g["ns"]) - 0.5 if b is None else b for b in line]
            ys = list(range(len(xs)))
            ax.plot(xs, ys, color="white", lw=2.5)
            ax.plot(xs, ys, color="k", lw=1, ls="--")
            ax.set_xlim(-0.5, len(g["ns"]) - 0.5)
            ax.set_xticks(range(len(g["ns"])), [str(n) for n in g["ns"]])
            ax.set_yticks(range(len(g["dims"])), [str(D) for D in g["dims"]])
            ax.set_xlabel("n (parallel branches, or serial layers)")
            ax.set_ylabel("token width D")
            ax.set_title(f"{title}\nbatch {batch}", fontsize=9)
            bar = fig.colorbar(image, ax=ax, shrink=0.85)
            bar.ax.yaxis.set_major_locator(FixedLocator(ticks))
            bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            bar.ax.yaxis.set_minor_locator(FixedLocator([]))
    env = results["environment"]
    tokens = sorted({r["tokens"] for r in results["records"]})
    fig.suptitle(f"{env['device_name']} · {env['dtype']} · {env['threads']} thread(s) · "
                 f"torch {env['torch']} · T = {', '.join(map(str, tokens))} tokens\n"
                 "dashed: the predicted boundary, where FLOPs / peak overtakes ops x overhead "
                 "for Para-Former-1-n (left of it the overhead floor dominates)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_model(results: dict, ax=None):
    """Predicted against measured latency, every case, log-log, coloured by the term that
    sets the prediction; the diagonal is a perfect prediction."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    else:
        fig = ax.figure
    rs = [r for r in results["records"] if r.get("predicted_ms")]
    for bound, marker in (("overhead", "o"), ("flops", "s")):
        for impl, colour in (("pf-batched", "C1"), ("vit", "C0")):
            sel = [r for r in rs if r["bound_by"] == bound and r["implementation"] == impl]
            if sel:
                ax.scatter([r["median_ms"] for r in sel], [r["predicted_ms"] for r in sel],
                           marker=marker, color=colour, alpha=0.7, s=18,
                           label=f"{impl}, {bound}-bound")
    if rs:
        lo = min(min(r["median_ms"], r["predicted_ms"]) for r in rs) / 1.5
        hi = max(max(r["median_ms"], r["predicted_ms"]) for r in rs) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured median latency (ms)")
    ax.set_ylabel("predicted: max(ops x overhead, FLOPs / peak) (ms)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
