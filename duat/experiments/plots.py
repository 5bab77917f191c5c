"""How `duat reproduce` shows results: the figures of the sweeps (seaborn lines, mean over
seeds with +-1 sd bars, seeds as dots) and of the fine-tuning experiment (accuracy against
examples per class; what each layout keeps of the serial source), and the plain-text tables
both print. Each figure function takes a results dict and returns a matplotlib figure;
duat.experiments.runs.Experiment.write saves and closes it.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from duat.registry import parse_name


# ----------------------------------------------------------------------------- labels

def label(model: str) -> str:
    """'ViT-L', 'GPT-L' or 'Para-Former-m-n' for a registry name."""
    m, n = parse_name(model)
    if n == 1:
        return f"GPT-{m}" if model.strip().lower().startswith("gpt") else f"ViT-{m}"
    return f"Para-Former-{m}-{n}"


def layout_order(name: str) -> tuple[int, int]:
    """Sort key of fine-tuning layouts: the serial ViT first, then fewer stages."""
    m, n = parse_name(name)
    return (-m, n)


def results_frame(results: dict) -> pd.DataFrame:
    """A sweep's records as a pandas DataFrame (for seaborn), with readable labels."""
    df = pd.DataFrame([{k: v for k, v in r.items() if k not in ("config", "versions", "classes")}
                       for r in results["records"]])
    df["label"] = [label(m) for m in df["model"]]
    df["family_label"] = df["family"].map({"vit": "ViT-L (serial)", "paraformer": "Para-Former (parallel)"})
    return df


# ----------------------------------------------------------------------------- the sweeps

def heatmap_range(means, spreads, seed_sds: float = 2.0) -> tuple[float, float]:
    """The colour range of a heat map of means over seeds: centred on the middle of the
    means, at least `seed_sds` of the largest seed sd to each side (so cells that differ by
    less than the seed spread get nearly the same colour), wider if the means need it."""
    means, spreads = np.asarray(means, dtype=float), np.asarray(spreads, dtype=float)
    low, high = np.nanmin(means), np.nanmax(means)
    half = max((high - low) / 2, seed_sds * float(np.nanmax(spreads, initial=0.0)), 1e-3)
    mid = (low + high) / 2
    return mid - half, mid + half


def _twin_styles(df: pd.DataFrame) -> dict:
    """Line styles of a sweep that holds Para-Former-1-n and ViT-n: one colour per n, solid
    for the parallel model, dashed for the serial one (ViT-1 = Para-Former-1-1)."""
    ns = sorted(df["layers"].unique())
    data = df.assign(**{"n layers": [f"n = {v}" for v in df["layers"]],
                        "layout": df["family"].map({"vit": "ViT-n (serial)",
                                                    "paraformer": "Para-Former-1-n (parallel)"})})
    return dict(data=data, hue="n layers", hue_order=[f"n = {v}" for v in ns], style="layout",
                style_order=["Para-Former-1-n (parallel)", "ViT-n (serial)"],
                dashes={"Para-Former-1-n (parallel)": "", "ViT-n (serial)": (4, 2)})



def plot_sweep(results: dict, title: str | None = None):
    """A sweep's figure, by what it sweeps (results["x"]); `title`: the experiment's
    (default: the one the results file keeps)."""
    df = results_frame(results)
    x = results["x"]
    sd = ("sd", 1)
    where = f"{results['environment'].get('device_name', '')}, {results['profile']} profile, " \
            f"{len(set(df['seed']))} seeds"
    if x == "width":
        pf = df[df["depth"] == 1].assign(n=lambda d: d["width"], kind="Para-Former-1-n (n parallel)")
        vit = df[df["width"] == 1].assign(n=lambda d: d["depth"], kind="ViT-n (n in series)")
        data = pd.concat([pf, vit], ignore_index=True)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        sns.lineplot(data=data, x="n", y="test_acc", hue="kind", style="kind", markers=True,
                     dashes=False, errorbar=sd, err_style="bars", ax=ax)
        sns.stripplot(data=data, x="n", y="test_acc", hue="kind", native_scale=True, dodge=False,
                      alpha=0.35, size=3, legend=False, ax=ax)
        ax.set(xscale="log", xlabel="n (encoder layers; same parameter count for both)",
               ylabel="test accuracy")
        ax.set_xticks(sorted(data["n"].unique()), labels=[str(v) for v in sorted(data["n"].unique())])
    elif x == "layers":
        fig, (ax_h, ax) = plt.subplots(1, 2, figsize=(11, 4.2))
        cells = df.groupby(["depth", "width"])["test_acc"].agg(["mean", "std"])
        rows = sorted(df.loc[df["width"] > 1, "depth"].unique())       # the m x n grid only
        grid, spread = (cells[k].unstack("width").loc[rows] for k in ("mean", "std"))
        low, high = heatmap_range(grid.to_numpy(), cells["std"].to_numpy())  # every model's sd
        text = grid.map(lambda v: f"{v:.3f}") + "\n+- " + spread.map(lambda v: f"{v:.3f}")
        sns.heatmap(grid, annot=text, fmt="", cmap="viridis", vmin=low, vmax=high, ax=ax_h,
                    annot_kws={"fontsize": 8},
                    cbar_kws={"label": "mean test accuracy (range: at least +-2 seed sd)"})
        ax_h.set(xlabel="n (parallel layers per stage)", ylabel="m (stages in series)",
                 title="Para-Former-m-n (n = 1: ViT-m), mean +- sd")
        data = df.assign(series=[f"n = {w}" + (" (ViT-L)" if w == 1 else "") for w in df["width"]])
        sns.lineplot(data=data, x="layers", y="test_acc", hue="series", style="series", markers=True,
                     dashes=False, errorbar=sd, err_style="bars", ax=ax)
        ax.set(xscale="log", xlabel="L = m * n encoder layers (parameter count grows with L)",
               ylabel="test accuracy", title="against the number of layers")
        ticks = sorted(df["layers"].unique())
        ax.set_xticks(ticks, labels=[str(t) for t in ticks])
    elif x == "fraction":
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        sns.lineplot(x="fraction", y="test_acc", **_twin_styles(df), markers=True,
                     errorbar=sd, err_style="bars", ax=ax)
        ticks = sorted(df["fraction"].unique())
        ax.set(xscale="log", xlabel="share of the training set (same number of steps)",
               ylabel="test accuracy")
        ax.set_xticks(ticks, labels=[f"{t:.0%}" for t in ticks])
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title_fontsize=8)
    elif x == "num_classes":
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        for a, y, name in ((ax, "test_acc", "test accuracy"),
                           (ax2, "test_acc_above_chance", "accuracy above chance, (acc - 1/k)/(1 - 1/k)")):
            sns.lineplot(x="num_classes", y=y, **_twin_styles(df), markers=True,
                         errorbar=sd, err_style="bars", ax=a)
            a.set(xlabel="k classes (same number of training images)", ylabel=name)
            a.set_xticks(sorted(df["num_classes"].unique()))
        ax.get_legend().remove()
        sns.move_legend(ax2, "upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title_fontsize=8)
    else:  # pragma: no cover - registry entries use the four above
        raise ValueError(f"no plot for x={x!r}")
    fig.suptitle(f"{textwrap.fill(title or results['title'], 90)}\n({where}; bars: mean +- 1 sd)",
                 fontsize=10)
    for a in fig.axes:
        if a.get_ylabel() and "accuracy" in a.get_ylabel():
            a.grid(alpha=0.3)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- fine-tuning

def plot_curves(results: dict):
    """Test accuracy against examples per class: one panel per (dataset, layout);
    pretrained (fine-tuned), head only, and scratch, mean +- std over seeds."""
    summary = results["summary"]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    layouts = sorted(dict.fromkeys(r["layout"] for r in summary), key=layout_order)
    fig, axes = plt.subplots(len(datasets), len(layouts), figsize=(3.6 * len(layouts), 3.2 * len(datasets)),
                             squeeze=False, sharey="row")
    styles = [("pretrained", "fine-tuned from the source", "C0", "-"),
              ("probe", "head only (source blocks frozen)", "C0", ":"),
              ("scratch", "from scratch", "C3", "--")]
    for i, dataset in enumerate(datasets):
        for j, layout in enumerate(layouts):
            ax = axes[i][j]
            rows = sorted((r for r in summary if r["dataset"] == dataset and r["layout"] == layout),
                          key=lambda r: r["per_class"])
            ks = [r["per_class"] for r in rows]
            for key, name, color, ls in styles:
                means = [r[f"{key}_mean"] for r in rows]
                if any(v is None for v in means):
                    continue
                stds = [r[f"{key}_std"] for r in rows]
                ax.errorbar(ks, means, yerr=stds, color=color, ls=ls, marker="o", ms=4,
                            capsize=3, label=name)
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.minorticks_off()
            ax.set_title(f"{dataset}: {layout}")
            ax.set_xlabel("training examples per class")
            if j == 0:
                ax.set_ylabel("test accuracy")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    n = results["spec"]["seeds"]
    fig.suptitle(f"Limited-data fine-tuning (mean +- std over {len(n)} seeds; {results['profile']} profile)")
    fig.tight_layout()
    return fig


def plot_carry_over(results: dict):
    """What each layout keeps of the serial source, in up to three panels, each with its own
    y axis: source-task accuracy (as converted, after a few source-task steps, the same steps
    from scratch); on the target images, the fraction of predictions agreeing with the
    source; and the cosine similarity of the pooled features to the source's."""
    rows = results["carry_over"]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    rows = [r for r in rows if r["dataset"] == datasets[0]]
    labels = [f"{r['layout']}\n{r['assignment']}" for r in rows]
    panels = [("accuracy on the source's own task", "test accuracy",
               [("source_acc", "as converted, no training", "C0"),
                ("source_acc_after", "after a few source-task steps", "C1"),
                ("source_scratch_after", "same steps from scratch", "C7")]),
              ("predictions agreeing with the source", "fraction of target images",
               [("agreement", "agreement", "C2")]),
              ("pooled features vs the source's", "cosine similarity",
               [("feature_cosine", "feature cosine", "C4")])]
    panels = [(title, ylabel, [m for m in metrics if all(r.get(m[0]) is not None for r in rows)])
              for title, ylabel, metrics in panels]
    panels = [p for p in panels if p[2]]
    widths = [max(2.0, 0.9 * len(rows)) * (1.6 if len(p[2]) > 1 else 1.0) for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths) + 1.0, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    x = np.arange(len(rows))
    for ax, (title, ylabel, metrics) in zip(axes[0], panels):
        width = 0.8 / len(metrics)
        for i, (key, name, color) in enumerate(metrics):
            ax.bar(x + (i - (len(metrics) - 1) / 2) * width, [r[key] for r in rows], width,
                   label=name, color=color)
        low = min(0.0, min(r[key] for r in rows for key, _, _ in metrics))
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylim(low, 1.05)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if len(metrics) > 1:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(metrics))
    fig.suptitle("The serial source's blocks in each layout (right two panels: on the target "
                 "images)", fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- tables

def format_sweep(results: dict, metric: str = "test_acc") -> str:
    """A sweep's plain-text table: one line per configuration, mean +- sd over seeds."""
    lines = []
    for r in results["summary"]:
        variant = []
        if r["fraction"] != 1.0:
            variant.append(f"fraction {r['fraction']:g}")
        if r["per_class"] is not None:
            variant.append(f"{r['num_classes']} classes x {r['per_class']}")
        extra = ""
        if metric == "test_acc" and results["x"] == "num_classes":
            extra = (f"   above chance {r['test_acc_above_chance_mean']:.4f} "
                     f"+- {r['test_acc_above_chance_std']:.4f}")
        lines.append(f"{label(r['model']):18s} {', '.join(variant) or 'all data':26s} "
                     f"{r[f'{metric}_mean']:.4f} +- {r[f'{metric}_std']:.4f} "
                     f"(min {r[f'{metric}_min']:.4f}, max {r[f'{metric}_max']:.4f}, {r['seeds']} seeds)"
                     + extra)
    return "\n".join(lines)


def variant_label(row: dict, x: str) -> str:
    """A data variant as a table shows it: '10 %' of the data, '5 classes x 50', or 'all data'."""
    if x == "fraction":
        return f"{row['fraction']:.0%} of the data"
    if x == "num_classes" and row.get("per_class") is not None:
        return f"{row['num_classes']} classes x {row['per_class']}"
    return "all data"


def format_width_and_size(rows: list[dict], x: str) -> str:
    """duat.experiments.twins.width_and_size's rows as a plain-text table, in points
    (100 x the metric): the three models' mean +- sd over seeds, then the three paired
    differences with the seeds each is above zero ('wins'), and one test image in points."""
    def ms(row, key, sign=""):
        return f"{100 * row[f'{key}_mean']:{sign}.1f} +- {100 * row[f'{key}_std']:.1f}"

    r0 = rows[0]
    par, ser, one = (label(r0[f"{k}_model"]) for k in ("parallel", "serial", "single"))
    width = max(len(par), 16)
    head = (f"{'':20s} {one:>13s} {ser:>13s} {par:>{width}s}  "
            + "".join(f"{h:>19s}" for h in ("arrangement", "size", "total")) + "  one image")
    metric = {"test_acc": "test accuracy",
              "test_acc_above_chance": "accuracy above chance"}.get(r0["metric"], r0["metric"])
    lines = [f"{metric} in points, mean +- sd over seeds; the differences paired by seed "
             f"(wins: the seeds where it is above zero)",
             f"arrangement = {par} - {ser} (equal parameters and FLOPs), size = {ser} - {one}, "
             f"total = {par} - {one} = arrangement + size", head]
    for r in rows:
        n = len(r["seeds"])
        diffs = "".join(f" {ms(r, k, '+'):>12s} ({r[f'{k}_wins']}/{n})" for k in ("arrangement", "size", "total"))
        lines.append(f"{variant_label(r, x):20s} {ms(r, 'single'):>13s} {ms(r, 'serial'):>13s} "
                     f"{ms(r, 'parallel'):>{width}s}  {diffs}  {100 * r['one_image']:.2f}")
    return "\n".join(lines)


def format_table(summary: list[dict]) -> str:
    """Plain-text table: accuracy mean +- std over seeds."""
    def ms(mean, std):
        return "-" if mean is None else f"{mean:.3f} +- {std:.3f}"

    lines = [f"{'dataset':<9} {'layout':<8} {'k':>3}  {'pretrained':>15}  {'head only':>15}  "
             f"{'scratch':>15}  {'gain':>16}  wins"]
    for r in summary:
        lines.append(f"{r['dataset']:<9} {r['layout']:<8} {r['per_class']:>3}  "
                     f"{ms(r['pretrained_mean'], r['pretrained_std']):>15}  "
                     f"{ms(r['probe_mean'], r['probe_std']):>15}  "
                     f"{ms(r['scratch_mean'], r['scratch_std']):>15}  "
                     f"{ms(r['gain_mean'], r['gain_std']):>16}  {r['gain_wins']}/{r['pretrained_n']}")
    return "\n".join(lines)


def format_carry_over(rows: list[dict]) -> str:
    """Plain-text table of carry_over rows (source-task accuracy before / after a few steps)."""
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'dataset':<9} {'layout':<8} {'assignment':<12} {'source acc':>10} "
             f"{'after':>6} {'scratch':>7} {'agreement':>9} {'cosine':>7}  placement"]
    for r in rows:
        lines.append(f"{r['dataset']:<9} {r['layout']:<8} {r['assignment']:<12} "
                     f"{f(r['source_acc']):>10} {f(r.get('source_acc_after')):>6} "
                     f"{f(r.get('source_scratch_after')):>7} {r['agreement']:>9.3f} "
                     f"{r['feature_cosine']:>7.3f}  {r['placement']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- progressive

def _where(results: dict) -> str:
    seeds = len(results["spec"]["seeds"])
    return (f"{results['environment'].get('device_name', results['device'])}, "
            f"{results['profile']} profile, {seeds} seed{'s' if seeds != 1 else ''}")


def prefix_frame(results: dict) -> pd.DataFrame:
    """One row per seed, schedule, epoch and prefix k: the validation loss and accuracy of y_k."""
    rows = []
    for r in results["schedules"]:
        for h in r["history"]:
            for k in range(1, r["width"] + 1):
                rows.append({"seed": r["seed"], "schedule": r["schedule"], "epoch": h["epoch"],
                             "k": k, "val_loss": h[f"prefix_loss_{k}"],
                             "val_acc": h[f"prefix_acc_{k}"]})
    return pd.DataFrame(rows)


def plot_prefix_curves(results: dict):
    """Validation loss of every prefix model y_k through training, one panel per schedule
    (mean over seeds): does each branch lower what the earlier ones leave?"""
    df = prefix_frame(results)
    schedules = list(dict.fromkeys(df["schedule"]))
    fig, axes = plt.subplots(1, len(schedules), figsize=(4.2 * len(schedules), 3.6), sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], schedules):
        sns.lineplot(data=df[df["schedule"] == name], x="epoch", y="val_loss", hue="k",
                     palette="viridis", errorbar=None, ax=ax, legend=ax is axes[0][-1])
        ax.set(title=name, yscale="log", xlabel="epoch", ylabel="validation loss of y_k")
    axes[0][-1].legend(title="prefix k", fontsize=7, loc="upper right")
    fig.suptitle(f"Loss of every prefix y_k = x + sum_(i<=k) f_i(x) ({_where(results)})", fontsize=10)
    fig.tight_layout()
    return fig


def plot_compression(results: dict):
    """Test accuracy of the k best branches against parameters, per scoring method (mean +-
    sd over seeds; the leave-one-out choice also after brief fine-tuning), one panel per
    training schedule; last panel: the measured batch-1 latency of each width k (median,
    quartile bars)."""
    rows = []
    for r in results["compression"]:
        rows.append({"trained": r["trained"], "method": r["method"], "params": r["params"],
                     "test_acc": r["test_acc"]})
        if r.get("test_acc_finetuned") is not None:
            rows.append({"trained": r["trained"], "method": "loo + fine-tuning",
                         "params": r["params"], "test_acc": r["test_acc_finetuned"]})
    df = pd.DataFrame(rows)
    trained = list(dict.fromkeys(df["trained"]))
    fig, axes = plt.subplots(1, len(trained) + 1, figsize=(4.4 * (len(trained) + 1), 3.8))
    for ax, name in zip(axes, trained):
        sns.lineplot(data=df[df["trained"] == name], x="params", y="test_acc", hue="method",
                     style="method", markers=True, dashes=False, errorbar=("sd", 1),
                     err_style="bars", ax=ax, legend=ax is axes[0])
        ax.xaxis.set_major_formatter(lambda v, _: f"{v / 1e3:g}k")
        ax.set(xlabel="parameters kept", ylabel="test accuracy", ylim=(0, 1),
               title=f"trained {name}: keep the k best branches")
    axes[0].legend(fontsize=7, loc="lower right")
    lat = pd.DataFrame(results["latency"])
    ax = axes[-1]
    ax.errorbar(lat["k"], lat["median_ms"], yerr=[lat["median_ms"] - lat["p25_ms"],
                                                  lat["p75_ms"] - lat["median_ms"]],
                marker="o", capsize=3)
    ax.set(xlabel="branches kept k", ylabel="latency, batch 1 (ms)", ylim=(0, None),
           title=f"measured on {lat['device'].iloc[0]}")
    fig.suptitle(f"Compression by keeping branches ({_where(results)})", fontsize=10)
    fig.tight_layout()
    return fig


def forgetting_rows(results: dict) -> list[dict]:
    """Per seed and method: accuracy on A before and after B, forgetting, accuracy on B."""
    rows = []
    for r in results["expansion"]:
        for method, a_key, b_key in (("expansion (prefix y_a for A)", "expansion_a_prefix", "expansion_b"),
                                     ("expansion (whole model for A)", "expansion_a_whole", "expansion_b"),
                                     ("fine-tuning", "finetune_a", "finetune_b")):
            rows.append({"seed": r["seed"], "method": method, "a_before": r["a_before"],
                         "a_after": r[a_key], "forgetting": r["a_before"] - r[a_key],
                         "b_after": r[b_key]})
    return rows


def plot_forgetting(results: dict):
    """Accuracy on task A before and after learning task B, and on B, per method (bars:
    mean over seeds; dots: seeds)."""
    df = pd.DataFrame(forgetting_rows(results))
    long = df.melt(id_vars=["seed", "method"], value_vars=["a_before", "a_after", "b_after"],
                   var_name="measure", value_name="accuracy")
    long["measure"] = long["measure"].map({"a_before": "A, before B", "a_after": "A, after B",
                                           "b_after": "B, after B"})
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    sns.barplot(data=long, x="method", y="accuracy", hue="measure", errorbar=None, ax=ax)
    sns.stripplot(data=long, x="method", y="accuracy", hue="measure", dodge=True,
                  palette=["k"] * 3, size=3, alpha=0.5, legend=False, ax=ax)
    ax.set(ylim=(0, 1.05), xlabel="", ylabel="task accuracy (its own classes' logits)")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(f"Learning task B after task A ({_where(results)})", fontsize=10)
    fig.tight_layout()
    return fig
