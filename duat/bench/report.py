"""Reading a benchmark's results: the table, the targets, the files, the roofline plot.

A results dict (duat.bench.run_benchmark) is saved as results.json (everything, with the
raw per-call times), results.csv (one row per case, no raw times) and
latency_vs_layers.png (latency against L with the FLOP-bound line, and the achieved
fraction of the matmul peak). The targets (TARGETS) are goals for the batched stage, not
the paper's claims: check_targets reads them off measured numbers, never in a timed unit
test.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt

from duat.bench import regime
from duat.bench.harness import IMPLEMENTATIONS, VARIANTS
from duat.bench.timing import latency_ratio
from duat.locations import committed, output_dir
from duat.storage import (atomic_write_json, atomic_write_text, prepare_output_dir,
                          read_results, write_figure)

RESULT_FILES = ("results.json", "results.csv", "latency_vs_layers.png")
# ... and a regime sweep's (several token widths D; duat.bench.regime) maps and model
REGIME_FILES = ("regime_map.png", "regime_model.png")
BENCH_FOLDER = "bench"  # the runs' parent folder, committed (duat/results/bench) and new ones
ORDER = tuple(IMPLEMENTATIONS)  # table and plot order


def _sort_key(r: dict):
    impl = ORDER.index(r["implementation"]) if r["implementation"] in ORDER else len(ORDER)
    variant = VARIANTS.index(r["variant"]) if r["variant"] in VARIANTS else len(VARIANTS)
    return (r.get("dim", 0), r["batch"], r["layers"], impl, variant)


def find(records: list[dict], **match) -> dict | None:
    """The one record whose fields equal `match` (variant defaults to eager), or None."""
    match.setdefault("variant", "eager")
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    if len(found) > 1:
        raise ValueError(f"{len(found)} records match {match}; expected at most one")
    return found[0] if found else None


# ----------------------------------------------------------------------------- table

def format_table(results: dict) -> str:
    """The measured table, one line per case, with the machine it ran on."""
    env, peak = results["environment"], results.get("peak")
    lines = [f"device {env['device_name']} ({env['device']}), torch {env['torch']}, "
             f"{env['dtype']}, {env['threads']} thread(s), {env['date']}"]
    if peak:
        lines.append(f"matmul peak {peak['gflops']:.1f} GFLOP/s (p25-p75 {peak['gflops_p25']:.1f}-"
                     f"{peak['gflops_p75']:.1f}): {peak['size']}^2 GEMMs, median of "
                     f"{peak['calls']} calls timed between the models' calls")
    overhead = results.get("overhead")
    if overhead:
        lines.append(f"per-op overhead {overhead['us_per_op']:.1f} us (p25-p75 "
                     f"{overhead['us_p25']:.1f}-{overhead['us_p75']:.1f}): {overhead['probe']}, "
                     f"{overhead['ops']} ops, {overhead['calls']} calls")
    head = (f"{'D':>4} {'batch':>5} {'L':>3}  {'implementation':<22} {'median ms':>10} "
            f"{'p25-p75 ms':>17} {'GFLOP/s':>8} {'%peak':>6} {'bound ms':>9} {'model ms':>9} {'reps':>4}")
    lines += [head, "-" * len(head)]
    for r in sorted(results["records"], key=_sort_key):
        frac = f"{100 * r['peak_fraction']:5.1f}%" if r.get("peak_fraction") is not None else "   -  "
        bound = f"{r['flop_bound_ms']:9.3f}" if r.get("flop_bound_ms") is not None else "      -  "
        model = f"{r['predicted_ms']:9.3f}" if r.get("predicted_ms") is not None else "      -  "
        lines.append(f"{r.get('dim', '?'):>4} {r['batch']:>5} {r['layers']:>3}  {r['label']:<22} "
                     f"{r['median_ms']:>10.3f} {r['p25_ms']:>8.3f}-{r['p75_ms']:<8.3f} "
                     f"{r['achieved_gflops']:>8.1f} {frac} {bound} {model} {r['reps']:>4}")
    for key, why in results.get("skipped", {}).items():
        lines.append(f"skipped {key}: {why}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rerun vs committed

CASE_KEYS = ("implementation", "variant", "batch", "layers", "dtype", "dim", "tokens", "device")


def compare_runs(new: dict, reference: dict) -> list[dict]:
    """Each case timed in both runs: the two medians, their ratio, and whether the new median
    lies within the reference's measured spread widened by the new run's own (the two
    interquartile ranges overlap). Cases of only one run are left out; the machine is not
    checked: compare runs of the same device."""
    def key(r):
        return tuple(r.get(k) for k in CASE_KEYS)

    ref = {key(r): r for r in reference["records"]}
    rows = []
    for r in sorted(new["records"], key=_sort_key):
        old = ref.get(key(r))
        if old is None:
            continue
        overlap = r["p25_ms"] <= old["p75_ms"] and old["p25_ms"] <= r["p75_ms"]
        rows.append({"batch": r["batch"], "layers": r["layers"], "label": r["label"],
                     "median_ms": r["median_ms"], "reference_ms": old["median_ms"],
                     "ratio": r["median_ms"] / old["median_ms"], "within_spread": overlap})
    return rows


def format_comparison(rows: list[dict], reference_name: str = "reference") -> str:
    if not rows:
        return f"no case in common with {reference_name}"
    head = f"{'batch':>5} {'L':>3}  {'implementation':<22} {'now ms':>9} {'then ms':>9} {'ratio':>6}  within spread"
    lines = [f"this run against {reference_name} (same case: median now / median then):", head,
             "-" * len(head)]
    lines += [f"{r['batch']:>5} {r['layers']:>3}  {r['label']:<22} {r['median_ms']:>9.3f} "
              f"{r['reference_ms']:>9.3f} {r['ratio']:>6.2f}  {'yes' if r['within_spread'] else 'NO'}"
              for r in rows]
    ok = sum(r["within_spread"] for r in rows)
    lines.append(f"{ok} of {len(rows)} cases within the measured spread (interquartile ranges overlap)")
    ratios = sorted(r["ratio"] for r in rows)
    lines.append(f"median of the ratios {ratios[len(ratios) // 2]:.2f} (range {ratios[0]:.2f}-"
                 f"{ratios[-1]:.2f}): a shift shared by every case is the machine's speed that "
                 f"day, not the code; compare the targets' ratios then")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    """One target: the latency of case `top` over that of case `bottom` (or, with no
    bottom, `top`'s achieved fraction of the matmul peak) `op` `threshold`.

    A case is (implementation, batch, layers); layers "L" is check_targets' `layers`. The
    target is set at token width `dim` (and `tokens` tokens, where given): a run without
    that width is checked at its only width, unless `exact_width`. `per_variant`: checked
    for each variant of the run (else for eager only). `name` may hold {L} and {variant}."""
    device: str
    name: str
    top: tuple
    bottom: tuple | None
    op: str
    threshold: float
    dim: int
    tokens: int | None = None
    exact_width: bool = False
    per_variant: bool = False


# CPU: the small size (D = 192, T = 65) at batch 1 and 64, and the overhead regime (D = 32,
# T = 17), where adding parallel layers costs little. GPU: batch 1, each variant.
TARGETS = (
    Target("cpu", "CPU batch 1: speed-up of pf-1-{L} batched over serial ViT-{L}",
           ("vit", 1, "L"), ("pf-batched", 1, "L"), ">=", 1.5, 192, 65),
    Target("cpu", "CPU batch 1: speed-up of pf-1-{L} batched over reference loop",
           ("pf-reference", 1, "L"), ("pf-batched", 1, "L"), ">=", 1.5, 192, 65),
    Target("cpu", "CPU batch 1: speed-up of pf-1-{L} batched over timm ParallelThingsBlock",
           ("timm-parallel", 1, "L"), ("pf-batched", 1, "L"), ">=", 1.5, 192, 65),
    Target("cpu", "CPU batch 1: pf-1-{L} batched achieved / matmul peak",
           ("pf-batched", 1, "L"), None, ">=", 0.70, 192, 65),
    Target("cpu", "CPU batch 64: latency pf-1-{L} batched / serial ViT-{L}",
           ("pf-batched", 64, "L"), ("vit", 64, "L"), "<=", 1.05, 192, 65),
    Target("cpu", "CPU batch 1: latency pf-1-24 batched / pf-1-1",
           ("pf-batched", 1, 24), ("pf-batched", 1, 1), "<=", 1.5, 32, 17, exact_width=True),
    Target("cuda", "GPU batch 1 ({variant}): latency pf-batched L=24 / L=1",
           ("pf-batched", 1, 24), ("pf-batched", 1, 1), "<=", 1.3, 384, per_variant=True),
    Target("cuda", "GPU batch 1 ({variant}): latency vit L=24 / L=1",
           ("vit", 1, 24), ("vit", 1, 1), ">=", 10.0, 384, per_variant=True),
)


def target_check(name: str, ratio: dict, op: str, threshold: float, sizes_match: bool = True) -> dict:
    """One checked target, as results.json holds it: the measured `ratio` ({value, low,
    high}, e.g. latency_ratio), whether value `op` threshold holds, and whether the run used
    the target's sizes."""
    holds = ratio["value"] >= threshold if op == ">=" else ratio["value"] <= threshold
    return dict(target=name, value=ratio["value"], low=ratio["low"], high=ratio["high"], op=op,
                threshold=threshold, holds=bool(holds), sizes_match=sizes_match)


def _peak_fraction(r: dict) -> dict:
    """A record's achieved fraction of the matmul peak, with its range from its quartiles."""
    return {"value": r["peak_fraction"], "low": r["flops"] / r["p75_ms"] / 1e6 / r["peak_gflops"],
            "high": r["flops"] / r["p25_ms"] / 1e6 / r["peak_gflops"]}


def check_targets(results: dict, layers: int = 12, targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """Each of `targets` that this run's records can decide (its device, its cases timed),
    with its measured value and range (target_check); L = `layers`."""
    recs, device = results["records"], results["environment"]["device"]
    dims = sorted({r["dim"] for r in recs})
    out = []
    for variant in sorted({r["variant"] for r in recs}):
        for t in targets:
            if t.device != device or not (t.per_variant or variant == "eager"):
                continue
            D = t.dim if t.dim in dims else dims[0] if len(dims) == 1 and not t.exact_width else None
            if D is None:
                continue
            top, bottom = (None if case is None else find(
                recs, implementation=case[0], batch=case[1],
                layers=layers if case[2] == "L" else case[2], variant=variant, dim=D)
                for case in (t.top, t.bottom))
            if top is None or (t.bottom is not None and bottom is None):
                continue
            if bottom is None and top.get("peak_fraction") is None:
                continue
            match = top["dim"] == t.dim and (t.tokens is None or top["tokens"] == t.tokens)
            out.append(target_check(t.name.format(L=layers, variant=variant),
                                    latency_ratio(top, bottom) if bottom else _peak_fraction(top),
                                    t.op, t.threshold, match))
    return out


def format_targets(checks: list[dict]) -> str:
    if not checks:
        return "targets: none decidable from this run (see duat.bench.check_targets)"
    lines = ["targets (median ratio, range from the interquartile ranges):"]
    for c in checks:
        verdict = "holds" if c["holds"] else "NOT MET"
        note = "" if c["sizes_match"] else "  [sizes differ from the target's]"
        lines.append(f"  {c['target']}: {c['value']:.3f} [{c['low']:.3f}, {c['high']:.3f}] "
                     f"{c['op']} {c['threshold']}: {verdict}{note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- files

CSV_FIELDS = ("implementation", "variant", "label", "layers", "batch", "model", "dim", "heads",
              "mlp_ratio", "tokens", "image_size", "patch_size", "dtype", "device",
              "device_name", "torch", "threads", "date", "flops", "layer_flops", "warmup",
              "reps", "median_ms", "mean_ms", "min_ms", "p10_ms", "p25_ms", "p75_ms", "p90_ms",
              "iqr_ms", "rel_iqr", "achieved_gflops", "peak_gflops", "flop_bound_ms",
              "peak_fraction", "ops", "overhead_ms", "predicted_ms", "bound_by")


def records_csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for r in sorted(records, key=_sort_key):
        writer.writerow(r)
    return buffer.getvalue()


def save_benchmark(results: dict, folder: str | Path, overwrite: bool = False) -> list[Path]:
    """Write results.json, results.csv and latency_vs_layers.png into `folder` (atomically);
    for a regime sweep also REGIME_FILES.

    A folder that already holds files (an earlier run's) is refused with FileExistsError
    unless `overwrite` is True.
    """
    if not isinstance(results, dict) or "records" not in results or "environment" not in results:
        raise TypeError("results must be the dict returned by duat.bench.run_benchmark")
    folder = prepare_output_dir(folder, overwrite=overwrite)
    results = dict(results, targets=check_targets(results))
    paths = [atomic_write_json(folder / "results.json", results),
             atomic_write_text(folder / "results.csv", records_csv(results["records"]))]
    paths.append(write_figure(plot_benchmark(results), folder / "latency_vs_layers.png",
                              dpi=120, bbox_inches="tight"))
    if regime.is_regime(results):
        paths.append(write_figure(regime.plot_regime(results), folder / "regime_map.png",
                                  dpi=110, bbox_inches="tight"))
        paths.append(write_figure(regime.plot_model(results), folder / "regime_model.png",
                                  dpi=110, bbox_inches="tight"))
    return paths


def load_benchmark(path: str | Path) -> dict:
    """A saved run: its folder, its results.json, or the bare name of a committed run (a
    folder of results_root(), e.g. "cpu-2026-11-28")."""
    path = Path(path)
    if not path.exists() and len(path.parts) == 1:  # a bare name: one of the committed runs
        path = committed(BENCH_FOLDER) / path
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():  # said here, in the benchmark's words, with the runs to choose from
        names = ", ".join(p.name for p in list_runs(committed(BENCH_FOLDER))) or "none"
        raise FileNotFoundError(f"no benchmark results at {path}: give a run's folder, its "
                                f"results.json, or the name of a committed run ({names})")
    results = read_results(path, "")  # not a JSON object: one line, UnreadableFileError
    for key in ("environment", "records"):
        if key not in results:
            raise ValueError(f"{path} is not a duat benchmark result: no {key!r}")
    return results


def results_root() -> Path | None:
    """The folder of the committed benchmark runs, which ship with the kit (duat/results/bench,
    or $DUAT_RESULTS/bench: duat.locations.committed); None when it is absent."""
    root = committed(BENCH_FOLDER)
    return root if root.is_dir() else None


def run_roots() -> list[Path]:
    """Where saved runs are looked for by default: the committed runs, and the folder
    `duat bench` writes new runs to (the same one in a checkout; ./results/bench of the
    working directory for an installed kit; see duat.locations)."""
    return list(dict.fromkeys([committed(BENCH_FOLDER), output_dir(BENCH_FOLDER)]))


def list_runs(root: str | Path | None = None) -> list[Path]:
    """Folders holding a saved run, sorted by name: under `root`, by default under run_roots()."""
    roots = [Path(root)] if root is not None else run_roots()
    return sorted((p for r in roots if r.is_dir() for p in r.iterdir() if (p / "results.json").is_file()),
                  key=lambda p: (p.name, str(p)))


def is_quick(results: dict) -> bool:
    """Whether a run was a `--quick` one (its preset)."""
    return results.get("preset") == "quick"


def latest_run(root: str | Path | None = None, device: str = "cpu",
               include_quick: bool = False, preset: str | None = None) -> Path | None:
    """The newest saved run (by its recorded date) on a `device` type ('cpu', 'cuda', 'mps')
    under `root` (default: run_roots(), the committed runs and yours); None if there is none.

    preset None: a latency-against-depth run (quick runs left out unless `include_quick`;
    regime sweeps left out). preset "regime" (or any preset's name): the newest run of it."""
    best = None
    for folder in list_runs(root):
        try:
            res = load_benchmark(folder)
        except (ValueError, OSError):  # a damaged or foreign results.json: not a run
            continue
        if res["environment"].get("device") != device:
            continue
        if preset is not None:
            if res.get("preset") != preset:
                continue
        elif (regime.is_regime(res) or res.get("kind") == "decode"  # a decode run: not by depth
              or (is_quick(res) and not include_quick)):
            continue
        key = (res["environment"].get("date", ""), folder.name)
        if best is None or key > best[0]:
            best = (key, folder)
    return best[1] if best else None


# ----------------------------------------------------------------------------- plot

def plot_benchmark(results: dict, axes=None, log: bool = False, dim: int | None = None):
    """Latency against L per implementation with the FLOP-bound line (top row), and the
    achieved fraction of the matmul peak (bottom row); one column per batch size. A run of
    several token widths (a regime sweep) is drawn at one, `dim` (default: the smallest).

    Linear axes by default: the question is "flat or linear in L", which a log axis hides;
    `log=True` gives a log latency axis (for runs whose latencies span decades)."""
    recs, env = results["records"], results["environment"]
    dims = sorted({r.get("dim") for r in recs})
    dim = dims[0] if dim is None else dim
    if dim not in dims:
        raise ValueError(f"this run has no token width D={dim}; it has {', '.join(map(str, dims))}")
    recs = [r for r in recs if r.get("dim") == dim]
    batches = sorted({r["batch"] for r in recs})
    if axes is None:
        fig, axes = plt.subplots(2, len(batches), figsize=(5.2 * len(batches), 7.5),
                                 squeeze=False, sharex=True)
    else:
        fig = axes[0][0].figure
    labels = [l for l in dict.fromkeys(r["label"] for r in sorted(recs, key=_sort_key))]
    for col, batch in enumerate(batches):
        top, bottom = axes[0][col], axes[1][col]
        for label in labels:
            rs = sorted((r for r in recs if r["batch"] == batch and r["label"] == label),
                        key=lambda r: r["layers"])
            if not rs:
                continue
            L = [r["layers"] for r in rs]
            line, = top.plot(L, [r["median_ms"] for r in rs], "o-", label=label)
            top.fill_between(L, [r["p25_ms"] for r in rs], [r["p75_ms"] for r in rs],
                             color=line.get_color(), alpha=0.2, linewidth=0)
            if rs[0].get("peak_fraction") is not None:
                bottom.plot(L, [100 * r["peak_fraction"] for r in rs], "o-", label=label,
                            color=line.get_color())
        bound = {r["layers"]: r["flop_bound_ms"] for r in recs
                 if r["batch"] == batch and r.get("flop_bound_ms") is not None}
        if bound:
            L = sorted(bound)
            top.plot(L, [bound[l] for l in L], "k--", label="FLOP bound (FLOPs / peak)")
            bottom.axhline(100, color="k", ls="--", lw=1)
        if log:
            top.set_yscale("log")
        else:
            top.set_ylim(bottom=0)
        top.set_xticks(sorted({r["layers"] for r in recs if r["batch"] == batch}))
        top.set_title(f"batch {batch}")
        top.set_ylabel("latency per forward pass (ms)")
        bottom.set_ylabel("achieved / matmul peak (%)")
        bottom.set_xlabel("L (serial layers, or parallel branches)")
        top.legend(fontsize=8)
        bottom.set_ylim(bottom=0)
    peak = results.get("peak")
    fig.suptitle(f"{env['device_name']} · {env['dtype']} · {env['threads']} thread(s) · "
                 f"torch {env['torch']}" + (f" · peak {peak['gflops']:.0f} GFLOP/s" if peak else "")
                 + (f" · D = {dim}" if len(dims) > 1 else ""), fontsize=10)
    fig.tight_layout()
    return fig
