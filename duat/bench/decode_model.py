"""Reading a decode run (duat.bench.decode_run): the grids, the model, the targets, the files.

A decode run's results (`duat bench --preset decode`) are saved as results.json (everything,
with every timed step), results.csv (one row per case), decode_map.png (the heat maps) and
decode_model.png (predicted against measured). Here:

- decode_grid: on the (D, n) grid of one batch size, the measured ratios Para-Former-1-n /
  Para-Former-1-1, GPT-n / GPT-1 and Para-Former-1-n / GPT-n, their ranges from the
  interquartile ranges, and the ratios the model t = max(ops x tau, bytes / bandwidth,
  FLOPs / peak) predicts; decode_flat_limit: where the predicted Para-Former-1-n /
  Para-Former-1-1 passes FLAT_LIMIT (the dashed line of the maps);
- decode_model_error: measured / predicted over the grid, with its spread;
- check_decode_targets / format_decode_targets: the issue's targets, on measured numbers;
- format_decode_table / format_decode_maps: the run as text;
- plot_decode_map / plot_decode_model: the two figures;
- save_decode_results / load_decode_run / latest_decode_run: the files and the saved runs.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from duat.bench.regime import FLAT_LIMIT, crossing, ratio_map
from duat.bench.report import BENCH_FOLDER, format_targets, list_runs, target_check
from duat.bench.timing import latency_ratio
from duat.checks import real
from duat.locations import committed
from duat.storage import (atomic_write_json, atomic_write_text, prepare_output_dir,
                          read_results, write_figure)

DECODE_FILES = ("results.json", "results.csv", "decode_map.png", "decode_model.png")
PANELS = (("pf", "Para-Former-1-n / Para-Former-1-1"),
          ("gpt", "GPT-n / GPT-1 (serial)"),
          ("pf_vs_gpt", "Para-Former-1-n / GPT-n (equal FLOPs)"))
KIT = ("gpt", "pf")        # the implementations the model's accuracy is read on
MODEL_LIMIT = 1.3          # target: median measured / predicted over the grid
SERIAL_LIMIT = 8.0         # target: GPT-24 / GPT-1 at least this (the serial cost is real)


def is_decode(results: dict) -> bool:
    return results.get("kind") == "decode"


def _index(results: dict, variant: str = "eager") -> dict:
    return {(r["implementation"], r["batch"], r["dim"], r["layers"]): r
            for r in results["records"] if r["variant"] == variant}


def decode_grid(results: dict, batch: int, variant: str = "eager") -> dict:
    """The (D, n) grid of one batch size: dims, ns (the Para-Former widths timed), and for
    each panel of PANELS the measured ratio (rows D, columns n; NaN where a case is
    missing), its range (_low, _high) and the model's predicted ratio (_predicted)."""
    index = _index(results, variant)
    pfs = [k for k in index if k[0] == "pf" and k[1] == batch]
    if not pfs:
        have = sorted({(r["batch"], r["variant"]) for r in results["records"]})
        raise ValueError(f"this run has no {variant} Para-Former records at batch {batch}; it has "
                         + (", ".join(f"batch {b} {v}" for b, v in have) or "no records"))
    dims, ns = sorted({k[2] for k in pfs}), sorted({k[3] for k in pfs})
    out = {"batch": batch, "variant": variant, "dims": dims, "ns": ns}
    for key, _ in PANELS:
        for suffix in ("", "_low", "_high", "_predicted"):
            out[key + suffix] = np.full((len(dims), len(ns)), np.nan)
    for i, D in enumerate(dims):
        for j, n in enumerate(ns):
            pairs = {"pf": (("pf", n), ("pf", 1)), "gpt": (("gpt", n), ("gpt", 1)),
                     "pf_vs_gpt": (("pf", n), ("gpt", n))}
            for key, ((ia, na), (ib, nb)) in pairs.items():
                a, b = index.get((ia, batch, D, na)), index.get((ib, batch, D, nb))
                if a is None or b is None:
                    continue
                ratio = latency_ratio(a, b)
                out[key][i, j], out[key + "_low"][i, j], out[key + "_high"][i, j] = (
                    ratio["value"], ratio["low"], ratio["high"])
                if a.get("predicted_ms") and b.get("predicted_ms"):
                    out[key + "_predicted"][i, j] = a["predicted_ms"] / b["predicted_ms"]
    return out


def decode_flat_limit(results: dict, batch: int, dim: int, limit: float = FLAT_LIMIT,
                      variant: str = "eager") -> float | None:
    """Where along n the predicted Para-Former-1-n / Para-Former-1-1 passes `limit`, as a
    fractional index into the grid's n (log-linear between points); None if it never does
    (or there is no prediction)."""
    real("limit", limit, low=1.0)
    g = decode_grid(results, batch, variant)
    if dim not in g["dims"]:
        raise ValueError(f"this run has no token width D={dim} at batch {batch}; it has "
                         f"{', '.join(map(str, g['dims']))}")
    return crossing(g["pf_predicted"][g["dims"].index(dim)], limit)


def decode_model_error(results: dict, variant: str = "eager", implementations=KIT) -> dict:
    """measured / predicted over the run's grid (the kit's models): its median with the
    quartiles across cases, the median factor either way (exp median |log|), the worst
    factor, how many cases each term bounds and the median ratio of each such group, and
    the median ratio of the terms' sum (a model that adds them instead)."""
    rs = [r for r in results["records"] if r["variant"] == variant
          and r["implementation"] in implementations and r.get("predicted_ms")]
    if not rs:
        raise ValueError("this run has no model predictions (run with the probes: measure_rates=True)")
    ratios = np.array([r["median_ms"] / r["predicted_ms"] for r in rs])
    logs = np.abs(np.log(ratios))
    p25, p50, p75 = np.percentile(ratios, [25, 50, 75])
    bound = {b: sum(r["bound_by"] == b for r in rs) for b in ("overhead", "bytes", "flops")}
    by_bound = {b: float(np.median([x for x, r in zip(ratios, rs) if r["bound_by"] == b]))
                for b, count in bound.items() if count}
    # for comparison, the three terms added instead of maxed
    added = np.array([r["median_ms"] / sum(r[k] or 0.0 for k in ("overhead_ms", "bytes_ms", "flop_ms"))
                      for r in rs])
    return {"cases": len(rs), "median": float(p50), "p25": float(p25), "p75": float(p75),
            "median_factor": float(np.exp(np.median(logs))), "worst_factor": float(np.exp(logs.max())),
            "bound_by": bound, "median_by_bound": by_bound, "sum_model_median": float(np.median(added))}


# ----------------------------------------------------------------------------- targets

def check_decode_targets(results: dict, variant: str = "eager") -> list[dict]:
    """The issue's targets that this run can decide, each with its measured value and range:

    (a) batch 1, at the smallest D: Para-Former-1-24 / Para-Former-1-1 <= 1.5 (FLAT_LIMIT),
        while GPT-24 / GPT-1 >= 8;
    (b) batch 1, D = 256 (and 768): the kit's GPT-12 / HF GPT-2-12 per token <= 1.0;
    (c) the model: median measured / predicted over the grid <= 1.3 (its range: the
        quartiles across the cases).
    On a CPU the target's sizes are D = 32 for (a) (`sizes_match`)."""
    index, env, out = _index(results, variant), results["environment"], []
    device = env["device"].upper() if env["device"] != "cpu" else "CPU"
    what = f"{device} ({variant})" if variant != "eager" else device

    def add(*check):
        out.append(target_check(*check))

    dims = sorted({k[2] for k in index if k[1] == 1})
    if dims:
        D = dims[0]
        for impl, name, op, thr in (("pf", "Para-Former-1-24 / Para-Former-1-1", "<=", FLAT_LIMIT),
                                    ("gpt", "GPT-24 / GPT-1", ">=", SERIAL_LIMIT)):
            a, b = index.get((impl, 1, D, 24)), index.get((impl, 1, D, 1))
            if a is not None and b is not None:
                add(f"{what} batch 1, D {D}: per token {name}", latency_ratio(a, b), op, thr,
                    D == 32 or env["device"] != "cpu")
    for D in (256, 768):
        a, b = index.get(("gpt", 1, D, 12)), index.get(("hf-gpt2", 1, D, 12))
        if a is not None and b is not None:
            add(f"{what} batch 1, D {D}: per token kit GPT-12 / HF GPT-2-12", latency_ratio(a, b), "<=", 1.0)
    if any(r.get("predicted_ms") for r in results["records"]):
        e = decode_model_error(results, variant)
        add(f"{what}: median measured / predicted over the grid ({e['cases']} cases)",
            {"value": e["median"], "low": e["p25"], "high": e["p75"]}, "<=", MODEL_LIMIT)
    return out


def format_decode_targets(checks: list[dict]) -> str:
    if not checks:
        return "targets: none decidable from this run (see duat.bench.check_decode_targets)"
    return format_targets(checks).replace("range from the interquartile ranges",
                                          "range from the interquartile ranges; the model's: "
                                          "the quartiles across cases", 1)


# ----------------------------------------------------------------------------- text

def _order(r: dict):
    return (r["variant"] != "eager", r["variant"], r["dim"], r["batch"], r["layers"],
            ("gpt", "pf", "hf-gpt2").index(r["implementation"]))


def format_decode_table(results: dict) -> str:
    """The run as a table: one line per case, with the three measured rates first."""
    env, spec = results["environment"], results["spec"]
    lines = [f"device {env['device_name']} ({env['device']}), torch {env['torch']}, {env['dtype']}, "
             f"{env['threads']} thread(s), {env['date']}; prompt {spec['prompt_tokens']} tokens, "
             f"{spec['new_tokens']} new, vocabulary {spec['vocab_size']}, heads "
             f"{spec['heads'] or 'max(1, D // 64)'}, MLP {spec['mlp_ratio']:g} x D"]
    for key, unit, name in (("peak", "gflops", "GFLOP/s matmul peak"),
                            ("bandwidth", "gbps", "GB/s memory bandwidth"),
                            ("overhead", "us_per_op", "us per op (tau)")):
        rate = results.get(key)
        if rate:
            lo, hi = ((rate["us_p25"], rate["us_p75"]) if key == "overhead"
                      else (rate[f"{unit}_p25"], rate[f"{unit}_p75"]))
            lines.append(f"{rate[unit]:.2f} {name} (p25-p75 {lo:.2f}-{hi:.2f})")
    head = (f"{'D':>4} {'B':>2} {'n':>3}  {'model':<14} {'ms/token':>9} {'p25-p75':>15} "
            f"{'prefill':>8} {'ops':>5} {'MB':>7} {'MFLOP':>8} {'tau ms':>7} {'B/W ms':>7} "
            f"{'F/P ms':>7} {'model':>7} {'bound':>8} {'reps':>4}")
    lines += [head, "-" * len(head)]
    for r in sorted(results["records"], key=_order):
        def ms(key):
            return f"{r[key]:7.3f}" if r.get(key) is not None else "      -"
        label = r["model"] + ("+graph" if r["variant"] == "graph" else "")
        lines.append(f"{r['dim']:>4} {r['batch']:>2} {r['layers']:>3}  {label:<14} {r['median_ms']:9.3f} "
                     f"{r['p25_ms']:7.3f}-{r['p75_ms']:<7.3f} {r['prefill_median_ms']:8.2f} "
                     f"{r['ops'] if r['ops'] is not None else '-':>5} {r['bytes'] / 1e6:7.2f} "
                     f"{r['flops'] / 1e6:8.2f} {ms('overhead_ms')} {ms('bytes_ms')} {ms('flop_ms')} "
                     f"{ms('predicted_ms')} {r.get('bound_by') or '-':>8} {r['reps']:>4}")
    for key, why in results.get("skipped", {}).items():
        lines.append(f"skipped {key}: {why}")
    return "\n".join(lines)


def format_decode_maps(results: dict, variant: str = "eager") -> str:
    """Per batch: Para-Former-1-n / Para-Former-1-1 (GPT-n / GPT-1) on the (D, n) grid."""
    lines = []
    for batch in sorted({r["batch"] for r in results["records"] if r["variant"] == variant}):
        g = decode_grid(results, batch, variant)
        lines += [f"batch {batch} ({variant}): per token Para-Former-1-n / Para-Former-1-1 (GPT-n / GPT-1)",
                  f"{'D':>5} " + " ".join(f"{'n=' + str(n):>12}" for n in g["ns"])]
        for i, D in enumerate(g["dims"]):
            lines.append(f"{D:>5} " + " ".join(f"{g['pf'][i, j]:5.2f} ({g['gpt'][i, j]:4.1f})"
                                                for j in range(len(g["ns"]))))
    if any(r.get("predicted_ms") for r in results["records"]):
        e = decode_model_error(results, variant)
        lines.append(f"model max(ops x tau, bytes / bandwidth, FLOPs / peak), {e['cases']} cases: "
                     f"measured / predicted {e['median']:.2f} median (p25-p75 {e['p25']:.2f}-"
                     f"{e['p75']:.2f}), off by a factor {e['median_factor']:.2f} (median), "
                     f"{e['worst_factor']:.2f} (worst); bound by " +
                     ", ".join(f"{k} {v}" + (f" (median {e['median_by_bound'][k]:.2f})" if v else "")
                               for k, v in e["bound_by"].items())
                     + f"; the terms added instead: median {e['sum_model_median']:.2f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def plot_decode_map(results: dict, variant: str = "eager", limit: float = FLAT_LIMIT):
    """Heat maps over (D, n), one row per batch size, the three ratios of PANELS, annotated,
    with the model's flat limit (decode_flat_limit) as a dashed line. Log colours centred on 1."""
    batches = sorted({r["batch"] for r in results["records"]
                      if r["variant"] == variant and r["implementation"] == "pf"})
    if not batches:
        raise ValueError(f"nothing to draw: the run has no {variant} Para-Former records")
    fig, axes = plt.subplots(len(batches), len(PANELS), figsize=(5.0 * len(PANELS), 3.6 * len(batches)),
                             squeeze=False)
    for row, batch in enumerate(batches):
        g = decode_grid(results, batch, variant)
        line = [decode_flat_limit(results, batch, D, limit, variant) for D in g["dims"]]
        for col, (key, title) in enumerate(PANELS):
            ratio_map(axes[row][col], g[key], g["dims"], g["ns"], line, f"{title}\nper token, batch {batch}")
    env, spec = results["environment"], results["spec"]
    fig.suptitle(f"decode with a KV cache: {env['device_name']} · {env['dtype']} · {env['threads']} "
                 f"thread(s) · torch {env['torch']} · prompt {spec['prompt_tokens']}, "
                 f"{spec['new_tokens']} new tokens ({variant})\ndashed: where max(ops x tau, bytes / "
                 f"bandwidth, FLOPs / peak) predicts Para-Former-1-n / Para-Former-1-1 > {limit:g} "
                 f"(left of it: flat)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_decode_model(results: dict, ax=None):
    """Predicted against measured per-token latency, every case, log-log: colour by
    implementation, marker by the term that sets the prediction; the diagonal is exact."""
    fig, ax = (plt.subplots(figsize=(5.8, 5.2)) if ax is None else (ax.figure, ax))
    rs = [r for r in results["records"] if r.get("predicted_ms")]
    for bound, marker in (("overhead", "o"), ("bytes", "^"), ("flops", "s")):
        for impl, colour in (("gpt", "C0"), ("pf", "C1"), ("hf-gpt2", "C2")):
            for variant, fill in (("eager", True), ("graph", False)):
                sel = [r for r in rs if (r["bound_by"], r["implementation"], r["variant"])
                       == (bound, impl, variant)]
                if sel:
                    ax.scatter([r["median_ms"] for r in sel], [r["predicted_ms"] for r in sel],
                               marker=marker, s=20, alpha=0.75, color=colour if fill else "none",
                               edgecolors=colour, label=f"{impl}{'' if fill else '+graph'}, {bound}-bound")
    if rs:
        lo = min(min(r["median_ms"], r["predicted_ms"]) for r in rs) / 1.5
        hi = max(max(r["median_ms"], r["predicted_ms"]) for r in rs) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.set(xscale="log", yscale="log", xlabel="measured median per token (ms)",
           ylabel="predicted: max(ops x tau, bytes / bandwidth, FLOPs / peak) (ms)")
    ax.set_title(f"{results['environment']['device_name']}: the decode model", fontsize=10)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- files

CSV_FIELDS = ("implementation", "variant", "label", "model", "layers", "batch", "dim", "heads",
              "mlp_ratio", "vocab_size", "prompt_tokens", "new_tokens", "positions", "dtype",
              "device", "device_name", "torch", "threads", "date", "params", "flops",
              "weights_bytes", "kv_bytes", "bytes", "ops", "warmup", "reps", "steps",
              "median_ms", "mean_ms", "min_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms", "iqr_ms",
              "rel_iqr", "prefill_median_ms", "prefill_p25_ms", "prefill_p75_ms", "tokens_per_s",
              "graph_max_abs_diff", "peak_gflops", "bandwidth_gbps", "us_per_op", "overhead_ms",
              "bytes_ms", "flop_ms", "predicted_ms", "bound_by")


def decode_records_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sorted(records, key=_order):
        writer.writerow(r)
    return buffer.getvalue()


def save_decode_results(results: dict, folder: str | Path, overwrite: bool = False) -> list[Path]:
    """Write DECODE_FILES into `folder`, each atomically, the targets added to results.json.
    A folder holding an earlier run's files is refused (FileExistsError) unless `overwrite`."""
    if not isinstance(results, dict) or not is_decode(results) or "records" not in results:
        raise TypeError("results must be the dict returned by duat.bench.run_decode")
    folder = prepare_output_dir(folder, overwrite=overwrite)
    variant = "eager" if any(r["variant"] == "eager" for r in results["records"]) else "graph"
    results = dict(results, targets=[t for v in sorted({r["variant"] for r in results["records"]})
                                     for t in check_decode_targets(results, v)])
    return [atomic_write_json(folder / "results.json", results),
            atomic_write_text(folder / "results.csv", decode_records_csv(results["records"])),
            write_figure(plot_decode_map(results, variant), folder / "decode_map.png", dpi=110,
                         bbox_inches="tight"),
            write_figure(plot_decode_model(results), folder / "decode_model.png", dpi=110,
                         bbox_inches="tight")]


def load_decode_run(path: str | Path) -> dict:
    """A saved decode run: its folder, its results.json, or the bare name of a committed run
    (a folder of duat/results/bench, e.g. "cpu-decode-2026-12-07")."""
    path = Path(path)
    if not path.exists() and len(path.parts) == 1:  # a bare name: one of the committed runs
        path = committed(BENCH_FOLDER) / path
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        names = ", ".join(p.name for p in list_runs(committed(BENCH_FOLDER))
                          if "decode" in p.name) or "none"
        raise FileNotFoundError(f"no decode run at {path}: give a run's folder, its results.json, "
                                f"or the name of a committed decode run ({names})")
    results = read_results(path, "", ("environment", "records", "spec"))
    if not is_decode(results):
        raise ValueError(f"{path} is not a decode run (made by `duat bench --preset decode`)")
    return results


def latest_decode_run(root: str | Path | None = None, device: str = "cpu") -> Path | None:
    """The newest saved decode run (by its recorded date) on a `device` type under `root`
    (default: the committed runs and yours, duat.bench.run_roots); None if there is none."""
    best = None
    for folder in list_runs(root):
        try:
            res = load_decode_run(folder)
        except (ValueError, OSError):  # another kind of run, or a damaged file
            continue
        key = (res["environment"].get("date", ""), folder.name)
        if res["environment"].get("device") == device and (best is None or key > best[0]):
            best = (key, folder)
    return best[1] if best else None
