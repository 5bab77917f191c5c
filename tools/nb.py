"""Developer tool: build a notebook from a compact Python description, then execute it in
place so the stored outputs are those of the quick profile.

    .venv/bin/python tools/nb.py execute notebooks/04_paraformer_architecture.ipynb

Notebook sources are the .ipynb files themselves; this helper only (re-)executes them with
the right settings (quick profile, repository root on the path, a fixed kernel name).
`new(cells)` makes a notebook object from ("md"|"code", source) pairs for authors.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def new(cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        source = source.strip("\n")
        nb.cells.append(nbformat.v4.new_markdown_cell(source) if kind == "md"
                        else nbformat.v4.new_code_cell(source))
    return nb


def execute(path: str | Path, timeout: int = 600) -> None:
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    os.environ["DUAT_PROFILE"] = "quick"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    for cell in nb.cells:  # stable, readable files: no per-run ids in metadata
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] != "execute":
        raise SystemExit("usage: tools/nb.py execute NOTEBOOK [NOTEBOOK ...]")
    for p in sys.argv[2:]:
        execute(p)
        print("executed", p)
