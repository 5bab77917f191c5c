"""Project-wide pytest set-up: nbval gets the sanitize file and the current environment's
kernel by default, so `pytest --nbval notebooks/` works from any folder."""
from pathlib import Path

import os

ROOT = Path(__file__).resolve().parent

# Notebooks and tests run the quick profile unless the caller chose another.
os.environ.setdefault("DUAT_PROFILE", "quick")
# No MPLBACKEND here: it would reach nbval's kernels and silence their inline plots.
# (Tests that plot use matplotlib.figure.Figure or Agg explicitly; headless runs default to Agg.)


def pytest_configure(config):
    opt = config.option
    if getattr(opt, "nbval", False) or getattr(opt, "nbval_lax", False):
        if getattr(opt, "nbval_sanitize_with", None) is None:
            opt.nbval_sanitize_with = str(ROOT / "notebooks" / "sanitize.cfg")
        if not getattr(opt, "nbval_current_env", False) and not getattr(opt, "nbval_kernel_name", None):
            opt.nbval_current_env = True
        if getattr(opt, "nbval_cell_timeout", None) in (None, 2000):
            opt.nbval_cell_timeout = 600
