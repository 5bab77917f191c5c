"""The claims table: every claim of the paper and its follow-up, what the kit's committed
results measure, and a verdict computed from those numbers by a stated rule, never typed.

    duat claims                  the table as text
    duat claims --markdown       the table and its rules as Markdown (the README's block)
    duat claims --write-readme   rewrite the README's block between the claims markers

claims_table() reads the committed results (duat.locations.committed: duat/results/, or
$DUAT_RESULTS) through the experiments' and the benchmarks' own loaders, every time, and
returns one Claim per row in the order of docs/method.md (sections 2-5, then the follow-up
of section 7). A missing results folder makes its rows "not tested here". Each row builder
takes the loaded results, so it can be fed synthetic ones; the judging itself (thresholds,
rules, verdicts) and the rendering are duat.experiments.verdicts.
"""
from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from duat.bench import across_ranks
from duat.bench.regime import regime_grid
from duat.bench.report import is_quick, list_runs, load_benchmark as load_bench
from duat.experiments.composition_claims import composition_claim
from duat.experiments.decode_claims import decode_claim, is_decode
from duat.experiments.catalog import load_results
from duat.experiments.runs import stats
from duat.experiments.twins import twin_differences
from duat.experiments.verdicts import (DOES_NOT, HOLDS, NOT_TESTED, PARTLY, THRESHOLDS, Claim,
                                       Comparison, Pooled, cap, compression_verdict, device_label,
                                       judged, mean_sd, missing, readme_path, replace_block,
                                       share_verdict, signed, span, sweep_missing, to_markdown, to_text,
                                       verdict_of)
from duat.locations import committed

SWEEPS = ("accuracy-vs-width", "accuracy-vs-depth", "data-scale", "data-diversity")
LATENCY = ("Latency does not grow with the number of parallel layers (Para-Former-1-n), while "
           "the serial ViT-n's grows linearly")


def _load(loader, *args):
    try:                        # a missing results folder: its rows are "not tested here"
        return loader(*args)
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------- sweeps

def _variant(r: dict) -> tuple:
    return (r["fraction"], r["per_class"], r["num_classes"])


def _variants(res: dict) -> list[tuple]:
    return sorted({_variant(r) for r in res["summary"]}, key=str)


def _models(res: dict) -> list[str]:
    return sorted({r["model"] for r in res["summary"]}, key=lambda m: (m[:2], [int(x) for x in m.split("-")[1:]]))


def _widths(res: dict, m: int = 1) -> list[int]:
    return sorted({r["width"] for r in res["summary"] if r["depth"] == m and r["model"].startswith("pf-")})


def _single(res: dict) -> str:
    """The one-layer model (ViT-1 = Para-Former-1-1), under the name the results use."""
    return "pf-1-1" if any(r["model"] == "pf-1-1" for r in res["summary"]) else "vit-1"


def _compare(res: dict, a: tuple, b: tuple, metric: str = "test_acc") -> Comparison | None:
    """(model, variant) a against b: the difference of their means over seeds."""
    rows = {(r["model"], _variant(r)): r for r in res["summary"]}
    ra, rb = rows.get(a), rows.get(b)
    if ra is None or rb is None:
        return None
    return Comparison(f"{a[0]} - {b[0]}", ra[f"{metric}_mean"] - rb[f"{metric}_mean"],
                      max(ra[f"{metric}_std"], rb[f"{metric}_std"]), 1.0 / ra["test_samples"])


def _pairs(res: dict, a: tuple, b: tuple, metric: str = "test_acc") -> list[float]:
    """(model, variant) a minus b, paired by seed."""
    by = {(r["model"], _variant(r), r["seed"]): r[metric] for r in res["records"]}
    seeds = sorted({s for (_, _, s) in by})
    return [by[(*a, s)] - by[(*b, s)] for s in seeds if (*a, s) in by and (*b, s) in by]


def _judge(res: dict, pairs: list[tuple], metric: str = "test_acc") -> tuple[list[Comparison], Pooled]:
    """Comparisons of (model, variant) pairs, and all their seed pairs pooled."""
    points = [c for a, b in pairs if (c := _compare(res, a, b, metric)) is not None]
    return points, Pooled.of([d for a, b in pairs for d in _pairs(res, a, b, metric)])


def _total(res: dict) -> list[tuple]:
    """Para-Former-1-n against Para-Former-1-1 at every variant: n parallel layers' whole gain
    (the parameters grow with n)."""
    return [((f"pf-1-{n}", v), (_single(res), v)) for v in _variants(res) for n in _widths(res)[1:]]


def _arrangement(res: dict, depth: int | None = None) -> list[tuple]:
    """Para-Former-m-n against its serial twin ViT-(m*n): same layers, parameters and FLOPs."""
    twins = {((t["model"], _variant(t)), (t["twin"], _variant(t))) for t in twin_differences(res)
             if depth is None or t["depth"] == depth}
    return sorted(twins, key=lambda p: (str(p[0][1]), p[0][0][:5], int(p[0][0].split("-")[-1])))


def _size(res: dict) -> list[tuple]:
    """ViT-n against ViT-1: what more layers in series buy (size alone)."""
    vits = {m for m in _models(res) if m.startswith("vit-")}
    return [((f"vit-{n}", v), (_single(res), v)) for v in _variants(res) for n in _widths(res)[1:]
            if f"vit-{n}" in vits]


def _meta(res: dict) -> tuple[str, str]:
    return device_label(res["environment"]), ", ".join(map(str, res["plan"]["seeds"]))


def width_claims(res: dict | None) -> list[Claim]:
    """Claim 5.1 on accuracy-vs-width: Para-Former-1-n as n grows, and against ViT-n."""
    where, src = "notebook 07 · duat/results/accuracy-vs-width", "method.md 5.1"
    c1 = "More parallel layers improve accuracy: Para-Former-1-n as n grows"
    c2 = ("At equal parameters and FLOPs, Para-Former-1-n beats serial ViT-n (the follow-up "
          "reports up to 2.39 % over ViT)")
    if res is None:
        return [missing("width", c1, src, "accuracy-vs-width", where),
                missing("width-twin", c2, src + ", 7", "accuracy-vs-width", where)]
    device, seeds = _meta(res)
    rows = {r["model"]: r for r in res["summary"]}
    lo, hi = rows[_single(res)], rows[f"pf-1-{_widths(res)[-1]}"]
    points, pooled = _judge(res, _total(res))
    total = (f"digits: Para-Former-1-1 {mean_sd(lo['test_acc_mean'], lo['test_acc_std'])}, "
             f"{hi['model']} {mean_sd(hi['test_acc_mean'], hi['test_acc_std'])} with "
             f"{hi['params'] / lo['params']:.1f}x the parameters; each n against n = 1: {judged(points, pooled)}")
    tpoints, tpooled = _judge(res, _arrangement(res))
    spoints, _ = _judge(res, _size(res))
    twin = (f"digits: Para-Former-1-n - ViT-n, n = {', '.join(p.label.split('-')[-1] for p in tpoints)}: "
            f"{', '.join(signed(p.diff) for p in tpoints)}; {judged(tpoints, tpooled)}"
            + (f". Size alone (ViT-n - ViT-1): {span(spoints)}" if spoints else ""))
    return [Claim("width", c1, src, total, device, seeds, verdict_of(points, pooled), "A", where),
            Claim("width-twin", c2, src + ", 7", twin, device, seeds, verdict_of(tpoints, tpooled), "A", where)]


def depth_claims(res: dict | None) -> list[Claim]:
    """Claim 5.1 on accuracy-vs-depth: wider stages at fixed m, and against ViT-(m*n)."""
    where, src = "notebook 07 · duat/results/accuracy-vs-depth", "method.md 5.1"
    c1 = "More parallel layers improve accuracy: Para-Former-m-n, wider stages at fixed m"
    c2 = "At equal parameters and FLOPs, Para-Former-m-n beats serial ViT-(m·n)"
    if res is None:
        return [missing("grid", c1, src, "accuracy-vs-depth", where),
                missing("grid-twin", c2, src, "accuracy-vs-depth", where)]
    device, seeds = _meta(res)
    v = _variants(res)[0]
    ms = [m for m in sorted({r["depth"] for r in res["summary"] if r["width"] > 1}) if len(_widths(res, m)) > 1]
    points, pooled = _judge(res, [((f"pf-{m}-{_widths(res, m)[-1]}", v), (f"pf-{m}-{_widths(res, m)[0]}", v))
                                  for m in ms])
    grid = (f"digits: widest minus narrowest stage at m = {', '.join(map(str, ms))}: "
            f"{', '.join(signed(p.diff) for p in points)}; {judged(points, pooled)}")
    tpoints, tpooled = _judge(res, _arrangement(res))
    twin = (f"digits: {sum(p.diff > 0 for p in tpoints)} of {len(tpoints)} layouts above their ViT "
            f"twin on average ({span(tpoints)}); {judged(tpoints, tpooled)}")
    return [Claim("grid", c1, src, grid, device, seeds, verdict_of(points, pooled), "A", where),
            Claim("grid-twin", c2, src, twin, device, seeds, verdict_of(tpoints, tpooled), "A", where)]


def _width_at_every(res: dict, key: str, claim: str, where: str, what: str) -> Claim:
    """More parallel layers at every data variant, judged against ViT-n where the serial
    control was run (size alone, ViT-n - ViT-1, stated beside it); without the control, on
    Para-Former-1-n - Para-Former-1-1 (size and arrangement together), at most partly."""
    device, seeds = _meta(res)
    tpoints, tpooled = _judge(res, _arrangement(res, depth=1))
    if tpoints:
        spoints, spooled = _judge(res, _size(res))
        text = (f"Para-Former-1-n - ViT-n (equal parameters), all {what}: {span(tpoints)}, "
                f"{judged(tpoints, tpooled)}. Size alone (ViT-n - ViT-1): {span(spoints)}, "
                f"{judged(spoints, spooled)}")
        return Claim(key, claim, "method.md 5.1, 5.3", text, device, seeds,
                     verdict_of(tpoints, tpooled), "A", where)
    points, pooled = _judge(res, _total(res))
    text = (f"serial control ViT-n missing from these results: Para-Former-1-n - Para-Former-1-1 "
            f"only (parameters grow with n), all {what}: {span(points)}, {judged(points, pooled)}")
    return Claim(key, claim, "method.md 5.1, 5.3", text, device, seeds, cap(verdict_of(points, pooled)),
                 "A", where)


def scale_claims(res: dict | None) -> list[Claim]:
    """Claim 5.3 on data-scale, and claim 5.1 at every scale."""
    where = "notebook 07 · duat/results/data-scale"
    c1 = "Data scale strongly influences the results (more than the architecture does)"
    c2 = "More parallel layers help at every data scale, at equal parameters (against ViT-n)"
    if res is None:
        return sweep_missing("data-scale", where, ("scale", c1), ("scale-width", c2))
    device, seeds = _meta(res)
    small, full = min(_variants(res)), max(_variants(res))
    points, pooled = _judge(res, [((m, full), (m, small)) for m in _models(res)])
    n = _widths(res)[-1]
    wide, _ = _judge(res, [((f"pf-1-{n}", v), (_single(res), v)) for v in _variants(res)])
    strongly = min(p.diff for p in points) > max(p.diff for p in wide)
    text = (f"digits, {small[0]:.0%} -> {full[0]:.0%} of the training set: {span(points)} for the "
            f"{len(points)} models ({judged(points, pooled)}); 1 -> {n} parallel layers at each share: "
            f"{span(wide)}" + ("" if strongly else "; the data's gain is not larger than the width's"))
    verdict = verdict_of(points, pooled)
    return [Claim("scale", c1, "method.md 5.3", text, device, seeds, verdict if strongly else cap(verdict),
                  "A", where),
            _width_at_every(res, "scale-width", c2, where, "fractions")]


def diversity_claims(res: dict | None) -> list[Claim]:
    """Claim 5.3 on data-diversity (accuracy above chance), and claim 5.1 at every diversity."""
    where = "notebook 07 · duat/results/data-diversity"
    c1 = "Data diversity strongly influences the results"
    c2 = "More parallel layers help at every diversity, at equal parameters (against ViT-n)"
    if res is None:
        return sweep_missing("data-diversity", where, ("diversity", c1), ("diversity-width", c2))
    device, seeds = _meta(res)
    vs = sorted(_variants(res), key=lambda v: v[2])
    few, many = vs[0], vs[-1]
    points, pooled = _judge(res, [((m, few), (m, many)) for m in _models(res)], "test_acc_above_chance")
    way = "lower"
    if sum(p.diff for p in points) < 0:   # "influences": judged in the direction it has
        points = [Comparison(p.label, -p.diff, p.sd, p.unit) for p in points]
        pooled, way = Pooled(pooled.n, -pooled.mean, pooled.se), "higher"
    confounded = few[1] != many[1]
    text = (f"digits, {few[2]} -> {many[2]} classes at {few[1] * few[2]} training images: accuracy "
            f"above chance {way} by {span(points).replace('+', '')} for the {len(points)} models "
            f"({judged(points, pooled)})"
            + (f"; confounded: images per class fall from {few[1]} to {many[1]} with it" if confounded else ""))
    verdict = verdict_of(points, pooled)
    return [Claim("diversity", c1, "method.md 5.3", text, device, seeds, cap(verdict) if confounded else verdict,
                  "A", where),
            _width_at_every(res, "diversity-width", c2, where, "class counts")]


# ----------------------------------------------------------------------------- theory

def theory_claims(sweeps: list[dict], benches: list[dict]) -> list[Claim]:
    """Sections 2-4: exact identities the kit's tests check, and the equal-size twins in the
    committed numbers (Para-Former-m-n against ViT-(m*n): parameters, FLOPs)."""
    params = [(r["params"], t["params"]) for res in sweeps for r in res["records"] if r["width"] > 1
              for t in res["records"] if t["width"] == 1 and t["layers"] == r["layers"]
              and t["seed"] == r["seed"] and _variant(t) == _variant(r)]
    keys = ("layers", "batch", "dim", "tokens", "variant")
    flops = [(r["flops"], t["flops"]) for res in benches for r in res["records"]
             for t in res["records"] if r["implementation"] == "pf-batched"
             and t["implementation"] == "vit" and all(t.get(k) == r.get(k) for k in keys)]
    same_p, same_f = sum(a == b for a, b in params), sum(a == b for a, b in flops)
    twins = (NOT_TESTED if not params else
             HOLDS if same_p == len(params) and same_f == len(flops) else DOES_NOT)
    tests = "any (CPU in the tests)"
    return [
        Claim("mvm", "Every layer of a vision or Transformer network is y = W x + b, with W fixed or "
              "chosen by the input (Matrix-Vector Method)", "method.md 2",
              "exact at each input: mvm(module, x) reproduces every layer type to float rounding "
              "(tests/test_mvm.py)", tests, "-", HOLDS, "E", "notebook 02 · tests/test_mvm.py"),
        Claim("duat", "A residual network is a dynamic UAT: x_0 plus one UAT term per block, whose "
              "biases (and, with attention, weights) depend on the input", "method.md 3",
              "exact: the unrolled terms add back to the forward pass to float rounding for residual "
              "MLPs, CNNs and Transformer blocks (tests/test_unroll.py)", tests, "-", HOLDS, "E",
              "notebook 03 · tests/test_unroll.py"),
        Claim("fitting-power", "The input-dependence of the parameters is what gives these networks "
              "their fitting power", "method.md 3",
              "no committed result: notebook 03 compares a static and a dynamic UAT of equal size "
              "live (one seed, small targets); notebook 10 measures that training makes the "
              "parameters more dynamic, not that this causes the fit", "-", "-", NOT_TESTED, "F",
              "notebooks 03, 10"),
        Claim("twins", "Para-Former-m-n is the layers of ViT-(m·n) rewired: a stage y = x + sum f_i(x) "
              "of independent terms, with the same parameters and FLOPs", "method.md 4",
              f"parameters equal in {same_p} of {len(params)} committed Para-Former/ViT twin runs, "
              f"FLOPs in {same_f} of {len(flops)} benchmark pairs; the batched stage equals the loop "
              f"to float rounding (tests/test_paraformer.py)", tests, "-", twins, "E",
              "notebook 04 · tests/test_paraformer.py, tests/test_counting.py"),
    ]


# ----------------------------------------------------------------------------- latency

def _ratio(label: str, a: dict, b: dict) -> tuple[str, float]:
    """a / b of two timings' medians, with the range from their interquartile ranges."""
    r = a["median_ms"] / b["median_ms"]
    return f"{label}: {r:.2f}x [{a['p25_ms'] / b['p75_ms']:.2f}-{a['p75_ms'] / b['p25_ms']:.2f}]", r


def latency_claim(res: dict, name: str) -> Claim:
    """Claim 5.2 on one `duat bench` run, every (variant, batch, width) case (rule B)."""
    flat, cases = THRESHOLDS["flat"], []   # (text, ratio, flat, serial grows or None)
    for variant in sorted({r["variant"] for r in res["records"]}):
        for batch in sorted({r["batch"] for r in res["records"] if r["variant"] == variant}):
            g = regime_grid(res, batch, variant)
            j = len(g["ns"]) - 1
            for i, dim in enumerate(g["dims"] if g["ns"][0] == 1 and j > 0 else []):
                pf, vit = float(g["pf"][i, j]), float(g["vit"][i, j])
                if math.isnan(pf):
                    continue
                text = (f"batch {batch}, D {dim}{'' if variant == 'eager' else ', ' + variant}: {pf:.2f}x "
                        f"[{g['pf_low'][i, j]:.2f}-{g['pf_high'][i, j]:.2f}]"
                        + ("" if math.isnan(vit) else f" (ViT {vit:.1f}x)"))
                cases.append((text, pf, pf <= flat, None if math.isnan(vit) else bool(g["vit_low"][i, j] > flat)))
    serial = any(c[3] is not None for c in cases)
    hits = sum(c[2] and c[3] is not False for c in cases)
    shown = [c[0] for c in cases if c[2]]
    others = [c for c in cases if not c[2]]
    if len(cases) <= 4:
        shown += [c[0] for c in others]
    elif others:
        shown.append(f"elsewhere {min(c[1] for c in others):.2f}x to {max(c[1] for c in others):.2f}x")
    n = max(r["layers"] for r in res["records"])
    text = (f"Para-Former-1-{n} / Para-Former-1-1 [range]: flat with the serial ViT growing in {hits} "
            f"of {len(cases)} cases; " + "; ".join(shown) + ("" if serial else "; no serial model timed"))
    env, verdict = res["environment"], share_verdict(hits, len(cases))
    return Claim(f"latency:{name}", LATENCY, "method.md 5.2, 4", text,
                 f"{device_label(env)}, {env.get('threads', '?')} threads",
                 f"timings: medians of {res['spec'].get('reps', '?')} calls",
                 verdict if serial else cap(verdict), "B", f"notebook 05 · duat/results/bench/{name}")


def single_device_claim(res: dict, name: str) -> Claim:
    """Claim 5.2 from a one-device branch-parallel run: the batched Para-Former-1-n alone."""
    rows = {(r["n"], r["batch"]): r["one"] for r in res["records"]}
    n, spec = max(k[0] for k in rows), res["spec"]
    cases = [_ratio(f"batch {b}", rows[(n, b)], rows[(1, b)]) for b in sorted({b for _, b in rows})
             if (n, b) in rows and (1, b) in rows]
    text = (f"batched Para-Former-1-{n} / Para-Former-1-1 [range], size {spec.get('size')} at "
            f"{spec.get('image_size')} px: " + "; ".join(c[0] for c in cases)
            + "; no serial model timed beside it")
    hits = sum(c[1] <= THRESHOLDS["flat"] for c in cases)
    return Claim(f"latency:{name}", LATENCY, "method.md 5.2, 4", text, device_label(res["environment"]),
                 f"timings: medians of {spec.get('reps', '?')} calls", cap(share_verdict(hits, len(cases))),
                 "B", f"notebooks 05, 12 · duat/results/branch-parallel/{name}")


def device_claims(runs: dict[str, dict]) -> list[Claim]:
    """Branches over several processes (rule C), and the follow-up's multi-GPU figure."""
    where = "notebook 12 · duat/results/branch-parallel"
    split = {k: r for k, r in runs.items() if r["processes"] > 1}
    cases = [(k, r["n"], r["batch"], r["one"]["median_ms"] / r["split"]["median_ms"],
              r["one"]["p25_ms"] / r["split"]["p75_ms"] > 1)
             for k, res in sorted(split.items()) for r in res["records"]]
    text = "no committed run over several processes"
    if cases:
        best = max(cases, key=lambda c: c[3])
        hits = [f"{c[0]}, n = {c[1]}, batch {c[2]}: x{c[3]:.2f}" for c in cases if c[4]][:3]
        text = (f"{sum(c[4] for c in cases)} of {len(cases)} (run, n, batch) cases faster than one "
                f"process beyond the spread" + (f" ({'; '.join(hits)})" if hits else "")
                + f"; best median x{best[3]:.2f} ({best[0]}, n = {best[1]}, batch {best[2]}, "
                f"{'beyond' if best[4] else 'within'} the spread); median of all x"
                f"{statistics.median(c[3] for c in cases):.2f}")
    gpus = [k for k, r in runs.items() if r["environment"].get("device") == "cuda" and r["processes"] > 1]
    return [
        Claim("processes", "Branches spread over several processes or devices run faster than one",
              "method.md 4 (note on hardware), 8", text,
              "; ".join(sorted({device_label(r["environment"]) for r in split.values()})) or "-",
              "timings: medians of calls", share_verdict(sum(c[4] for c in cases), len(cases)), "C", where),
        Claim("multi-gpu", "Multi-GPU deployment is 3.30x +- 0.86 faster than FairScale (the "
              "follow-up's figure)", "method.md 7",
              f"not measured: {len(gpus)} committed runs over several GPUs, no FairScale baseline",
              "-", "-", NOT_TESTED, "F", where),
    ]


# ----------------------------------------------------------------------------- fine-tuning

def finetune_claims(res: dict | None) -> list[Claim]:
    """Claim 5.4: pre-trained against scratch, and whether the gain shrinks with more data."""
    where, src = "notebook 08 · duat/results/finetune", "method.md 5.4"
    c1 = "Fine-tuning from a pre-trained ViT beats training from scratch when data is limited"
    c2 = "... and helps most where data is scarcest (the gain shrinks as data grows)"
    if res is None:
        return [missing("finetune", c1, src, "finetune", where),
                missing("finetune-scarce", c2, src, "finetune", where)]
    device, seeds = device_label(res["environment"]), ", ".join(map(str, res["spec"]["seeds"]))
    rows = res["summary"]
    points = [Comparison(f"{r['layout']} {r['per_class']}", r["pretrained_mean"] - r["scratch_mean"],
                         max(r["pretrained_std"], r["scratch_std"])) for r in rows]
    acc = {(r["dataset"], r["layout"], r["per_class"], r["seed"], r["init"]): r["test_acc"] for r in res["runs"]}
    diffs = [v - acc[(*k[:4], "scratch")] for k, v in sorted(acc.items(), key=str)
             if k[4] == "pretrained" and (*k[:4], "scratch") in acc]
    pooled = Pooled.of(diffs)
    pcs, layouts = sorted({r["per_class"] for r in rows}), list(dict.fromkeys(r["layout"] for r in rows))
    text = (f"digits 5-9 with {', '.join(map(str, pcs))} examples per class, {len(layouts)} layouts from a "
            f"ViT-4 trained on digits 0-4: pre-trained - scratch {span(points)}, won {sum(d > 0 for d in diffs)} "
            f"of {len(diffs)} paired runs; {judged(points, pooled)}")
    gain = {(r["layout"], r["per_class"]): r for r in rows}
    spoints = [Comparison(lay, gain[(lay, pcs[0])]["gain_mean"] - gain[(lay, pcs[-1])]["gain_mean"],
                          max(gain[(lay, pcs[0])]["gain_std"], gain[(lay, pcs[-1])]["gain_std"]))
               for lay in layouts if (lay, pcs[0]) in gain and (lay, pcs[-1]) in gain]
    scarce = (f"gain at {pcs[0]} minus gain at {pcs[-1]} examples per class: "
              + ", ".join(f"{p.label} {signed(p.diff)} (needs > {p.threshold:.3f})" for p in spoints)
              + f"; {judged(spoints)}; the gain grew with the data in {sum(p.diff < 0 for p in spoints)} of "
              f"{len(spoints)} layouts")
    return [Claim("finetune", c1, src, text, device, seeds, verdict_of(points, pooled), "A", where),
            Claim("finetune-scarce", c2, src, scarce, device, seeds, verdict_of(spoints), "A", where)]


# ----------------------------------------------------------------------------- the follow-up

def _prefix(res: dict, schedule: str, what: str) -> list[list[float]]:
    """Per seed, the test `what` (loss, acc) of the prefix models y_1 .. y_n."""
    return [[p[f"test_{what}"] for p in r["prefixes"]] for r in res["schedules"] if r["schedule"] == schedule]


def progressive_claims(res: dict | None) -> list[Claim]:
    """Section 7: progressive approximation, compression, expansion (duat reproduce progressive)."""
    where, src = "notebook 11 · duat/results/progressive", "method.md 7, 7.1"
    c1 = "Progressive approximation: each new branch further reduces the loss the earlier ones leave"
    c2 = "Compression by using only some branches, up to 15.07x (the follow-up's figure)"
    c3 = "Expansion for continual learning: new branches learn a new task, the old one is kept"
    if res is None:
        return [missing(k, c, src, "progressive", where)
                for k, c in (("progressive", c1), ("compression", c2), ("expansion", c3))]
    device, seeds = device_label(res["environment"]), ", ".join(map(str, res["spec"]["seeds"]))
    loss = _prefix(res, "progressive", "loss")
    n = len(loss[0])
    seed_stats = [stats([s[k] for s in loss]) for k in range(n)]
    mean, sd = [st["mean"] for st in seed_stats], [st["std"] for st in seed_stats]
    points = [Comparison(f"y_{k + 1} - y_{k + 2}", mean[k] - mean[k + 1], max(sd[k], sd[k + 1]))
              for k in range(n - 1)]
    pooled = Pooled.of([s[k] - s[k + 1] for s in loss for k in range(n - 1)])
    joint = [stats([s[k] for s in _prefix(res, "joint", "loss")])["mean"] for k in (0, n - 1)]
    acc1 = {sch: statistics.fmean(s[0] for s in _prefix(res, sch, "acc")) for sch in ("progressive", "joint")}
    text = (f"digits, Para-Former-1-{n} trained progressively (n + 1 steps per batch): test loss of "
            f"y_1 .. y_{n} {mean[0]:.3f} -> {mean[-1]:.3f}, lower at {sum(p.diff > 0 for p in points)} of "
            f"{n - 1} steps; {judged(points, pooled)}. Trained jointly: {joint[0]:.3f} -> {joint[1]:.3f}, "
            f"y_1 alone {acc1['joint']:.3f} accuracy (progressive {acc1['progressive']:.3f})")
    comp = res["summary"]["compression"]
    best = {t: max((r for r in comp if r["trained"] == t and r["lost_mean"] <= THRESHOLDS["within"]),
                   key=lambda r: r["ratio"]) for t in sorted({r["trained"] for r in comp})}
    top = max(best.values(), key=lambda r: r["ratio"])
    lat = {r["k"]: r["median_ms"] for r in res["latency"]}
    ctext = (f"within {THRESHOLDS['within']:g} of the whole model's accuracy: "
             + ", ".join(f"{t}-trained {r['ratio']:.2f}x ({r['k']} of {n} branches, by {r['method']})"
                         for t, r in best.items())
             + f"; {max(r['ratio'] for r in comp):.2f}x is the most {n} branches allow; batch-1 CPU "
             f"latency {lat[n] / lat[1]:.2f}x lower with 1 branch than with {n}")
    ex, s = res["expansion"], res["summary"]["expansion"]
    kept = sum(e["expansion_a_prefix"] == e["a_before"] and e.get("expansion_a_logits_identical", False)
               for e in ex)
    ms = {k: mean_sd(v["mean"], v["std"]) for k, v in s.items()}
    new_ok = s["expansion_b"]["mean"] >= s["finetune_b"]["mean"] - THRESHOLDS["spread"] * max(
        s["expansion_b"]["std"], s["finetune_b"]["std"])
    etext = (f"old task kept exactly (accuracy {s['a_before']['mean']:.3f} -> {s['expansion_a_prefix']['mean']:.3f},"
             f" logits bit-identical) in {kept} of {len(ex)} seeds; fine-tuning the whole model instead: "
             f"{ms['finetune_a']}; new task {ms['expansion_b']} against fine-tuning's {ms['finetune_b']}")
    expansion = DOES_NOT if not ex or kept < len(ex) else HOLDS if new_ok else PARTLY
    return [Claim("progressive", c1, src, text, device, seeds, verdict_of(points, pooled), "A", where),
            Claim("compression", c2, src, ctext, device, seeds, compression_verdict(top["ratio"]), "D", where),
            Claim("expansion", c3, src, etext, device, seeds, expansion, "E", where)]


# ----------------------------------------------------------------------------- the table

def bench_runs() -> dict[str, dict]:
    """The committed `duat bench` runs (local quick runs, which are not committed, left out)."""
    return {f.name: res for f in list_runs(committed("bench")) if not is_quick(res := load_bench(f))}


def branch_runs() -> dict[str, dict]:
    """The committed branch-parallel runs."""
    return {p.parent.name: across_ranks.load(p) for p in across_ranks.saved_runs()}


def claims_table() -> list[Claim]:
    """Every claim, its measurement from the committed results, and its verdict."""
    sweeps = {name: _load(load_results, name) for name in SWEEPS}
    benches, branches = bench_runs(), branch_runs()
    return [*theory_claims([r for r in sweeps.values() if r], list(benches.values())),
            *width_claims(sweeps["accuracy-vs-width"]), *depth_claims(sweeps["accuracy-vs-depth"]),
            *((decode_claim if is_decode(r) else latency_claim)(r, k) for k, r in sorted(benches.items())),
            *(single_device_claim(r, k) for k, r in sorted(branches.items()) if r["processes"] == 1),
            *scale_claims(sweeps["data-scale"]), *diversity_claims(sweeps["data-diversity"]),
            *finetune_claims(_load(load_results, "finetune")),
            *progressive_claims(_load(load_results, "progressive")),
            *device_claims(branches), composition_claim()]


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--markdown", action="store_true", help="print the table and its rules as Markdown")
    how.add_argument("--write-readme", nargs="?", const="", metavar="FILE",
                     help="rewrite the claims block of FILE (default: the checkout's README.md)")


def run(args: argparse.Namespace) -> int:
    """`duat claims` (bad input raises; duat.cli reports it with status 2)."""
    claims = claims_table()
    if args.write_readme is None:
        print(to_markdown(claims) if args.markdown else to_text(claims))
        return 0
    path = Path(args.write_readme) if args.write_readme else readme_path()
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    text = path.read_text(encoding="utf-8")
    new = replace_block(text, to_markdown(claims))
    if new != text:
        path.write_text(new, encoding="utf-8")
    print(f"{path.name}: claims block {'rewritten' if new != text else 'already up to date'} "
          f"({len(claims)} claims)")
    return 0
