"""Where results are: the ones committed with the kit, and where new runs are written.

The committed results (experiments, fine-tuning, benchmark runs) ship inside the package,
as package data in duat/results/ (a data folder, no __init__.py), and are found through
importlib.resources: a checkout and an installed kit (pip, Colab) read the same files.

    committed("data-scale")    the folder results named "data-scale" are read from
    output_dir("data-scale")   the folder a new run named "data-scale" is written to by default

Reading and writing differ only for an installed kit. In a source checkout (an editable
install) new runs go into duat/results/ itself, so `duat reproduce NAME --quick --overwrite`
regenerates the committed results in place (refused without --overwrite, as any earlier
run). An installed kit writes new runs into ./results/NAME of the working directory, never
into site-packages.

$DUAT_RESULTS (your own results folder) replaces both: results are read from it and new
runs are written into it. It must be an existing folder; one that is not is refused with
a ResultsFolderError, one line that names it and the committed default.

This module imports nothing heavy: `import duat` and `duat --help` stay fast.
"""
from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path

RESULTS_ENV = "DUAT_RESULTS"
PACKAGE_FOLDER = "results"   # duat/results/: the committed results, shipped as package data
LOCAL_FOLDER = "results"     # ./results/: an installed kit's new runs, in the working directory


class ResultsFolderError(FileNotFoundError):
    """$DUAT_RESULTS names no existing folder (duat.cli reports it as one `error:` line)."""


def _package_dir() -> Path:
    root = files("duat")
    if not isinstance(root, Path):  # e.g. imported from a zip archive: no folder to read
        raise ResultsFolderError(f"duat is imported from {root}, not from a folder; the committed "
                                 f"results need an unpacked install (pip install duat)")
    return root


def packaged() -> Path:
    """duat/results/: the results that ship with the kit, as a real folder."""
    return _package_dir() / PACKAGE_FOLDER


def override() -> Path | None:
    """The folder $DUAT_RESULTS names, or None when it is unset or empty.
    ResultsFolderError when it names no existing folder (nothing is created)."""
    value = os.environ.get(RESULTS_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise ResultsFolderError(f"{RESULTS_ENV}={value}: no such folder; unset it to read the "
                                 f"results that ship with the kit ({packaged()})")
    return path


def in_checkout() -> bool:
    """Whether duat is imported from a source checkout (the duat project's pyproject.toml
    next to the package: an editable install or the repository on sys.path)."""
    pyproject = _package_dir().parent / "pyproject.toml"
    return pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"duat"\s*$',
                                             pyproject.read_text(encoding="utf-8")) is not None


def committed(name: str = "") -> Path:
    """The folder results named `name` are read from: $DUAT_RESULTS/name if set, else the
    committed copy that ships with the kit, duat/results/name. It may be absent (e.g. a
    profile never run); the caller says what is missing and how to make it."""
    return (override() or packaged()) / name


def output_dir(name: str = "") -> Path:
    """The folder a new run named `name` is written to by default: $DUAT_RESULTS/name if
    set; else duat/results/name in a source checkout (the committed results themselves);
    else ./results/name of the working directory (an installed kit). Nothing is created."""
    root = override()
    if root is None:
        root = packaged() if in_checkout() else Path.cwd() / LOCAL_FOLDER
    return root / name
