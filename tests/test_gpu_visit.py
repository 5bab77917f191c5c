"""tools/gpu-visit, the GPU checks of a visit to a lent GPU machine: both visits hold every
step within the device tool's limit, a step is killed at its limit with everything it
started, a skipped CUDA test fails its step, the dry run passes on a CPU and writes nothing
into the checkout, and bad input is refused in one line with status 2."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu-visit"
LATENCY = ["cuda-tests", "bench-gpu", "bench-regime", "bench-decode", "train"]
DISTRIBUTED = ["dist-tests", "dist-gpu", "dist-train", "dist-cpu-2", "dist-cpu-4", "dist-cpu-8"]


@pytest.fixture
def gv():
    """tools/gpu-visit as a module (its name has no .py); main() is not called."""
    loader = importlib.machinery.SourceFileLoader("gpu_visit", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_visit", loader))
    loader.exec_module(module)
    return module


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DUAT_PYTHON", "DUAT_RESULTS")}
    return {**env, **extra}


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def visit(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=clean_env(**env),
                          capture_output=True, text=True, timeout=300)


def test_the_script_is_at_most_200_lines():
    assert len(SCRIPT.read_text().splitlines()) <= 200


def test_both_visits_hold_every_step_on_cuda_and_the_dry_run_on_the_cpu(gv, tmp_path):
    assert gv.VISITS == {"latency": LATENCY, "distributed": DISTRIBUTED}
    paths = dict(py="python", bench=tmp_path / "bench", branches=tmp_path / "branch-parallel",
                 runs=tmp_path / "runs", stamp="2026-01-02-030405")
    for visit_name, names in gv.VISITS.items():  # the device tool's 540 s, less start and packing
        assert sum(limit for v, _, limit, _ in gv.STEPS if v == visit_name) <= 450, visit_name
    for _, name, _, template in gv.STEPS:
        real = " ".join(gv.command(template, gv.REAL, paths))
        toy = " ".join(gv.command(template, gv.TOY, paths))
        assert "--device cuda" not in toy and "--nproc-per-node gpu" not in toy, name
        if "-m pytest" in real:  # run, skips reported (-rs); in the dry run collected only
            assert " -rs" in real and "--collect-only" in toy and "-rs" not in toy, name
        elif name.startswith("dist-cpu-"):
            assert f"--nproc-per-node {name[-1]} " in real and "--device cpu" in real, name
        else:
            assert "--device cuda" in real, name
    assert "tests/test_paraformer.py" in gv.command(gv.STEPS[0][3], gv.REAL, paths)  # marks cuda


def test_a_step_past_its_limit_is_killed_with_everything_it_started(gv, tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    child = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(60)']); open(sys.argv[1], 'w').write(str(p.pid)); "
             "print('started', flush=True); time.sleep(60)")
    lines = []
    command = [sys.executable, "-c", child, str(pid_file)]
    record = gv.run_step("sleeper", 2, command, dict(os.environ), lines.append)
    assert record["status"] == "timed out: killed after 2 s" and record["wall_s"] < 20
    assert "started" in lines
    status = Path(f"/proc/{pid_file.read_text()}/status")
    deadline = time.monotonic() + 10   # SIGKILL is delivered asynchronously: give it a moment
    while _alive(status) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(status), "the grandchild outlived its step"


def _alive(status: Path) -> bool:
    try:
        return "zombie" not in status.read_text()
    except OSError:   # gone
        return False


def test_a_skipped_test_fails_its_step(gv):
    say = ["print('SKIPPED [1] tests/test_x.py:3: needs a CUDA device')", "print('1 passed')"]
    record = gv.run_step("tests", 30, [sys.executable, "-c", "; ".join(say)], dict(os.environ),
                         lambda line: None)
    assert record["status"] == "failed: 1 test(s) skipped"


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu_and_writes_nothing_into_the_checkout(tmp_path):
    watched = [REPO / "duat" / "results", REPO / "runs"]
    before = [tree(f) for f in watched]
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    done = visit("--dry-run", OUT=str(out), TMPDIR=str(scratch))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    summary = json.loads((out / "gpu-visit-summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["steps"]] == [(n, "passed") for n in LATENCY]
    log = (out / "gpu-visit.log").read_text()
    for text in (log, json.dumps(summary)):  # they may be committed: no path of this machine
        assert str(REPO) not in text and sys.executable not in text
    assert "$ python -m pytest" in log
    with tarfile.open(out / "gpu-visit-results.tar.gz") as tar:
        names = tar.getnames()
    for run in ("cuda-gpu-", "cuda-regime-", "cuda-decode-gpu-", "cuda-train-pf-1-12-digits-"):
        assert any(n.startswith(run) and n.endswith("/results.json") for n in names), run
    assert not [n for n in names if n.endswith(".pt")]
    assert not list(scratch.glob("gpu-visit-dry-*")), "the temporary folder was left behind"
    for folder, old in zip(watched, before):
        new = {p for p in tree(folder) - old if "-quick-" not in p}  # others' local quick runs
        assert not new, f"the dry run wrote into {folder}: {sorted(new)}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_visit_without_cuda_exits_2_with_one_error_line():
    # started as an executable: its shebang, then the re-execution under $DUAT_PYTHON
    assert os.access(SCRIPT, os.X_OK) and SCRIPT.read_text().startswith("#!")
    before = tree(REPO / "runs")
    done = subprocess.run([str(SCRIPT)], cwd=REPO, env=clean_env(DUAT_PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device: "), done.stderr
    assert lines[0].endswith("use --dry-run on a CPU")
    assert tree(REPO / "runs") == before


@pytest.mark.parametrize("args", [["--steps", "bench-gpu", "no-such-step"],
                                  ["--visit", "distributed", "--steps", "train"]])
def test_steps_outside_the_visit_are_refused_in_one_line(args):
    done = visit("--dry-run", *args)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --steps "), done.stderr
    assert lines[0].endswith("dist-cpu-8" if "distributed" in args else "bench-decode, train")


@pytest.mark.parametrize("mode", [[], ["--dry-run"]])
def test_a_python_without_torch_is_refused_in_one_line_before_any_step(tmp_path, mode):
    fake = tmp_path / "torch"            # a torch that cannot be imported, first on the path
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no torch here (test)')\n")
    before = tree(REPO / "runs")
    done = visit(*mode, PYTHONPATH=str(tmp_path), DUAT_PYTHON=sys.executable)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torch is not importable"), done.stderr
    assert "make venv" in lines[0]
    assert tree(REPO / "runs") == before
