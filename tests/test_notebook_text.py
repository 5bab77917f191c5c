"""What a reader sees in the stored notebooks: no machine's paths, no project-process talk.

Every cell's source and every stored text output of every notebook is scanned. A path such
as the checkout folder of the machine that saved a notebook means nothing to a reader (and
tells them where someone else's files were); words like "the issue" or "the review" point to
a process the reader has never seen.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").rglob("*.ipynb"))
NOTEBOOKS = [p for p in NOTEBOOKS if ".ipynb_checkpoints" not in p.parts]

MACHINE_PATHS = re.compile(r"(/work/|/home/\w|/root/|/Users/\w|/opt/\w|site-packages|\.pyenv|"
                           r"[A-Za-z]:\\\\?Users)")
PROCESS_WORDS = re.compile(r"\b(issues?|tickets?|reviewers?|on review|the review|this session|"
                           r"CEO|backlog|sprint)\b", re.IGNORECASE)


def texts(path: Path):
    """(where, text) for every cell source and every text output of a notebook."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        yield f"cell {i} source", "".join(cell["source"])
        for out in cell.get("outputs", []):
            if "text" in out:
                yield f"cell {i} output", "".join(out["text"])
            for kind, data in out.get("data", {}).items():
                if kind.startswith("text/"):
                    yield f"cell {i} output ({kind})", "".join(data)
            if "traceback" in out:
                yield f"cell {i} traceback", "\n".join(out["traceback"])


def test_there_are_notebooks_to_scan():
    assert len(NOTEBOOKS) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_machine_paths_or_process_language(path):
    found = []
    for where, text in texts(path):
        for pattern in (MACHINE_PATHS, PROCESS_WORDS):
            for m in pattern.finditer(text):
                context = text[max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
                found.append(f"{where}: {m.group(0)!r} in ...{context}...")
    assert not found, f"{path.name}:\n" + "\n".join(found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_unchecked_output_says_why(path):
    """A cell whose output nbval ignores says why on its next line, as a comment."""
    nb = json.loads(path.read_text())
    silent = []
    for i, cell in enumerate(nb["cells"]):
        lines = "".join(cell["source"]).splitlines()
        if cell["cell_type"] == "code" and lines and lines[0].strip() == "# NBVAL_IGNORE_OUTPUT":
            if len(lines) < 2 or not lines[1].lstrip().startswith("# ("):
                silent.append(i)
    assert not silent, f"{path.name}: cells {silent} ignore their output without a '# (reason)' line"
