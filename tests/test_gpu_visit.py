"""tools/gpu-visit, the GPU checks of a visit to a lent GPU machine: its dry run works on a
CPU and writes nothing into the checkout, the plan fits the visit's budget, and without
CUDA the real visit is refused in one line with status 2."""
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "gpu-visit"
STEPS = ("cuda-tests", "bench-gpu", "bench-regime", "bench-decode", "train")


def load_script(monkeypatch):
    """tools/gpu-visit as a module (its name has no .py); main() is not called."""
    loader = importlib.machinery.SourceFileLoader("gpu_visit", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_visit", loader)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_visit", module)  # its dataclasses look it up
    loader.exec_module(module)
    return module


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "DUAT_PYTHON", "DUAT_RESULTS")}
    env.update(extra)
    return env


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def test_plan_fits_the_budget_and_never_reuses_a_folder(tmp_path, monkeypatch):
    gv = load_script(monkeypatch)
    from duat.bench.report import BENCH_FOLDER
    assert gv.BENCH_FOLDER == BENCH_FOLDER
    (tmp_path / "bench" / "cuda-gpu-2026-01-02").mkdir(parents=True)  # an earlier run
    steps = gv.build_steps(sys.executable, False, tmp_path / "bench", tmp_path / "runs",
                           tmp_path / "visit", "2026-01-02", "120000")
    assert [s.key for s in steps] == list(STEPS)
    assert sum(s.limit_s for s in steps) + gv.RESERVE_S <= gv.BUDGET_S <= 8 * 60
    gpu = steps[1]
    assert gpu.outputs == [tmp_path / "bench" / "cuda-gpu-2026-01-02-120000"]
    assert gpu.used == [tmp_path / "bench" / "cuda-gpu-2026-01-02"]
    assert "--preset gpu --variants eager graph compile" in " ".join(gpu.command)
    assert "--preset regime --device cuda" in " ".join(steps[2].command)
    decode = " ".join(steps[3].command)      # the decode-gpu preset: cuda, eager and graph
    assert "--preset decode-gpu" in decode and "--device" not in steps[3].command
    assert steps[3].outputs == [tmp_path / "bench" / "cuda-decode-gpu-2026-01-02"]
    assert steps[4].command[steps[4].command.index("--device") + 1] == "cuda"
    assert "tests/test_paraformer.py" in steps[0].command and "cuda" in steps[0].command


def test_the_distributed_visit_fits_the_budget_and_names_its_commands(tmp_path, monkeypatch):
    gv = load_script(monkeypatch)
    steps = gv.build_dist_steps(sys.executable, False, tmp_path / "branch-parallel",
                                tmp_path / "runs", tmp_path / "visit", "2026-01-02", "120000")
    assert [s.key for s in steps] == list(gv.DIST_KEYS) == list(gv.VISITS["distributed"])
    assert sum(s.limit_s for s in steps) + gv.RESERVE_S <= gv.BUDGET_S
    commands = {s.key: " ".join(s.command) for s in steps}
    assert "tests/test_distributed.py" in commands["dist-tests"]
    assert "--nproc-per-node gpu" in commands["dist-gpu"] and "--device cuda" in commands["dist-gpu"]
    assert "--impl pf-branch-parallel" in commands["dist-gpu"]
    assert "-m duat train" in commands["dist-train"] and "--device cuda" in commands["dist-train"]
    for W in (2, 4, 8):
        assert f"--nproc-per-node {W} " in commands[f"dist-cpu-{W}"]
        assert "--device cpu" in commands[f"dist-cpu-{W}"]


@pytest.mark.slow
def test_dry_run_runs_every_step_on_the_cpu_and_writes_nothing_into_the_checkout(tmp_path):
    watched = [REPO / "duat" / "results", REPO / "runs"]
    before = [tree(f) for f in watched]
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run"], cwd=REPO,
                          env=clean_env(DUAT_RESULTS=str(tmp_path)), capture_output=True,
                          text=True, timeout=240)
    out = done.stdout
    summaries = list(tmp_path.glob("gpu-visit-dry-*/visit/summary.json"))
    assert len(summaries) == 1, out + done.stderr
    summary = json.loads(summaries[0].read_text())
    status = {s["key"]: s["status"] for s in summary["steps"]}
    assert list(status) == list(STEPS)
    # the log and summary may be committed: they name neither the checkout nor the interpreter
    for written in (summaries[0], summaries[0].parent / "gpu-visit.log"):
        text = written.read_text()
        assert str(REPO) not in text and sys.executable not in text, written.name
    assert summary["repo"] == "." and "$ python -m pytest" in written.read_text()
    from duat.bench.cli import PRESETS
    if "regime" in PRESETS:
        assert done.returncode == 0, out[-4000:] + done.stderr
        assert set(status.values()) == {"passed"}
    else:  # the regime preset is not there yet: only its step may fail
        assert done.returncode == 1 and status.pop("bench-regime") == "failed"
        assert set(status.values()) == {"passed"}, out[-4000:]
    # the plan: every step with its command and limit, within 8 minutes
    assert [p["key"] for p in summary["plan"]] == list(STEPS)
    assert sum(p["limit_s"] for p in summary["plan"]) <= 8 * 60
    plan = out[out.index("plan of the visit"):out.index("path checks")]
    for key in STEPS:
        assert f" {key} " in plan
    assert "-m pytest" in plan and "--preset gpu --variants eager graph compile" in plan
    assert "--preset regime --device cuda" in plan and "--device cuda" in plan
    assert "--preset decode-gpu" in plan
    assert summary["finished"] and all(c["problem"] is None for c in summary["checks"])
    # the tiny runs wrote into the temporary folder, nothing came into the checkout
    scratch = summaries[0].parent.parent
    assert (next(scratch.glob("bench/cuda-gpu-*")) / "results.json").is_file()
    assert (next(scratch.glob("bench/cuda-decode-gpu-*")) / "results.json").is_file()
    assert (next(scratch.glob("runs/cuda-train-*")) / "results.json").is_file()
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
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device: "), done.stderr
    assert lines[0].endswith("use --dry-run on a CPU") and done.stdout == ""
    assert tree(REPO / "runs") == before


@pytest.mark.parametrize("mode", [[], ["--dry-run"]])
def test_a_python_without_torch_is_refused_in_one_line_before_any_step(tmp_path, mode):
    fake = tmp_path / "torch"            # a torch that cannot be imported, first on the path
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no torch here (test)')\n")
    before = tree(REPO / "runs")
    done = subprocess.run([sys.executable, str(SCRIPT), *mode], cwd=REPO,
                          env=clean_env(PYTHONPATH=str(tmp_path), DUAT_PYTHON=sys.executable),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: torch is not importable"), done.stderr
    assert "make venv" in lines[0]
    assert tree(REPO / "runs") == before
