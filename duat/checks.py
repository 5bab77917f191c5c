"""Argument checks at the public API, in one place and with one message form.

Every function here returns the checked value (so `n = whole("n", n)` reads naturally) or
raises ValueError naming the argument, what was expected and what came. `bool` is refused
where a number is asked for: `True` is an int to Python, never a count to a reader.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable


def whole(name: str, value: Any, minimum: int | None = 1, maximum: int | None = None) -> int:
    """`value` as an int in [minimum, maximum] (None: unbounded on that side); a NumPy
    integer is accepted and returned as a Python int."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):
        return int(value)
    if minimum is not None and maximum is not None:
        want = f"an int in [{minimum}, {maximum}]"
    elif minimum == 1:
        want = "a positive int"
    elif minimum == 0:
        want = "an int >= 0"
    elif minimum is not None:
        want = f"an int >= {minimum}"
    else:
        want = "an int" if maximum is None else f"an int <= {maximum}"
    raise ValueError(f"{name} must be {want}, got {value!r}")


def wholes(name: str, values: Any, minimum: int | None = 1,
           maximum: int | None = None) -> tuple[int, ...]:
    """One int or a non-empty sequence of them, each checked as by `whole`, as a tuple."""
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = (values,)
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {values!r}")
    out = tuple(whole(name, v, minimum, maximum) for v in values)
    if not out:
        raise ValueError(f"{name} must hold at least one value")
    return out


def real(name: str, value: Any, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float within the bounds (open or closed on each side)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return float(value)
    lo = "" if low is None else ("(" if low_open else "[") + f"{low}, "
    hi = "" if high is None else f"{high}" + (")" if high_open else "]")
    want = f"a number in {lo or '(-inf, '}{hi or 'inf)'}"
    raise ValueError(f"{name} must be {want}, got {value!r}")


def one_of(name: str, value: Any, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices` (strings)."""
    choices = tuple(choices)
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def check_layers(c, stages: tuple) -> None:
    """The fields a Para-Former config shares, image or language (duat.paraformer,
    duat.language): dim and heads, depth m and width n, mlp_ratio, the stage, dropout rates."""
    for name in ("dim", "heads"):
        setattr(c, name, whole(name, getattr(c, name)))
    # m and n keep their own wording, "an int >= 1", which duat.convert shares
    for name, letter in (("depth", "m"), ("width", "n")):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} ({letter}) must be an int >= 1, got {value!r}")
    if c.dim % c.heads:
        raise ValueError(f"dim {c.dim} is not divisible by heads {c.heads}: "
                         f"each head needs dim / heads channels")
    if not c.mlp_ratio > 0 or c.hidden_dim < 1:
        raise ValueError(f"mlp_ratio must be > 0 (hidden width >= 1), got {c.mlp_ratio!r}")
    if c.stage not in stages:
        raise ValueError(f"stage must be one of {stages}, got {c.stage!r}")
    for name in ("dropout", "attn_dropout"):
        if not 0.0 <= getattr(c, name) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(c, name)!r}")
