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
peak overtakes it. Here:

- regime_grid: the measured ratios on the (D, n) grid of one batch size, and the model's;
- boundary: where, along n, FLOPs / peak overtakes the overhead floor; flat_limit: where
  the model's predicted Para-Former-1-n / Para-Former-1-1 passes FLAT_LIMIT (the dashed
  line of the maps). The two differ where the op count grows with n (on a CPU the batched
  stage cuts its branches into chunks past ParallelStage.cpu_row_budget rows);
- claim_cells / format_regime / format_headline: where the flat-latency claim holds on
  this device;
- regime_agreement: cell by cell, does the model say flat where the measurement does;
- compare_regimes: two maps side by side, with what differs between the two runs;
- plot_regime (heat maps), plot_model (predicted against measured) and plot_cartoon (the
  two regimes in arbitrary units).

A run of batched Para-Former-1-n alone on one device (a GPU visit's branch-parallel run) is
set against the same model in duat.bench.one_process.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.ticker import FixedLocator, FuncFormatter

from duat.bench.timing import latency_ratio
from duat.checks import real

# The flat-latency claim, read on measured numbers: Para-Former-1-n within this factor of
# Para-Former-1-1 (the target at D = 32, T = 17 of duat.bench.report.TARGETS; a serial
# ViT-24 is ~15-18x there).
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
                ratio = latency_ratio(a, b)
                out[key][i, j], out[key + "_low"][i, j], out[key + "_high"][i, j] = (
                    ratio["value"], ratio["low"], ratio["high"])
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


def flat_limit(results: dict, batch: int, dim: int, limit: float = FLAT_LIMIT,
               variant: str = "eager") -> float | None:
    """Where along n the model's predicted Para-Former-1-n / Para-Former-1-1 passes `limit`,
    as a fractional index into the run's sorted n values (log-linear between grid points);
    None if it never does. Left of it the model predicts flat latency: the dashed line of
    plot_regime."""
    g = regime_grid(results, batch, variant)
    if dim not in g["dims"]:
        raise ValueError(f"this run has no token width D={dim} at batch {batch}; it has "
                         f"{', '.join(map(str, g['dims']))}")
    return crossing(g["pf_predicted"][g["dims"].index(dim)], limit)


def crossing(ratios, limit: float) -> float | None:
    """Where a row of predicted ratios along n first passes `limit`, as a fractional index
    (log-linear between grid points); None if it never does or a prediction is missing.
    The dashed line of the vision and the decode maps alike."""
    for j in range(1, len(ratios)):
        if not np.isfinite(ratios[j]):
            return None
        if ratios[j] > limit:
            a, b = math.log(max(ratios[j - 1], 1e-12)), math.log(ratios[j])
            return j - 1 + (math.log(limit) - a) / (b - a) if b > a else float(j)
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


def format_headline(results: dict, limit: float = FLAT_LIMIT, variant: str = "eager") -> str:
    """A map's answer in a few lines: where Para-Former-1-n stays within `limit` of
    Para-Former-1-1, the two corners of the smallest batch at the largest n (smallest and
    largest D), and Para-Former-1-n / ViT-n over the whole grid of the largest batch."""
    env, cells = results["environment"], claim_cells(results, limit, variant)
    batches = sorted({r["batch"] for r in results["records"] if r["variant"] == variant})
    grids = {b: regime_grid(results, b, variant) for b in batches}
    total = sum(int(np.isfinite(g["pf"][:, 1:]).sum()) for g in grids.values())
    tokens = ", ".join(map(str, sorted({r["tokens"] for r in results["records"]})))
    lines = [f"{env['device_name']}, {env['threads']} thread(s), {env['dtype']}, {tokens} tokens: "
             f"Para-Former-1-n within {limit:g}x of Para-Former-1-1 at {len(cells)} of {total} "
             f"grid points (batch, D, n > 1)"]
    for b in batches:
        by = {}
        for c in (c for c in cells if c["batch"] == b):
            by.setdefault(c["dim"], []).append(str(c["n"]))
        lines.append(f"  batch {b}: " + ("; ".join(f"D {D}: n = {', '.join(ns)}" for D, ns in by.items())
                                         or "nowhere"))
    g = grids[batches[0]]
    j, n = len(g["ns"]) - 1, g["ns"][-1]
    for i in sorted({0, len(g["dims"]) - 1}):
        lines.append(f"  batch {batches[0]}, D {g['dims'][i]}: Para-Former-1-{n} / Para-Former-1-1 = "
                     f"{g['pf'][i, j]:.2f} [{g['pf_low'][i, j]:.2f}, {g['pf_high'][i, j]:.2f}]; ViT-{n} / "
                     f"ViT-1 = {g['vit'][i, j]:.1f}; Para-Former-1-{n} / ViT-{n} (equal FLOPs) = "
                     f"{g['pf_vs_vit'][i, j]:.2f}")
    last = grids[batches[-1]]["pf_vs_vit"]
    lines.append(f"  batch {batches[-1]}, every D and n: Para-Former-1-n / ViT-n from "
                 f"{np.nanmin(last):.2f} to {np.nanmax(last):.2f}")
    return "\n".join(lines)


def regime_agreement(results: dict, limit: float = FLAT_LIMIT, variant: str = "eager") -> dict:
    """Cell by cell (every batch, D and n > 1), the model against the measurement: is
    Para-Former-1-n / Para-Former-1-1 flat (<= limit) or not? Two readings of the model:

    - "predicted": its predicted ratio is <= limit (left of flat_limit, the dashed line);
    - "overhead_bound": ops x overhead >= FLOPs / peak at that n (left of `boundary`), which
      means flat only where the op count does not grow with n.

    Returns the cells, each reading's agreements (overall and per batch; "optimistic": the
    model says flat where the measurement is not), and the batched stage's op count at the
    second and the last n of each batch (it grows where the CPU stage cuts its branches)."""
    real("limit", limit, low=1.0)
    recs = {(r["batch"], r["dim"], r["layers"]): r for r in results["records"]
            if r["implementation"] == "pf-batched" and r["variant"] == variant}
    cells, ops = [], {}
    for batch in sorted({b for b, _, _ in recs}):
        g = regime_grid(results, batch, variant)
        ops[batch] = [recs[batch, g["dims"][0], n].get("ops") for n in g["ns"][1:2] + g["ns"][-1:]]
        for i, D in enumerate(g["dims"]):
            for j, n in enumerate(g["ns"]):
                measured, predicted = g["pf"][i, j], g["pf_predicted"][i, j]
                if n == 1 or not (np.isfinite(measured) and np.isfinite(predicted)):
                    continue
                cells.append({"batch": batch, "dim": D, "n": n, "measured": float(measured),
                              "predicted": float(predicted), "measured_flat": bool(measured <= limit),
                              "predicted_flat": bool(predicted <= limit),
                              "overhead_bound": recs[batch, D, n]["bound_by"] == "overhead"})
    if not cells:
        raise ValueError("this run has no model predictions to compare (no overhead probe: "
                         "a run made before the regime model, or with measure_peak=False)")

    def count(key, cs):
        return {"cells": len(cs), "agree": sum(c[key] == c["measured_flat"] for c in cs),
                "optimistic": sum(c[key] and not c["measured_flat"] for c in cs),
                "pessimistic": sum(c["measured_flat"] and not c[key] for c in cs)}

    out = {"limit": limit, "cells": cells, "ops": ops}
    for reading, key in (("predicted", "predicted_flat"), ("overhead_bound", "overhead_bound")):
        out[reading] = dict(count(key, cells), by_batch={b: count(key, [c for c in cells if c["batch"] == b])
                                                         for b in ops})
    return out


def format_agreement(agreement: dict) -> str:
    """regime_agreement as text: each reading's score, then the cells the dashed line gets wrong."""
    a, lim = agreement, agreement["limit"]
    lines = [f"the model against the measurement: Para-Former-1-n / Para-Former-1-1 flat (<= {lim:g}) "
             f"or not, at {a['predicted']['cells']} grid points (batch, D, n > 1)"]
    for reading, what in (("predicted", "its predicted ratio (the dashed line)"),
                          ("overhead_bound", "'overhead-bound' (ops x tau >= F/P) read as flat")):
        r = a[reading]
        lines.append(f"  {what}: agrees at {r['agree']} of {r['cells']} ({r['agree'] / r['cells']:.0%}); "
                     f"says flat where it was not at {r['optimistic']}, the reverse at {r['pessimistic']}")
        lines.append("    " + "; ".join(f"batch {b}: {c['agree']} of {c['cells']}"
                                        for b, c in r["by_batch"].items()))
    lines.append("  the batched stage's operations at the second and the last n: " + "; ".join(
        f"batch {b}: {first} and {last}" for b, (first, last) in a["ops"].items()))
    wrong = [c for c in a["cells"] if c["predicted_flat"] != c["measured_flat"]]
    lines.append("  where the dashed line is wrong (measured / predicted ratio): "
                 + ("; ".join(f"batch {c['batch']}, D {c['dim']}, n {c['n']}: {c['measured']:.2f} / "
                              f"{c['predicted']:.2f}" for c in wrong) or "nowhere"))
    return "\n".join(lines)


SPEC_KEYS = ("reps", "min_reps", "warmup", "rounds", "max_case_seconds", "peak_sizes", "threads",
             "dtype", "image_size", "patch_size")
ENV_KEYS = ("device_name", "cpu_count", "threads", "torch", "platform", "load_average")


def compare_regimes(new: dict, reference: dict, variant: str = "eager") -> dict:
    """Two regime runs side by side: Para-Former-1-n / Para-Former-1-1 and ViT-n / ViT-1 at
    every (batch, D, n > 1) both timed, and every setting that differs between the runs
    (the spec's timing fields, the machine, the measured tau and peak, the reps taken)."""
    cells = []
    for batch in sorted({r["batch"] for r in new["records"]} & {r["batch"] for r in reference["records"]}):
        a, b = regime_grid(new, batch, variant), regime_grid(reference, batch, variant)
        for D in sorted(set(a["dims"]) & set(b["dims"])):
            for n in sorted(set(a["ns"]) & set(b["ns"]) - {1}):
                i, j, k, m = a["dims"].index(D), a["ns"].index(n), b["dims"].index(D), b["ns"].index(n)
                cells.append({"batch": batch, "dim": D, "n": n, "pf": float(a["pf"][i, j]),
                              "pf_reference": float(b["pf"][k, m]), "vit": float(a["vit"][i, j]),
                              "vit_reference": float(b["vit"][k, m])})
    diffs = {}
    for where, keys in (("spec", SPEC_KEYS), ("environment", ENV_KEYS)):
        for key in keys:
            x, y = new.get(where, {}).get(key), reference.get(where, {}).get(key)
            if x != y:
                diffs[key] = (x, y)
    for key, field in (("tau_us", ("overhead", "us_per_op")), ("peak_gflops", ("peak", "gflops"))):
        x, y = ((run.get(field[0]) or {}).get(field[1]) for run in (new, reference))
        diffs[key] = (x, y)

    def reps(run):
        return float(np.median([r["reps"] for r in run["records"] if r["variant"] == variant]))
    diffs["median reps per case"] = (reps(new), reps(reference))
    return {"cells": cells, "differences": diffs}


def format_comparison(comparison: dict, names: tuple[str, str] = ("this run", "reference")) -> str:
    """compare_regimes as text."""
    new, ref = names
    lines = [f"Para-Former-1-n / Para-Former-1-1 (ViT-n / ViT-1): {new} against {ref}"]
    for c in comparison["cells"]:
        lines.append(f"  batch {c['batch']:>2}, D {c['dim']:>3}, n {c['n']:>2}: {c['pf']:5.2f} ({c['vit']:4.1f}) "
                     f"against {c['pf_reference']:5.2f} ({c['vit_reference']:4.1f})")
    lines.append(f"what differs ({new} / {ref}):")
    for key, (x, y) in comparison["differences"].items():
        def show(v):
            return f"{v:.1f}" if isinstance(v, float) else "not recorded" if v is None else str(v)
        lines.append(f"  {key}: {show(x)} / {show(y)}")
    return "\n".join(lines)


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

MAP_TICKS = [1 / 16, 1 / 4, 1 / 2, 1, 2, 4, 16]   # the colour range: the same colours for the same ratio


def ratio_map(ax, values: np.ndarray, dims: list, ns: list, line: list, title: str) -> None:
    """One heat map of ratios over (D, n) on `ax` (rows D, columns n), each cell annotated,
    on log colours centred on 1 (from MAP_TICKS[0] to MAP_TICKS[-1]), with `line` (a fractional n index per D, None:
    past the last n) drawn dashed: left of it the model predicts flat latency. The maps of
    plot_regime and of the decode benchmark (duat.bench.decode_model) alike."""
    norm = LogNorm(vmin=MAP_TICKS[0], vmax=MAP_TICKS[-1])
    image = ax.imshow(np.clip(values, norm.vmin, norm.vmax), cmap="RdBu_r", origin="lower",
                      aspect="auto", norm=norm)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7)
    xs = [len(ns) - 0.5 if b is None else b for b in line]
    ax.plot(xs, range(len(xs)), color="white", lw=2.5)
    ax.plot(xs, range(len(xs)), color="k", lw=1, ls="--")
    ax.set_xlim(-0.5, len(ns) - 0.5)
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_yticks(range(len(dims)), [str(D) for D in dims])
    ax.set_xlabel("n (parallel branches, or serial layers)")
    ax.set_ylabel("token width D")
    ax.set_title(title, fontsize=9)
    bar = ax.figure.colorbar(image, ax=ax, shrink=0.85)
    bar.ax.yaxis.set_major_locator(FixedLocator(MAP_TICKS))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_locator(FixedLocator([]))


def plot_regime(results: dict, variant: str = "eager", limit: float = FLAT_LIMIT,
                panels: tuple[str, ...] | None = None):
    """Heat maps over (D, n), one row per batch size: the ratios of PANELS (or only those
    named in `panels`; a single one is drawn with the batches side by side), annotated, with
    the model's flat limit (flat_limit: where its predicted Para-Former-1-n / Para-Former-1-1
    passes `limit`) drawn as a dashed line. Colours on a log scale centred on 1."""
    known = dict(PANELS)
    chosen = [(k, known[k]) for k in (panels or known) if k in known]
    if panels is not None and (not chosen or len(chosen) != len(panels)):
        raise ValueError(f"panels must name some of {', '.join(known)}; got {panels!r}")
    batches = sorted({r["batch"] for r in results["records"] if r["variant"] == variant})
    if not batches:
        raise ValueError(f"nothing to draw: the run has no {variant} records")
    rows, cols = (1, len(batches)) if len(chosen) == 1 else (len(batches), len(chosen))
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.6 * rows), squeeze=False)
    for row, batch in enumerate(batches):
        g = regime_grid(results, batch, variant)
        line = [flat_limit(results, batch, D, limit, variant) for D in g["dims"]]
        for col, (key, title) in enumerate(chosen):
            ax = axes[0][row] if len(chosen) == 1 else axes[row][col]
            ratio_map(ax, g[key], g["dims"], g["ns"], line, f"{title}\nbatch {batch}")
    env = results["environment"]
    tokens = sorted({r["tokens"] for r in results["records"]})
    fig.suptitle(f"{env['device_name']} · {env['dtype']} · {env['threads']} thread(s) · "
                 f"torch {env['torch']} · T = {', '.join(map(str, tokens))} tokens\n"
                 f"dashed: where the model max(ops x overhead, FLOPs / peak) predicts Para-Former-1-n "
                 f"/ Para-Former-1-1 > {limit:g} (left of it: flat)", fontsize=10)
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


def plot_cartoon(flop_costs: tuple = (0.5, 100.0), ops: tuple = (10, 30, 44), n_max: int = 24):
    """The two regimes of t = max(ops x tau, F / P) in arbitrary units (tau = 1): serial
    ViT-n dispatches ops[0] + n x ops[1] operations, Para-Former-1-n's batched stage ops[2]
    at every n, and a layer's arithmetic costs F_1 / P (one panel per value of flop_costs).
    Illustrative numbers, not measurements."""
    outside, per_layer, batched = ops
    n = np.arange(1, n_max + 1)
    fig, axes = plt.subplots(1, len(flop_costs), figsize=(5 * len(flop_costs), 3.4), squeeze=False)
    for ax, f1 in zip(axes[0], flop_costs):
        name = "overhead regime" if n_max * f1 < batched else "FLOP regime"
        ax.plot(n, np.maximum(outside + n * per_layer, n * f1), "o-", ms=3, label="serial ViT-$n$")
        ax.plot(n, np.maximum(batched, n * f1), "o-", ms=3, label="Para-Former-1-$n$")
        ax.plot(n, n * f1, "k--", label="FLOP bound $n F_1 / P$")
        ax.axhline(batched, color="grey", ls=":", label="overhead floor of Para-Former")
        ax.set(title=rf"{name}: $F_1/P = {f1:g}\,\tau$", ylim=(0, None),
               xlabel="n (serial layers, or parallel branches)", ylabel=r"time (units of $\tau$)")
        ax.legend(fontsize=8)
    fig.suptitle(r"Cartoon of the two regimes: $t = \max(N_{ops}\,\tau,\ F / P)$, linear axes")
    fig.tight_layout()
    return fig

