"""duat.locations: the committed results are read from the package (from any working
folder), new runs are written into the committed folder only in a source checkout and into
./results otherwise, and a $DUAT_RESULTS that names no folder is one clear error line, from
the API and from `duat reproduce`."""
import json
from dataclasses import replace
from pathlib import Path

import pytest

from duat import experiments as ex
from duat.experiments import sweeps
from duat import locations
from duat.cli import main

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
COMMITTED = ["accuracy-vs-width", "accuracy-vs-depth", "data-scale", "data-diversity", "finetune",
             "bench/cpu-2026-11-28"]


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(locations.RESULTS_ENV, raising=False)


def test_the_committed_results_are_package_data_found_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = locations.packaged()
    assert root == REPO / "duat" / "results" and not (root / "__init__.py").exists()
    for name in COMMITTED:
        assert locations.committed(name) == root / name
        assert (root / name / "results.json").is_file(), name
    assert ex.load_results("data-scale")["experiment"] == "data-scale"
    assert not (tmp_path / "results").exists()                     # reading creates nothing


def test_a_checkout_writes_new_runs_into_the_committed_folder_an_install_into_cwd(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert locations.in_checkout()                                   # the editable install
    assert ex.default_output_dir("data-scale", "quick") == locations.packaged() / "data-scale"
    assert ex.default_output_dir("data-scale", "full") == locations.packaged() / "data-scale-full"
    monkeypatch.setattr(locations, "in_checkout", lambda: False)     # as from a wheel
    assert ex.default_output_dir("data-scale", "quick") == tmp_path / "results" / "data-scale"
    assert locations.committed("data-scale") == locations.packaged() / "data-scale"  # reading: unchanged
    from duat.experiments import finetune

    assert finetune.default_output_dir("full") == tmp_path / "results" / "finetune-full"
    assert ex.load_results("finetune")["experiment"] == "finetune"


def test_a_checkout_is_told_apart_by_the_projects_pyproject(tmp_path, monkeypatch):
    package = tmp_path / "site" / "duat"
    package.mkdir(parents=True)
    monkeypatch.setattr(locations, "_package_dir", lambda: package)
    assert not locations.in_checkout()
    (package.parent / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert not locations.in_checkout()
    (package.parent / "pyproject.toml").write_text('[project]\nname = "duat"\n')
    assert locations.in_checkout()


def test_the_override_is_read_and_written(tmp_path, monkeypatch):
    monkeypatch.setenv(locations.RESULTS_ENV, str(tmp_path))
    assert locations.committed("data-scale") == tmp_path / "data-scale"
    assert ex.default_output_dir("data-scale", "quick") == tmp_path / "data-scale"
    with pytest.raises(FileNotFoundError, match="duat reproduce data-scale --quick"):
        ex.load_results("data-scale")                                # not the packaged ones
    monkeypatch.setenv(locations.RESULTS_ENV, "")                    # empty: as unset
    assert locations.committed("data-scale") == locations.packaged() / "data-scale"


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_an_override_naming_no_folder_is_one_clear_error(tmp_path, monkeypatch, kind):
    bad = tmp_path / "nowhere"
    if kind == "file":
        bad.write_text("not a folder")
    monkeypatch.setenv(locations.RESULTS_ENV, str(bad))
    for call in (lambda: locations.committed("data-scale"), lambda: locations.output_dir("x"),
                 lambda: ex.load_results("data-scale")):
        with pytest.raises(locations.ResultsFolderError) as err:
            call()
        text = str(err.value)
        assert text == (f"DUAT_RESULTS={bad}: no such folder; unset it to read the results that "
                        f"ship with the kit ({locations.packaged()})")
    assert isinstance(err.value, FileNotFoundError)   # duat.cli's usage errors: status 2
    assert not bad.is_dir()                           # nothing created


def test_reproduce_with_a_bad_override_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(locations.RESULTS_ENV, str(tmp_path / "x" / "y"))
    for argv in (["reproduce", "data-scale", "--quick"], ["reproduce", "finetune", "--quick"],
                 ["reproduce", "data-scale", "--quick", "--out", str(tmp_path / "o"),
                  "--compare", "data-scale"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"duat reproduce: error: DUAT_RESULTS={tmp_path / 'x' / 'y'}: no such folder; "
                       f"unset it to read the results that ship with the kit ({locations.packaged()})"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "o").exists()


def test_reproduce_with_a_bad_override_as_a_process(tmp_path):
    env = {**__import__("os").environ, locations.RESULTS_ENV: str(tmp_path / "absent")}
    proc = run_cli("reproduce", "data-diversity", "--quick", timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"duat reproduce: error: DUAT_RESULTS={tmp_path / 'absent'}: no such folder; unset it to "
        f"read the results that ship with the kit ({locations.packaged()})"]


def test_regenerating_the_committed_results_in_a_checkout_needs_overwrite(monkeypatch, capsys):
    folder = locations.packaged() / "accuracy-vs-width"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    import duat.training.engine as engine

    def no_training(*a, **k):
        raise AssertionError("trained although the run was refused")

    monkeypatch.setattr(engine, "fit", no_training)
    assert main(["reproduce", "accuracy-vs-width", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_installed_kit_writes_a_new_run_into_cwd_and_still_reads_the_committed_one(tmp_path,
                                                                                      monkeypatch):
    name = "accuracy-vs-width"
    tiny = sweeps.Plan(dataset="digits", models=("pf-1-1",), variants=({"per_class": 3},), seeds=(0,),
                   size="tiny", model_overrides={"patch_size": 4, "dim": 16, "heads": 2}, epochs=1,
                   batch_size=32, device="cpu", threads=1)
    monkeypatch.setitem(sweeps.SWEEPS, name, replace(sweeps.SWEEPS[name], quick=tiny))
    monkeypatch.setattr(locations, "in_checkout", lambda: False)
    monkeypatch.chdir(tmp_path)
    committed_before = json.loads((locations.packaged() / name / "results.json").read_text())
    results = ex.run_experiment(name, "quick", progress=False, log=None)
    assert results["out"] == str(tmp_path / "results" / name)
    assert (tmp_path / "results" / name / "results.json").is_file()
    assert ex.load_results(name) == committed_before                 # by name: still the committed
    assert ex.load_results(tmp_path / "results" / name)["records"] == json.loads(
        json.dumps(results["records"]))
