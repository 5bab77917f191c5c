"""duat.theory: the mathematics of docs/method.md sections 1-3 as tested code, one module per idea.

    duat.theory.uat      section 1: G(x) = sum_j alpha_j sigma(w_j . x + theta_j), fitting,
                         target functions, and a measured error-vs-N table
    duat.theory.mvm      section 2: the Matrix-Vector Method, every layer as y = W x + b
    duat.theory.unroll   section 3: serial residual networks unrolled into dynamic-UAT terms
    duat.theory.dynamic  section 3: static vs dynamic UAT at equal parameter count

Submodules are imported by name (`from duat.theory.mvm import mvm`); this package file
imports nothing, so `import duat.theory` stays light. It holds one helper, `format_error`,
which every notebook uses to print the max absolute error of an equivalence check.
"""

__all__ = ["uat", "mvm", "unroll", "dynamic", "format_error"]

FLOOR = 1e-16  # below this (float64 rounding) an error is printed on a fixed 1e-16 scale


def format_error(err: float) -> str:
    """A max absolute error as text, 2 significant digits: 4.8e-07, 3.1e-02, 0.6e-16, 0.0e-16.

    Errors of at least 1e-16 print in ordinary scientific notation. Smaller ones, exact
    zeros included, print on the fixed scale of 1e-16 (0.0e-16 is zero). The same check can
    come out exactly 0 on one CPU and a rounding-level 1e-8 on another; written this way both
    are tiny numbers of the same form, which the notebooks' nbval sanitizer maps to one token.
    """
    err = float(err.detach() if hasattr(err, "detach") else err)  # a plain number or a 0-d tensor
    if err != err or err < 0:
        raise ValueError(f"an error is a non-negative number, got {err!r}")
    if err >= FLOOR:
        return f"{err:.1e}"
    return f"{err / FLOOR:.1f}e-16"

