"""Figures drawn off-screen to PNG bytes, for an ipywidgets.Image.

Setting an Image widget's value is safe from a background thread (it is one message to
the front end), unlike drawing into an Output widget, so both dashboards draw this way.
The same bytes make a static picture (`picture`): a plain PNG output, which a saved
notebook keeps and GitHub or nbviewer show, where a live widget shows nothing.
"""
from __future__ import annotations

import io

from IPython.display import Image
from matplotlib.figure import Figure


def new_figure(width: float = 7.0, height: float = 3.6):
    """A matplotlib Figure not tied to pyplot (no global state, thread-safe)."""
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def picture(png: bytes, width: int = 640):
    """A static picture of a dashboard's figure: an IPython Image of its PNG bytes."""
    return Image(data=bytes(png), format="png", width=width)   # a widget's value may be a memoryview


def html_table(rows: list[dict], columns: list[tuple[str, str]], empty: str = "nothing yet") -> str:
    """A small HTML table: `columns` are (key, heading) pairs; floats get 3 significant digits."""
    if not rows:
        return f"<i>{empty}</i>"

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10_000:
            return f"{v:,}"
        return "" if v is None else str(v)

    head = "".join(f"<th style='padding:2px 8px'>{h}</th>" for _, h in columns)
    def td(i, value):  # the first column names the row: kept on one line
        wrap = "white-space:nowrap;" if i == 0 else ""
        return f"<td style='padding:2px 8px;text-align:right;{wrap}'>{cell(value)}</td>"

    body = "".join("<tr>" + "".join(td(i, r.get(k)) for i, (k, _) in enumerate(columns)) + "</tr>"
                   for r in rows)
    return f"<table class='duat-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
