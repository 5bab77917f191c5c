"""The foundation: a light import, the command line, device choice, seeding, storage."""
import json
import os
import subprocess
import sys

import pytest

from duat import cli, runtime, storage

from conftest import run_cli


def test_import_duat_is_light():
    code = ("import sys, duat, duat.runtime, duat.storage, duat.cli; "
            "heavy = [m for m in ('torch', 'torchvision', 'sklearn', 'matplotlib', 'ipywidgets') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_info_prints_the_device():
    out = run_cli("info")
    assert out.returncode == 0, out.stderr
    assert "device " in out.stdout and "torch " in out.stdout
    device_line = next(line for line in out.stdout.splitlines() if line.startswith("device "))
    assert device_line.split()[-1] in ("cuda", "mps", "cpu")


def test_info_json_is_parseable():
    out = run_cli("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["device"] in info["available_devices"]
    assert info["threads"] >= 1


@pytest.mark.parametrize("args", [["no-such-command"], ["info", "--no-such-option"], []])
def test_bad_usage_exits_2_with_usage(args):
    out = run_cli(*args)
    assert out.returncode == 2
    assert "usage: duat" in out.stderr


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in cli.COMMANDS:
        assert name in out.stdout


def test_select_device_auto_and_cpu():
    import torch

    assert runtime.select_device("cpu") == torch.device("cpu")
    assert runtime.select_device().type == runtime.available_devices()[0]


def test_select_device_refuses_absent_or_bogus_devices(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="not available.*available: "):
        runtime.select_device("cuda")
    with pytest.raises(ValueError, match="not a device name"):
        runtime.select_device("gpu-please")


def test_device_env_override(monkeypatch):
    # A GPU is pretended present, so that the automatic choice (cuda) is not the variable's (cpu):
    # ignoring DUAT_DEVICE would fail here on any machine.
    monkeypatch.setattr(runtime, "available_devices", lambda: ["cuda", "cpu"])
    monkeypatch.delenv(runtime.DEVICE_ENV, raising=False)
    assert runtime.select_device().type == "cuda"                  # no variable: the best device
    monkeypatch.setenv(runtime.DEVICE_ENV, "cpu")
    assert runtime.DEVICE_ENV == "DUAT_DEVICE"
    assert runtime.select_device().type == "cpu"
    assert runtime.select_device("auto").type == "cpu"
    assert runtime.select_device("cuda").type == "cuda"            # an explicit choice wins
    monkeypatch.setenv(runtime.DEVICE_ENV, "gpu-please")
    with pytest.raises(ValueError, match="not a device name: 'gpu-please'"):
        runtime.select_device()


def test_seed_everything_repeats_draws():
    import numpy as np
    import torch

    runtime.seed_everything(123)
    a = (torch.randn(5), np.random.rand(3))
    runtime.seed_everything(123)
    b = (torch.randn(5), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all()
    runtime.seed_everything(124)
    assert not torch.equal(a[0], torch.randn(5))


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "7", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="seed"):
        runtime.seed_everything(bad)


def test_profile_switch(monkeypatch):
    monkeypatch.delenv("DUAT_PROFILE", raising=False)
    assert runtime.profile() == "quick"
    monkeypatch.setenv("DUAT_PROFILE", "FULL")
    assert runtime.profile() == "full"
    with pytest.raises(ValueError, match="quick, full"):
        runtime.profile("huge")


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "r.json"
    storage.atomic_write_json(target, {"a": 1})
    storage.atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temp files left


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.txt"
    storage.atomic_write_text(target, "old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        storage.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.txt"]


def test_prepare_output_dir_never_overwrites_silently(tmp_path):
    out = storage.prepare_output_dir(tmp_path / "run")
    assert not out.exists()  # checked, not created: a run that fails early leaves nothing
    out.mkdir()
    (out / "results.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        storage.prepare_output_dir(out)
    assert storage.prepare_output_dir(out, overwrite=True) == out


def test_atomic_torch_save_roundtrip(tmp_path):
    import torch

    path = storage.atomic_torch_save({"w": torch.arange(4)}, tmp_path / "ck.pt")
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(4))
    assert torch.equal(storage.load_tensors(path, "test file")["w"], torch.arange(4))


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    import os
    import stat

    from duat.storage import atomic_write_text

    (tmp_path / "plain.txt").write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt")


def test_make_lab_opens_notebooks_and_runs_as_root_too(tmp_path):
    """`make lab` (dry run): JupyterLab on notebooks/, with --allow-root where the user is root
    (Jupyter refuses root otherwise, and containers often run as root)."""
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".duat-installed").touch()  # newer than pyproject.toml: no install step
    out = subprocess.run(["make", "-n", "lab", f"VENV={venv}"], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    assert "jupyter lab --notebook-dir=notebooks" in out
    assert ("--allow-root" in out) == (os.geteuid() == 0)


def test_open_run_dir_resumes_only_the_same_unfinished_run(tmp_path):
    run, ident = tmp_path / "run", {"plan": [1, 2]}
    out, saved = storage.open_run_dir(run, ident)
    assert (out, saved) == (run, None) and not run.exists()
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        storage.open_run_dir(run, ident, resume=True)
    storage.save_partial(run, ident, done={"a": 1})
    with pytest.raises(FileExistsError, match="--resume"):
        storage.open_run_dir(run, ident)
    with pytest.raises(ValueError, match="other settings"):
        storage.open_run_dir(run, {"plan": [3]}, resume=True)
    assert storage.open_run_dir(run, ident, resume=True)[1]["done"] == {"a": 1}
    assert storage.open_run_dir(run, ident, overwrite=True)[1] is None  # afresh, on purpose
    (run / "results.json").write_text("{}")
    storage.finish_partial(run)
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]
    with pytest.raises(FileExistsError, match="finished run"):
        storage.open_run_dir(run, ident, resume=True)


@pytest.mark.parametrize("text,kind,why", [
    ('{"identity": {"plan": [1]}, "do', storage.UnreadableFileError, "not a readable record"),
    ('{"identity": {"plan": [1]}}', storage.UnreadableFileError, "it lacks done"),
    ('[1, 2]', ValueError, "other settings")])
def test_open_run_dir_refuses_a_damaged_record_in_one_line(tmp_path, text, kind, why):
    run = tmp_path / "run"
    run.mkdir()
    (run / storage.PARTIAL).write_text(text)
    with pytest.raises(kind, match=why) as err:
        storage.open_run_dir(run, {"plan": [1]}, resume=True)
    assert "\n" not in str(err.value) and "--overwrite" in str(err.value)
    assert (run / storage.PARTIAL).read_text() == text          # nothing lost


def _command_raising(monkeypatch, err):
    def raise_it(args):
        raise err
    monkeypatch.setattr(cli, "run", raise_it)  # `duat info` runs cli.run


def test_out_of_memory_is_one_line_and_other_runtime_errors_keep_their_traceback(monkeypatch, capsys):
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError's name, without a GPU
        pass

    _command_raising(monkeypatch, OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "duat info: error: the device ran out of memory" in err
    _command_raising(monkeypatch, RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info"])


def test_the_command_line_draws_with_agg_for_the_call_only(monkeypatch):
    monkeypatch.delenv("MPLBACKEND", raising=False)
    seen = {}
    monkeypatch.setattr(cli, "run", lambda args: seen.setdefault("backend", os.environ.get("MPLBACKEND")) and 0)
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    assert cli.main(["info"]) == 0
    assert seen["backend"] == "Agg" and "MPLBACKEND" not in os.environ


def test_read_results_refuses_what_is_not_a_results_object(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results at .*: run it first"):
        storage.read_results(tmp_path, "run it first")
    (tmp_path / "results.json").write_text("[1, 2]")
    with pytest.raises(storage.UnreadableFileError, match="holds a JSON list, not an object"):
        storage.read_results(tmp_path, "run it first")
    (tmp_path / "results.json").write_text('{"records": []}')
    with pytest.raises(storage.UnreadableFileError, match="no 'summary'"):
        storage.read_results(tmp_path / "results.json", "", keys=("records", "summary"))
    assert storage.read_results(tmp_path, "", keys=("records",)) == {"records": []}


def test_write_csv_columns_lists_floats_and_refusals(tmp_path):
    rows = [{"a": 1, "b": [1, 2], "skip": {"x": 1}}, {"a": 0.1234567, "c": "z"}]
    storage.write_csv(tmp_path / "t.csv", rows, float_format=".3g")
    assert (tmp_path / "t.csv").read_text() == "a,b,c\n1,1;2,\n0.123,,z\n"
    with pytest.raises(TypeError, match="rows as dicts .* got a int"):
        storage.write_csv(tmp_path / "u.csv", [1])
    assert not (tmp_path / "u.csv").exists()
