"""The machinery every exercise shares: the verdict, the registry, and the checks that
compare a learner's answer with the kit's own implementation.

A checker is a function `checker(answer) -> str` registered with `@exercise(...)`. It calls
the answer on cases the learner has not seen (`call`, `cases`), compares with the kit
(`compare`, `same_number`), and either returns what was checked ("5 unseen inputs") or
raises `Wrong(message, hint)`. Every answer is a function; `check(id, answer)` runs it and turns every outcome into a
`Verdict`: correct, wrong (with a hint), not attempted (the stub still raises
NotImplementedError), or bad input (not the kind of answer expected). It never lets a
traceback from the kit's internals reach the learner.
"""
from __future__ import annotations

import html
import io
import math
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

SEED = 20_261_202  # the unseen cases: not a seed any notebook uses


class Wrong(Exception):
    """The answer ran but computes something else; `hint` says what to look at."""

    def __init__(self, message: str, hint: str):
        super().__init__(message)
        self.message, self.hint = message, hint


class BadAnswer(Exception):
    """The answer is not the kind of thing the exercise expects (type, signature, shape)."""


class LearnerRaised(Exception):
    """The learner's function raised; carries the original exception and the case."""

    def __init__(self, error: BaseException, case: str):
        super().__init__(str(error))
        self.error, self.case = error, case


@dataclass(frozen=True)
class Exercise:
    id: str          # "1.1": notebook 01, exercise 1
    title: str       # "the UAT forward pass"
    expects: str     # what the answer is: "a function uat_forward(x, w, theta, alpha) -> (B,)"
    checker: Callable[[Any], str]

    @property
    def notebook(self) -> str:  # "01"
        return f"{int(self.id.split('.')[0]):02d}"


EXERCISES: dict[str, Exercise] = {}
CHECKED: list["Verdict"] = []  # every verdict given in this process, oldest first


def exercise(id: str, title: str, expects: str):
    """Register the decorated function as the checker of exercise `id`."""
    def register(checker: Callable[[Any], str]) -> Callable[[Any], str]:
        if id in EXERCISES:
            raise ValueError(f"exercise {id} is registered twice")
        EXERCISES[id] = Exercise(id, title, expects, checker)
        return checker
    return register


@dataclass(frozen=True)
class Verdict:
    exercise: str   # its id
    title: str
    status: str     # "correct" | "wrong" | "not attempted" | "bad input"
    message: str
    hint: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def __bool__(self) -> bool:
        return self.correct

    def __str__(self) -> str:
        mark = {"correct": "✔", "wrong": "✘", "not attempted": "…", "bad input": "✘"}[self.status]
        text = f"{mark} exercise {self.exercise} ({self.title}): {self.status}. {self.message}"
        return text + (f"\n  hint: {self.hint}" if self.hint else "")

    __repr__ = __str__


def check(id: str, answer: Any) -> Verdict:
    """Check `answer` to exercise `id` against the kit: the verdict (a notebook cell shows it)."""
    ex = EXERCISES.get(str(id))
    if ex is None:
        known = ", ".join(sorted(EXERCISES, key=_order)) or "none"
        verdict = Verdict(str(id), "unknown exercise", "bad input",
                          f"There is no exercise {id!r}; the exercises are {known}.")
    else:
        verdict = _run(ex, answer)
    CHECKED.append(verdict)
    return verdict


def _order(id: str) -> tuple[int, ...]:
    return tuple(int(p) for p in id.split("."))


def _run(ex: Exercise, answer: Any) -> Verdict:
    def verdict(status: str, message: str, hint: str = "") -> Verdict:
        return Verdict(ex.id, ex.title, status, message, hint)

    if answer is None or answer is Ellipsis:
        return verdict("not attempted", f"Expected {ex.expects}; got {answer!r}.")
    if not callable(answer):  # every answer is a function the learner writes
        return verdict("bad input", f"Got {type(answer).__name__} {_short(answer)}, not a function. "
                       f"Expected {ex.expects}.")
    try:
        # on a copy of torch's global random state: building the kit's reference modules
        # draws from it, and a notebook's later cells must not depend on the answer
        with torch.random.fork_rng(devices=[]):
            checked = ex.checker(answer)
    except LearnerRaised as e:
        if isinstance(e.error, NotImplementedError):
            return verdict("not attempted", f"{_name(answer)} still raises NotImplementedError: "
                           "replace the `raise` with your code and run the cell again.")
        return verdict("wrong", f"{_name(answer)} raised {type(e.error).__name__}: {e.error} "
                       f"(on {e.case}).", "run it on that input yourself and read the error; "
                       f"expected {ex.expects}.")
    except Wrong as e:
        return verdict("wrong", e.message, e.hint)
    except BadAnswer as e:
        return verdict("bad input", f"{e} Expected {ex.expects}.")
    except Exception as e:  # what the answer returned broke the comparison itself
        return verdict("bad input", f"The answer could not be compared ({type(e).__name__}: {e}). "
                       f"Expected {ex.expects}.")
    return verdict("correct", f"It agrees with the kit on {checked}.")


def _name(answer: Any) -> str:
    return f"`{getattr(answer, '__name__', 'your answer')}`"


# ----------------------------------------------------------------------------- for checkers

def cases(n: int = 5, seed: int = SEED) -> Iterator[tuple[int, torch.Generator]]:
    """(case number, generator) for `n` reproducible cases the notebooks never show."""
    for i in range(n):
        yield i + 1, torch.Generator().manual_seed(seed + i)


def pick(options: Sequence, g: torch.Generator):
    """One of `options`, drawn with the case's generator."""
    return options[int(torch.randint(len(options), (1,), generator=g))]


def call(fn: Callable, *args, case: str, **kwargs) -> Any:
    """fn(*args), with tensors cloned (an answer that writes into its inputs cannot change
    the kit's reference) and any exception turned into LearnerRaised."""
    args = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    kwargs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    try:
        with torch.no_grad():
            return fn(*args, **kwargs)
    except Exception as e:  # the learner's code: report it, never re-raise it
        raise LearnerRaised(e, case) from None


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """The learner's result as a float64 tensor, or BadAnswer naming what it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise BadAnswer(f"{what} is {type(value).__name__} {_short(value)}, not a tensor.") from None


def compare(got: Any, expected: torch.Tensor, *, case: str, what: str = "the result",
            atol: float = 1e-6, rtol: float = 1e-5,
            mistakes: Sequence[tuple[torch.Tensor | Callable[[], torch.Tensor], str]] = (),
            hint: str = "") -> None:
    """Raise Wrong unless `got` equals `expected` to rounding. `mistakes` are (what a
    common mistake computes, its hint) pairs: a match names the likely cause."""
    got_t = as_tensor(got, what)
    exp = expected.detach().to(torch.float64)
    if got_t.shape != exp.shape:
        if got_t.numel() == exp.numel():
            cause = "same number of entries in another shape: a transpose, a missing squeeze or reshape?"
        else:
            cause = "check which axes you sum over and which you keep (the shape comments help)."
        raise Wrong(f"{what} has shape {tuple(got_t.shape)} on {case}; expected {tuple(exp.shape)}.",
                    cause)
    if torch.allclose(got_t, exp, atol=atol, rtol=rtol, equal_nan=True):
        return
    bad = ~torch.isclose(got_t, exp, atol=atol, rtol=rtol, equal_nan=True)
    where = tuple(int(i) for i in bad.nonzero()[0]) if exp.dim() else ()
    at = f" at index {list(where)}" if where else ""
    message = (f"{what} differs on {case}: {int(bad.sum())} of {exp.numel()} entries are off; "
               f"the first{at} is {_num(got_t[where])}, expected {_num(exp[where])}.")
    for wrong, why in mistakes:
        wrong = wrong() if callable(wrong) else wrong
        wrong = torch.as_tensor(wrong).detach().to(torch.float64)
        if wrong.shape == exp.shape and torch.allclose(got_t, wrong, atol=atol, rtol=rtol):
            raise Wrong(message, f"likely cause: {why}")
    raise Wrong(message, hint or "compare your code with the equation term by term, on the "
                "small example the notebook shows.")


def as_number(value: Any, what: str) -> float:
    """A learner's number (int, float, numpy scalar, one-entry tensor) as a float, or
    BadAnswer naming what it is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, np.number):  # np.float64, np.int64 are numbers too
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadAnswer(f"{what} is {type(value).__name__} {_short(value)}, not a number.")
    return float(value)


def as_numbers(value: Any, k: int, what: str) -> tuple[float, ...]:
    """A learner's tuple, list or 1-D array of k numbers, as floats, or BadAnswer."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        value = list(value)
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (tuple, list)) or len(value) != k:
        raise BadAnswer(f"{what} is {type(value).__name__} {_short(value)}, not a tuple of {k} numbers.")
    return tuple(as_number(v, f"entry {j} of {what}") for j, v in enumerate(value))


def same_number(got: Any, expected: float, *, case: str, what: str = "the result",
                rel: float = 1e-9, mistakes: Sequence[tuple[float, str]] = (), hint: str = "") -> None:
    """Raise Wrong unless the number `got` equals `expected` (relative tolerance `rel`)."""
    got = as_number(got, what)
    if math.isclose(got, expected, rel_tol=rel, abs_tol=rel):
        return
    message = f"{what} is {_num(got)} on {case}; expected {_num(expected)}."
    if not math.isfinite(got):
        raise Wrong(message, "an overflow or a division by zero? Check the case above by hand.")
    for wrong, why in mistakes:
        if math.isclose(got, wrong, rel_tol=rel, abs_tol=rel):
            raise Wrong(message, f"likely cause: {why}")
    if expected and got != 0 and math.isclose(got / expected, round(got / expected), rel_tol=1e-9):
        raise Wrong(message, f"off by a factor of exactly {round(got / expected)}: a term counted "
                    "too often, or a multiply-add counted as one FLOP instead of two?")
    raise Wrong(message, hint or "work the small case by hand and compare term by term.")


def _num(x: Any) -> str:
    x = float(x)
    return f"{x:.6g}" if math.isfinite(x) else str(x)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ----------------------------------------------------------------------------- predict, then check

class Answer:
    """A revealed answer that stays folded: a collapsed <details> block in JupyterLab,
    Colab and on GitHub, and one line of plain text elsewhere."""

    def __init__(self, text: str, summary: str = "Show the answer"):
        self.text, self.summary = text, summary

    def _repr_html_(self) -> str:
        return (f"<details><summary>{html.escape(self.summary)}</summary>"
                f"<pre>{html.escape(self.text)}</pre></details>")

    def __repr__(self) -> str:
        return f"(answer folded: open '{self.summary}' in JupyterLab or Colab)"


@contextmanager
def reveal(summary: str = "Show the answer") -> Iterator[None]:
    """Run the block, holding back what it prints; then show it folded (see `Answer`).

        with reveal():
            print(measured)      # the answer to the 'predict' above, folded until opened
    """
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        yield
    answer = Answer(buffer.getvalue().rstrip("\n"), summary)
    try:
        from IPython.display import display
    except ImportError:  # pragma: no cover - outside IPython: plain text
        print(answer.text)
    else:
        display(answer)
