"""Exercises the kit checks: two to four per notebook, 01 to 09, 13 and 14.

Each exercise cell of a notebook ships as a stub that raises NotImplementedError; the learner
writes the body and runs

    from duat.exercises import check
    check("1.1", uat_forward)

which calls the answer on cases the notebook never shows and compares it with the kit's own
implementation: "correct", or what is wrong with a hint (the shape, the first entry that
differs, a likely cause). Worked solutions: notebooks/solutions/, one notebook per chapter.
`reveal()` folds the answer to a "predict, then check" until the learner opens it.
"""
from duat.exercises import ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch13, ch14  # noqa: F401  (they register)
from duat.exercises.core import EXERCISES, Answer, Verdict, check, reveal

__all__ = ["EXERCISES", "Answer", "Verdict", "check", "listing", "reveal"]


def listing(notebook: str | int | None = None) -> str:
    """The exercises as text lines 'id  title: expects', of one notebook or all."""
    chapters = sorted({ex.notebook for ex in EXERCISES.values()})
    want = None if notebook is None else str(notebook).zfill(2)
    if want is not None and want not in chapters:
        raise ValueError(f"notebook {notebook!r} has no exercises; notebooks "
                         f"{_spans(chapters)} do")
    rows = [ex for ex in EXERCISES.values() if want in (None, ex.notebook)]
    rows.sort(key=lambda ex: tuple(int(p) for p in ex.id.split(".")))
    return "\n".join(f"{ex.id:<5} {ex.title}: {ex.expects}" for ex in rows)


def _spans(chapters: list[str]) -> str:
    """['01', '02', '03', '13', '14'] -> '01 to 03, 13 and 14': runs of three or more
    consecutive notebooks as 'a to b'."""
    runs: list[list[str]] = []
    for c in chapters:
        if runs and int(c) == int(runs[-1][-1]) + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    parts = [p for r in runs for p in (r if len(r) < 3 else [f"{r[0]} to {r[-1]}"])]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
