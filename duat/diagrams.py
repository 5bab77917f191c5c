"""Drawings of Para-Former-m-n (docs/method.md section 4), made of matplotlib patches and arrows.

    draw_paraformer(m, n)               one layout on one axis, read from bottom to top
    draw_layouts([(4, 1), (1, 4), ...]) several layouts side by side, on one vertical scale

Each box is one encoder layer f_l (attention then MLP, each with its norm), coloured and
numbered by l, so the same twelve layers can be followed from the serial ViT (m = L, n = 1)
to any m x n layout (`placement`, e.g. from duat.transfer.place_blocks). Every stage reads
one input x, sends it through its n boxes side by side and adds x and their n updates
(the circle): y = x + sum_i f_i(x).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

from duat.checks import whole

MAX_SIDE = 16          # more stages or branches than this do not fit a readable drawing
STAGE_HEIGHT = 2.4     # vertical units per stage
BOX_W, BOX_H, GAP = 1.0, 0.8, 0.3


def _check_layout(depth, width, placement):
    whole("depth (m)", depth, 1, MAX_SIDE)  # more do not fit a readable drawing
    whole("width (n)", width, 1, MAX_SIDE)
    if placement is None:
        return [[s * width + i for i in range(width)] for s in range(depth)]
    if len(placement) != depth or any(len(row) != width for row in placement):
        raise ValueError(f"placement must be {depth} rows of {width} block indices "
                         f"(duat.transfer.place_blocks), got {placement!r}")
    return [list(row) for row in placement]


def draw_paraformer(depth: int, width: int, ax=None, placement=None, title: str | None = None,
                    num_blocks: int | None = None):
    """Draw Para-Former-m-n on `ax` (a new figure if None) and return the axis.

    placement[s][i]: the layer index shown (and coloured) in stage s, branch i; default
    stage-major numbering. num_blocks sets the colour scale (default m * n).
    """
    placement = _check_layout(depth, width, placement)
    L = num_blocks or max(max(row) for row in placement) + 1
    cmap = plt.get_cmap("viridis")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 1.1 * width, 1.6 + 1.1 * depth))

    total_w = width * BOX_W + (width - 1) * GAP
    cx = 0.0                                            # the residual stream runs up x = 0
    left = cx - total_w / 2
    skip_x = left - 0.45

    def arrow(p, q, **kw):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=10, lw=1.2,
                                     color=kw.pop("color", "0.25"), shrinkA=0, shrinkB=0, **kw))

    def box(x, y, w, h, text, face, fontsize=9, color="black"):
        ax.add_patch(FancyBboxPatch((x - w / 2, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    facecolor=face, edgecolor="0.2", lw=1.0))
        ax.text(x, y + h / 2, text, ha="center", va="center", fontsize=fontsize, color=color)

    # front end
    box(cx, -1.3, max(total_w, 2.6), 0.6, "patches + position", "0.92", fontsize=8)
    arrow((cx, -0.7), (cx, 0.0))
    for s in range(depth):
        y0 = s * STAGE_HEIGHT                           # the stage input x
        ys = y0 + 1.9                                   # the sum node
        ax.add_patch(Circle((cx, y0), 0.06, color="0.25"))
        for i in range(width):
            xi = left + BOX_W / 2 + i * (BOX_W + GAP)
            arrow((cx, y0), (xi, y0 + 0.5))
            l = placement[s][i]
            shade = cmap(0.15 + 0.7 * l / max(L - 1, 1))
            text_color = "white" if l / max(L - 1, 1) < 0.6 else "black"
            box(xi, y0 + 0.5, BOX_W, BOX_H, f"$f_{{{l + 1}}}$", shade, fontsize=11, color=text_color)
            arrow((xi, y0 + 0.5 + BOX_H), (cx, ys - 0.15))
        # skip connection: x itself joins the sum
        ax.plot([cx, skip_x, skip_x], [y0, y0, ys], color="0.45", lw=1.2, ls="--")
        arrow((skip_x, ys), (cx - 0.15, ys), color="0.45")
        ax.add_patch(Circle((cx, ys), 0.15, facecolor="white", edgecolor="0.2", lw=1.2))
        ax.text(cx, ys, "+", ha="center", va="center", fontsize=11)
        ax.text(left + total_w + 0.25, y0 + 0.9, f"stage {s + 1}", va="center", fontsize=8, color="0.35")
        arrow((cx, ys + 0.15), (cx, (s + 1) * STAGE_HEIGHT if s + 1 < depth else ys + 0.5))
    top = (depth - 1) * STAGE_HEIGHT + 1.9 + 0.5
    box(cx, top, max(total_w, 2.6), 0.6, "norm + head", "0.92", fontsize=8)

    ax.set_xlim(skip_x - 0.4, left + total_w + 1.2)
    ax.set_ylim(-1.6, top + 0.9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title if title is not None else _name(depth, width), fontsize=10)
    return ax


def _name(depth: int, width: int) -> str:
    if width == 1:
        return f"ViT-{depth} = Para-Former-{depth}-1"
    return f"Para-Former-{depth}-{width}"


def draw_layouts(layouts, placements=None, titles=None, figsize=None):
    """Several (m, n) layouts side by side on one vertical scale; returns the figure.

    placements, titles: None, or one per layout (None entries allowed).
    """
    layouts = list(layouts)
    if not layouts:
        raise ValueError("layouts must list at least one (depth, width) pair")
    placements = list(placements) if placements is not None else [None] * len(layouts)
    if len(placements) != len(layouts):
        raise ValueError(f"got {len(placements)} placements for {len(layouts)} layouts")
    titles = list(titles) if titles is not None else [None] * len(layouts)
    if len(titles) != len(layouts):
        raise ValueError(f"got {len(titles)} titles for {len(layouts)} layouts")
    # one scale (inches per drawing unit) for all panels, so equal boxes look equal
    x_units = [n * BOX_W + (n - 1) * GAP + 2.05 for _, n in layouts]
    y_units = STAGE_HEIGHT * max(m for m, _ in layouts) + 2.5
    if figsize is None:
        scale = 0.42
        figsize = (sum(x_units) * scale + 0.4, y_units * scale + 0.5)
    fig, axes = plt.subplots(1, len(layouts), figsize=figsize, gridspec_kw={"width_ratios": x_units})
    axes = [axes] if len(layouts) == 1 else list(axes)
    L = max(m * n for m, n in layouts)
    for ax, (m, n), placement, title in zip(axes, layouts, placements, titles):
        draw_paraformer(m, n, ax=ax, placement=placement, title=title, num_blocks=L)
    top = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(-1.6, top)
    fig.tight_layout()
    return fig


def draw_branch_split(plan, ax=None, title: str | None = None):
    """One stage split over ranks (docs/method.md section 8): plan[r] lists the branches
    rank r holds (duat.distributed.split_branches). Every rank gets x, adds its branches'
    updates into a partial sum p_r, and one all-reduce gives every rank y = x + sum_r p_r.
    Returns the axis."""
    plan = [list(ids) for ids in plan]
    if not plan or any(not ids for ids in plan):
        raise ValueError("plan must give every rank at least one branch")
    n = sum(len(ids) for ids in plan)
    cmap = plt.get_cmap("viridis")
    cols = [len(ids) * (BOX_W + GAP) + 0.6 for ids in plan]
    if ax is None:
        _, ax = plt.subplots(figsize=(0.9 * sum(cols) + 1.0, 4.2))

    def arrow(p, q, color="0.25", **kw):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=10, lw=1.1,
                                     color=color, shrinkA=0, shrinkB=0, **kw))

    x0 = 0.0
    width = sum(cols)
    ax.add_patch(FancyBboxPatch((0.1, -0.2), width - 0.2, 0.45, boxstyle="round,pad=0.02",
                                facecolor="0.92", edgecolor="0.5"))
    ax.text(width / 2, 0.02, "x (B, T, D): the same on every rank", ha="center", va="center", fontsize=8)
    for r, ids in enumerate(plan):
        cx = x0 + cols[r] / 2
        ax.add_patch(FancyBboxPatch((x0 + 0.15, 0.45), cols[r] - 0.3, 2.55, boxstyle="round,pad=0.02",
                                    facecolor="none", edgecolor="0.6", ls=":"))
        ax.text(x0 + 0.3, 2.8, f"rank {r}", ha="left", va="center", fontsize=9, color="0.3")
        for j, i in enumerate(ids):
            xi = x0 + 0.3 + BOX_W / 2 + j * (BOX_W + GAP)
            shade = cmap(0.15 + 0.7 * i / max(n - 1, 1))
            arrow((xi, 0.25), (xi, 0.8))
            ax.add_patch(FancyBboxPatch((xi - BOX_W / 2, 0.8), BOX_W, BOX_H,
                                        boxstyle="round,pad=0.02,rounding_size=0.08",
                                        facecolor=shade, edgecolor="0.2"))
            ax.text(xi, 0.8 + BOX_H / 2, f"$f_{{{i + 1}}}$", ha="center", va="center", fontsize=11,
                    color="white" if i / max(n - 1, 1) < 0.6 else "black")
            arrow((xi, 0.8 + BOX_H), (cx, 2.2))
        ax.add_patch(Circle((cx, 2.35), 0.15, facecolor="white", edgecolor="0.2"))
        ax.text(cx, 2.35, "+", ha="center", va="center", fontsize=10)
        ax.text(cx + 0.22, 2.35, f"$p_{{{r}}}$", va="center", fontsize=9)
        arrow((cx, 2.5), (cx, 3.3))
        arrow((cx, 3.75), (cx, 4.25))
        x0 += cols[r]
    ax.add_patch(FancyBboxPatch((0.1, 3.3), width - 0.2, 0.45, boxstyle="round,pad=0.02",
                                facecolor="#fde2c4", edgecolor="0.4"))
    ax.text(width / 2, 3.52, "all-reduce (sum): y = x + " + " + ".join(f"$p_{{{r}}}$" for r in range(len(plan))),
            ha="center", va="center", fontsize=8)
    ax.text(width / 2, 4.45, "y on every rank, the input of the next stage", ha="center", fontsize=8)
    ax.set_xlim(-0.1, width + 0.1)
    ax.set_ylim(-0.4, 4.8)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title if title is not None else f"n = {n} branches over {len(plan)} ranks", fontsize=10)
    return ax
