"""The checkers of duat.exercises can fail: each says "correct" to its worked solution (the
code of notebooks/solutions/, run here cell by cell) and "wrong", with a hint, to at least
two wrong answers (tests/wrong_answers/). Bad input gets a verdict, never a traceback; every
exercise ships as a stub in its notebook, stored as "not attempted"."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
import torch

from duat.exercises import EXERCISES, check, listing
from duat.exercises import core

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
CHAPTERS = [f"{i:02d}" for i in range(1, 10)] + ["13", "14"]
IDS = sorted(EXERCISES, key=lambda i: tuple(int(p) for p in i.split(".")))


def _wrong(id: str) -> list:
    path = Path(__file__).parent / "wrong_answers" / f"ch{EXERCISES[id].notebook}.py"
    spec = importlib.util.spec_from_file_location(f"wrong_answers_ch{EXERCISES[id].notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WRONG.get(id, [])


def _one(pattern: str) -> Path:
    (path,) = sorted(p for p in pattern[0].glob(pattern[1]))
    return path


def _run_solutions(chapter: str, monkeypatch) -> list:
    """Execute the code cells of the chapter's solution notebook; the verdicts it got."""
    path = _one((SOLUTIONS, f"{chapter}_*.ipynb"))
    nb = nbformat.read(path, as_version=4)
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    start = len(core.CHECKED)
    namespace: dict = {"__name__": "__solutions__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        # a magic (the Colab install line) becomes `pass`, keeping its block valid Python
        source = "\n".join(line[:len(line) - len(line.lstrip())] + "pass"
                           if line.lstrip().startswith(("%", "!")) else line
                           for line in cell.source.splitlines())
        exec(compile(source, f"{path.name}", "exec"), namespace)
    return core.CHECKED[start:]


def test_every_notebook_01_to_09_13_and_14_has_two_to_four_exercises():
    counts = {c: sum(ex.notebook == c for ex in EXERCISES.values()) for c in CHAPTERS}
    assert all(2 <= n <= 4 for n in counts.values()), counts
    assert listing("01").splitlines()[0].startswith("1.1 ") and listing(1) == listing("01")
    for bad in ("x", 99, 10):
        with pytest.raises(ValueError, match="has no exercises; notebooks 01 to 09, 13 and 14 do"):
            listing(bad)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_worked_solutions_are_correct(chapter, monkeypatch):
    verdicts = _run_solutions(chapter, monkeypatch)
    wanted = {id for id in IDS if EXERCISES[id].notebook == chapter}
    assert {v.exercise for v in verdicts} == wanted
    assert [str(v) for v in verdicts if not v.correct] == []


@pytest.mark.parametrize("id", IDS)
def test_wrong_answers_are_called_wrong_with_a_hint(id):
    answers = _wrong(id)
    assert len(answers) >= 2, f"exercise {id} needs at least two wrong answers"
    for answer in answers:
        verdict = check(id, answer)
        assert verdict.status == "wrong" and verdict.hint, str(verdict)


@pytest.mark.parametrize("id", IDS)
def test_the_stub_is_not_attempted_and_bad_input_gets_a_clear_verdict(id):
    def stub(*args, **kwargs):
        raise NotImplementedError

    def broken(*args, **kwargs):
        raise ValueError("my bug")

    assert check(id, stub).status == "not attempted"
    verdict = check(id, broken)
    assert verdict.status == "wrong" and "raised ValueError: my bug" in verdict.message
    for bad in (42, "text", [1, 2]):
        verdict = check(id, bad)
        assert verdict.status == "bad input" and EXERCISES[id].expects in verdict.message, str(verdict)
    verdict = check(id, lambda *args, **kwargs: "not a number")
    assert verdict.status in ("bad input", "wrong") and "Traceback" not in str(verdict)


@pytest.mark.parametrize("id", IDS)
def test_a_check_leaves_the_global_random_state_alone(id):
    """A notebook's later cells must not depend on whether, or what, the learner answered."""
    before = torch.random.get_rng_state()
    check(id, lambda *args, **kwargs: None)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_an_unknown_exercise_names_the_known_ones():
    verdict = check("99.1", print)
    assert verdict.status == "bad input" and "1.1" in verdict.message


@pytest.mark.parametrize("id", IDS)
def test_every_exercise_ships_as_a_stub_stored_not_attempted(id):
    path = _one((NOTEBOOKS, f"{EXERCISES[id].notebook}_*.ipynb"))
    nb = json.loads(path.read_text())
    call = f'check("{id}",'
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and call in "".join(c["source"])]
    assert len(cells) == 1, f"{path.name}: one cell calls {call}"
    (cell,) = cells
    assert "raise NotImplementedError" in "".join(cell["source"])
    shown = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                    for o in cell.get("outputs", []))
    assert f"exercise {id} " in shown and "not attempted" in shown, shown


def test_reveal_folds_what_the_block_prints(capsys):
    shown = []
    from IPython import display as ipy_display
    original = ipy_display.display
    ipy_display.display = shown.append
    try:
        with core.reveal("Show the count"):
            print("42 < 7")
    finally:
        ipy_display.display = original
    assert capsys.readouterr().out == ""
    (answer,) = shown
    assert answer.text == "42 < 7"
    assert answer._repr_html_() == ("<details><summary>Show the count</summary>"
                                    "<pre>42 &lt; 7</pre></details>")
    assert "42" not in repr(answer)
