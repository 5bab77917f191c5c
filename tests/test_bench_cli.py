"""`duat bench` and the benchmark's refusals: a spec, a model, a device or an option that
makes no sense is refused before anything is timed, in one line at the command line."""
import argparse

import pytest
import torch

from bench_cases import TINY, TINY_ARGS
from duat import bench
from duat.bench import BenchSpec, build_model, harness, run_benchmark
from duat.cli import main


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("kwargs, words", [
    (dict(batches=(0,)), "batch"),
    (dict(batches=(1, -4)), "batch"),
    (dict(batches=()), "batch"),
    (dict(layers=(0,)), "layers"),
    (dict(layers=(1, 2.5)), "layers"),
    (dict(implementations=("vit", "resnet")), "unknown implementation 'resnet'"),
    (dict(variants=("turbo",)), "unknown variant 'turbo'"),
    (dict(dtype="float64"), "dtype"),
    (dict(size="huge"), "size"),
    (dict(reps=2, min_reps=3), "reps"),
    (dict(min_reps=2), "min_reps"),
    (dict(threads=0), "threads"),
    (dict(max_case_seconds=0), "max_case_seconds"),
])
def test_spec_refuses_nonsense(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BenchSpec(**kwargs)


def test_build_model_refuses_unknown_implementation_and_zero_layers():
    with pytest.raises(ValueError, match="unknown implementation 'mlp'"):
        build_model("mlp", 2)
    with pytest.raises(ValueError, match="layers"):
        build_model("vit", 0)


def test_cuda_only_variant_is_refused_on_the_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        run_benchmark(BenchSpec(**dict(TINY, variants=("eager", "graph"))))
    with pytest.raises(TypeError, match="BenchSpec"):
        run_benchmark({"layers": (1,)})


@pytest.mark.parametrize("args, words", [
    (["--batch", "0"], "batch"),
    (["--layers", "0", "4"], "layers"),
    (["--impl", "vit", "nope"], "unknown implementation 'nope'"),
    (["--device", "tpu"], "device"),
])
def test_cli_refuses_nonsense_with_status_2(args, words, capsys):
    assert main(["bench", *TINY_ARGS, "--no-save", *args]) == 2
    assert words in capsys.readouterr().err


def test_nothing_left_to_time_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(harness, "timm_available", lambda: "timm is not importable (test)")
    with pytest.raises(ValueError, match="nothing to time.*timm"):
        run_benchmark(BenchSpec(**dict(TINY, implementations=("timm-parallel",))))
    args = ["bench", *TINY_ARGS, "--impl", "timm-parallel", "--out", str(tmp_path), "--name", "r"]
    assert main(args) == 2
    assert "nothing to time" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # the empty folder made for the run is removed


def test_a_variant_that_fails_to_build_is_skipped_not_fatal(monkeypatch):
    def broken_compile(model, **kwargs):
        def call(x):
            raise RuntimeError("no compiler here (test)")
        return call
    monkeypatch.setattr(torch, "compile", broken_compile)
    spec = BenchSpec(**dict(TINY, layers=(1,), batches=(1,), implementations=("vit",),
                            variants=("eager", "compile")))
    res = run_benchmark(spec, measure_peak=False)
    assert [r["label"] for r in res["records"]] == ["vit"]
    assert "no compiler here" in res["skipped"]["vit+compile"]


def test_unknown_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--preset", "turbo"])
    assert exit_info.value.code == 2
    assert "turbo" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_gpu_preset_on_a_machine_without_cuda_exits_2(capsys):
    assert main(["bench", "--preset", "gpu", "--no-save"]) == 2
    assert "not available" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--dims", "30", "--heads", "4"], "D=30 is not divisible by 4 heads"),
    (["--dims", "32", "--layers", "0"], "layers"),
    (["--dims", "0"], "dims"),
    (["--dims", "32", "--batch", "100000000"], "GiB free"),
])
def test_regime_preset_refuses_bad_input_in_one_line(args, words, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["bench", "--preset", "regime", "--device", "cpu", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and err.startswith("duat bench: error:") and len(err.splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())   # no run folder left behind


# ----------------------------------------------------------------------------- presets and runs

def test_presets_give_valid_specs():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    for name in bench.PRESETS:
        spec, preset = bench.spec_from_args(parser.parse_args(["--preset", name]))
        assert preset == name and spec.layers[0] == 1 and spec.layers[-1] == 24
    spec, _ = bench.spec_from_args(parser.parse_args(["--preset", "gpu"]))
    assert (spec.device, spec.size, spec.image_size) == ("cuda", "base", 224)
    assert "graph" in spec.variants
    spec, _ = bench.spec_from_args(parser.parse_args(["--full", "--batch", "2", "--device", "cpu"]))
    assert spec.batches == (2,) and spec.device == "cpu" and spec.reps == 60


def test_cli_writes_json_csv_png_and_refuses_to_overwrite(tmp_path, capsys):
    args = ["bench", *TINY_ARGS, "--impl", "vit", "pf-batched", "--out", str(tmp_path),
            "--name", "run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "median ms" in out and "pf-batched" in out and "matmul peak" in out
    folder = tmp_path / "run"
    assert sorted(p.name for p in folder.iterdir()) == sorted(bench.RESULT_FILES)
    res = bench.load_benchmark(folder)
    assert len(res["records"]) == 4 and "targets" in res
    csv_lines = (folder / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("implementation,variant,label,layers,batch")
    assert len(csv_lines) == 1 + 4
    assert (folder / "latency_vs_layers.png").read_bytes()[:4] == b"\x89PNG"
    assert main(args) == 2  # the folder holds an earlier run
    assert "earlier run" in capsys.readouterr().err
    assert bench.list_runs(tmp_path) == [folder]


def test_quick_cli_run_gets_its_own_folder_and_is_marked_quick(tmp_path, capsys):
    args = ["bench", "--quick", *TINY_ARGS, "--impl", "vit", "--layers", "1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    (folder,) = bench.list_runs(tmp_path)
    assert folder.name.startswith("cpu-quick-")
    res = bench.load_benchmark(folder)
    assert res["preset"] == "quick" and bench.is_quick(res)
    assert bench.latest_run(tmp_path) is None  # quick runs are not the committed results


def test_cli_compare_reads_an_earlier_run_and_refuses_a_missing_one(tmp_path, capsys):
    base = ["bench", *TINY_ARGS, "--impl", "vit", "--out", str(tmp_path)]
    assert main([*base, "--name", "a"]) == 0
    capsys.readouterr()
    code = main([*base, "--name", "b", "--compare", str(tmp_path / "a")])
    out = capsys.readouterr().out
    assert "this run against" in out and "cases within the measured spread" in out
    assert code in (0, 1)  # timing noise decides which; both are valid answers
    assert main([*base, "--name", "c", "--compare", str(tmp_path / "nothing")]) == 2
    assert "no benchmark results" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_regime_preset_never_overwrites_an_earlier_run(tmp_path, capsys):
    args = ["bench", "--preset", "regime", "--device", "cpu", "--size", "tiny", "--image-size", "8",
            "--in-channels", "1", "--dims", "8", "--heads", "2", "--layers", "1", "2",
            "--batch", "1", "--reps", "3", "--warmup", "1", "--rounds", "1",
            "--max-case-seconds", "0.05", "--out", str(tmp_path), "--name", "r"]
    assert main(args) == 0
    assert "flat latency" in capsys.readouterr().out
    before = (tmp_path / "r" / "results.json").read_bytes()
    assert main(args) == 2
    assert "earlier run" in capsys.readouterr().err
    assert (tmp_path / "r" / "results.json").read_bytes() == before
