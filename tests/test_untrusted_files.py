"""No file the kit reads back can run code (duat.storage.load_tensors: weights_only=True).

A pickle whose unpickling would create a marker file is planted in every place the kit
reads: a `duat train --resume` checkpoint, the partial_source.pt of an interrupted
`duat reproduce finetune`, a state-dict file and a kit checkpoint given to load_source
(`--weights`), and torch.hub's cache of torchvision's weights. Each is refused in one line
and the marker never appears. Truncated and random-bytes files get the same kind of line."""
import os
import pathlib
from dataclasses import asdict
from urllib.parse import urlparse

import pytest
import torch

from duat import storage
from duat.cli import main
from duat.experiments.finetune import EXPERIMENT, PARTIAL_SOURCE, make_spec
from duat.storage import UnreadableFileError
from duat.storage import CHECKPOINT_FORMAT
from duat.transfer import load_source

from conftest import run_cli, train_cli

OBJECTS = "holds Python objects other than tensors and plain data"


class Planted:
    """Unpickled, it touches `marker`: what a hostile file could do instead."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def plant(tmp_path):
    """plant(path, wrap) writes wrap(a Planted pickle) to path with torch.save; the marker
    is tmp_path / "pwned" and must never exist afterwards."""
    marker = tmp_path / "pwned"

    def write(path, wrap=lambda evil: evil):
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(Planted(marker)), path)
        return path

    yield write
    assert not marker.exists(), "a planted pickle ran code"


def one_error_line(capsys, status, command):
    assert status == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"duat {command}: error: ")
    return err


def test_the_planted_pickle_would_run_code_without_weights_only(tmp_path, plant):
    path = plant(tmp_path / "evil.pt")
    torch.load(path, weights_only=False)                     # what the kit must never do
    assert (tmp_path / "pwned").is_file()
    (tmp_path / "pwned").unlink()
    with pytest.raises(UnreadableFileError) as err:
        storage.load_tensors(path, "test file")
    assert str(err.value) == (f"{path} is not a readable test file: it {OBJECTS}; refusing to "
                              f"load it (weights_only)")


def test_duat_train_resume_refuses_a_planted_checkpoint(tmp_path, plant):
    out = tmp_path / "run"
    ckpt = plant(out / "checkpoint.pt", lambda evil: {"format": CHECKPOINT_FORMAT, "model_state": evil})
    proc = run_cli("train", "--model", "vit-1", "--epochs", "1", "--per-class", "10", "--device", "cpu",
                   "--no-progress", "--out", out, "--resume")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"duat train: error: {ckpt} is not a readable duat checkpoint (a file written by "
        f"`duat train` or duat.training.fit): it {OBJECTS}; refusing to load it (weights_only)"]


def test_duat_train_resume_refuses_a_truncated_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli("--model", "vit-1", "--epochs", "1", "--out", str(out)) == 0
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    err = one_error_line(capsys, train_cli("--model", "vit-1", "--epochs", "2", "--out", str(out),
                                           "--resume"), "train")
    assert f"{ckpt} is not a readable duat checkpoint" in err
    assert "it is truncated or corrupt" in err


def test_duat_train_resume_refuses_a_checkpoint_that_lacks_a_part(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli("--model", "vit-1", "--epochs", "1", "--out", str(out)) == 0
    ckpt = out / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["optimizer_state"]
    torch.save(state, ckpt)
    capsys.readouterr()
    err = one_error_line(capsys, train_cli("--model", "vit-1", "--epochs", "2", "--out", str(out),
                                           "--resume"), "train")
    assert f"{ckpt} is an incomplete duat checkpoint: it lacks optimizer_state" in err


def resumable_finetune_folder(out, **options):
    """An interrupted finetune run as run_experiment leaves it: partial.json with the run's
    identity (the spec the CLI options below make) and no runs done yet."""
    spec = make_spec("quick", **options)
    storage.save_partial(out, {"experiment": EXPERIMENT, "spec": asdict(spec)},
                         carry_over=[], done={})
    return ["reproduce", "finetune", "--quick", "--out", str(out), "--resume", "--no-progress",
            "--seeds", *map(str, options["seeds"]), "--per-class", *map(str, options["per_class"]),
            "--layouts", *options["layouts"]]


def test_finetune_resume_refuses_a_planted_source(tmp_path, plant, capsys):
    out = tmp_path / "ft"
    argv = resumable_finetune_folder(out, seeds=(0,), per_class=(2,), layouts=("vit-4",))
    source = plant(out / PARTIAL_SOURCE, lambda evil: {"state_dict": evil, "info": {}})
    err = one_error_line(capsys, main(argv), "reproduce")
    assert f"{source} is not a readable finetune source" in err and OBJECTS in err
    assert "--overwrite starts afresh" in err


def test_finetune_resume_refuses_a_source_of_tensors_without_its_parts(tmp_path, capsys):
    out = tmp_path / "ft"
    argv = resumable_finetune_folder(out, seeds=(0,), per_class=(2,), layouts=("vit-4",))
    torch.save({"weights": torch.zeros(2)}, out / PARTIAL_SOURCE)      # loads, but is not one
    err = one_error_line(capsys, main(argv), "reproduce")
    assert "it lacks its state_dict or info" in err


@pytest.mark.parametrize("kind", ["state dict", "kit checkpoint"])
def test_load_source_refuses_a_planted_file(tmp_path, plant, capsys, kind):
    wrap = ((lambda evil: {"patch_embed.weight": evil}) if kind == "state dict" else
            (lambda evil: {"format": CHECKPOINT_FORMAT, "model_class": "ParaFormer",
                           "model_config": {}, "model_state": evil}))
    path = plant(tmp_path / "weights.pt", wrap)
    with pytest.raises(UnreadableFileError) as err:
        load_source(path, arch="vit-2")
    assert str(err.value).startswith(f"{path} is not a readable state dict or checkpoint")
    assert OBJECTS in str(err.value) and "\n" not in str(err.value)
    out = tmp_path / "ft"
    err = one_error_line(capsys, main(["reproduce", "finetune", "--quick", "--out", str(out),
                                       "--weights", str(path), "--arch", "vit-2"]), "reproduce")
    assert OBJECTS in err
    assert not out.exists()


def test_load_source_refuses_random_bytes(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(UnreadableFileError, match="is truncated or corrupt") as err:
        load_source(path, arch="vit-2")
    assert "\n" not in str(err.value)
    err = one_error_line(capsys, main(["reproduce", "finetune", "--quick", "--out", str(tmp_path / "ft"),
                                       "--weights", str(path), "--arch", "vit-2"]), "reproduce")
    assert f"{path} is not a readable state dict or checkpoint" in err
    assert "truncated or corrupt" in err


def test_a_planted_torchvision_weights_cache_file_is_refused(tmp_path, plant, monkeypatch):
    from torchvision.models import ViT_B_16_Weights

    def no_download(*args, **kwargs):
        raise AssertionError("the cached file is there: nothing should be downloaded")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    name = pathlib.Path(urlparse(ViT_B_16_Weights.IMAGENET1K_V1.url).path).name
    cached = plant(tmp_path / "hub" / "checkpoints" / name)
    with pytest.raises(UnreadableFileError) as err:
        load_source("ViT_B_16_Weights.IMAGENET1K_V1", progress=False)
    assert str(err.value).startswith(f"{cached} is not a readable copy of torchvision's "
                                     f"ViT_B_16_Weights.IMAGENET1K_V1")
    assert OBJECTS in str(err.value) and "\n" not in str(err.value)
