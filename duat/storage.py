"""Writing results and checkpoints so that nothing is lost.

Every file is written to a temporary name in the same folder, flushed, and renamed over
the target (an atomic step on POSIX and Windows), so a killed run leaves either the old
file or the new one, never half of one. Output folders of earlier runs are not reused
unless the caller says `overwrite=True`. What is read back is read safely: `load_tensors`
(the kit's one torch.load) accepts tensors and plain data only, so no file can run code;
`load_state_dict_checked` loads weights into a model whole or not at all, naming every key
that does not fit.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file owner-only (0600); give it the mode open() would (0666 - umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through a temporary file and a rename."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


# The kit's checkpoint file (written by duat.training.fit, read by it on resume and by
# duat.transfer as a weight source): a dict with "format": CHECKPOINT_FORMAT and these keys.
CHECKPOINT_FORMAT = "duat-checkpoint-1"
CHECKPOINT_KEYS = ("model_state", "optimizer_state", "epoch", "step", "history", "rng")


class UnreadableFileError(ValueError):
    """A file the kit reads back is not what it should be: one line naming the file, what
    was expected and why (duat.cli reports it as a usage error, status 2)."""


def load_tensors(path: str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """torch.load(path) with weights_only=True: tensors and plain data (dict, list, tuple,
    str, int, float, bool, None), never code. `what` names the file expected, e.g. "duat
    checkpoint (a file written by `duat train`)". FileNotFoundError for a missing file;
    UnreadableFileError "<path> is not a readable <what>: <why>" for a file that a pickle
    would run code from, or that is truncated, corrupt or not torch.save's."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (expected a {what})")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: the refusal says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch's own text is many lines long: one line instead
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in str(err):
            why = ("it holds Python objects other than tensors and plain data; refusing to load "
                   "it (weights_only)")
        else:
            why = "it is truncated or corrupt, or not a file written by torch.save"
        raise UnreadableFileError(f"{path} is not a readable {what}: {why}") from err


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> Path:
    """matplotlib's savefig through a temporary file and a rename."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


def write_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """Save a matplotlib figure atomically (dpi 120 unless told) and close it: a figure
    written to a file is done with. (The command line draws with the Agg backend: files,
    not windows; see duat.cli.)"""
    import matplotlib.pyplot as plt

    kwargs.setdefault("dpi", 120)
    try:
        return atomic_savefig(fig, path, **kwargs)
    finally:
        plt.close(fig)


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None,
              float_format: str | None = None) -> Path:
    """Rows of scalars as CSV, atomically. Columns: `columns`, or every key in order of first
    appearance; values that are dicts are skipped, lists and tuples become 'a;b;c'; floats are
    written with `float_format` (e.g. ".6g"; None: Python's shortest repr)."""
    rows = list(rows)
    bad = next((r for r in rows if not isinstance(r, dict)), None)
    if bad is not None:
        raise TypeError(f"write_csv takes rows as dicts (column -> value), got a "
                        f"{type(bad).__name__}: {bad!r}")
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k, v in row.items() if k not in columns and not isinstance(v, dict)]

    def cell(v):
        if isinstance(v, (list, tuple)):
            return ";".join(map(str, v))
        if float_format is not None and isinstance(v, float):
            return format(v, float_format)
        return v

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: cell(v) for k, v in row.items() if k in columns})
    return atomic_write_text(path, buffer.getvalue())


def read_results(path: str | os.PathLike, hint: str, keys: Sequence[str] = ()) -> dict:
    """A finished run's results.json (`path`: the file or its folder). A missing file is a
    FileNotFoundError ending in `hint` (how to make or find one); a file that is not JSON or
    is not a JSON object or lacks one of `keys` is an UnreadableFileError."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: {hint}")
    try:
        results = json.loads(path.read_text())
    except ValueError as err:
        raise UnreadableFileError(f"{path} is not a readable results file: {err}") from err
    if not isinstance(results, dict):
        raise UnreadableFileError(f"{path} is not a results file: it holds a JSON "
                                  f"{type(results).__name__}, not an object")
    missing = [k for k in keys if k not in results]
    if missing:
        raise UnreadableFileError(f"{path} is not a results file of this kind: no "
                                  f"{', '.join(map(repr, missing))}")
    return results


def prepare_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that `path` may receive a new run's outputs, and return it.

    A folder that already holds files belongs to an earlier run: refuse with
    FileExistsError unless `overwrite` is True (then files are replaced one by one, each
    atomically, as the new run writes them). Nothing is created here: the folder appears
    with the run's first file (every writer above makes its parent), so a run that fails
    before writing anything leaves nothing behind.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already holds the results of an earlier run; "
                              f"pass overwrite=True (CLI: --overwrite) to replace them, "
                              f"or choose another output folder")
    return path



# ----------------------------------------------------------------------------- resumable runs
# A long run (a sweep of many trainings) keeps what it has done in PARTIAL, rewritten
# atomically after every step, next to an `identity` (the run's settings); results.json,
# written last, marks a finished run. `open_run_dir` makes the refusals in one place.

PARTIAL = "partial.json"


def open_run_dir(path: str | os.PathLike, identity: dict, overwrite: bool = False,
                 resume: bool = False, keys: tuple[str, ...] = ("done",)) -> tuple[Path, dict | None]:
    """(the output folder, the saved state of the interrupted run to continue, or None).

    resume=True needs an interrupted run with the same identity, whose saved state holds
    `keys`; resume=False refuses a folder holding an interrupted run (say --resume or
    --overwrite) or an earlier run's files.
    """
    path = Path(path)
    partial = path / PARTIAL
    if not resume:
        if partial.is_file() and not overwrite:
            raise FileExistsError(f"{path} holds an interrupted run ({PARTIAL}); continue it with "
                                  f"--resume (resume=True), or start afresh with --overwrite")
        return prepare_output_dir(path, overwrite=overwrite), None
    if (path / "results.json").is_file():
        raise FileExistsError(f"{path} holds a finished run (results.json): nothing to resume; "
                              f"pass --overwrite to run it again, or choose another --out")
    if not partial.is_file():
        raise FileNotFoundError(f"nothing to resume: no {PARTIAL} in {path} (an interrupted run "
                                f"keeps what it has done there)")
    try:
        saved = json.loads(partial.read_text())
    except ValueError as err:  # truncated or hand-edited
        raise UnreadableFileError(f"{partial} is not a readable record of an interrupted run: "
                                  f"{err}; start afresh with --overwrite") from err
    if not isinstance(saved, dict):
        saved = {"identity": None}
    if saved.get("identity") != json.loads(json.dumps(identity, default=str)):
        raise ValueError(f"{partial} is from a run with other settings (another experiment, "
                         f"profile or plan); resume it with the same options, or start afresh "
                         f"with --overwrite")
    missing = [k for k in keys if k not in saved]
    if missing:
        raise UnreadableFileError(f"{partial} is not a readable record of an interrupted run: it "
                                  f"lacks {', '.join(missing)}; start afresh with --overwrite")
    return path, saved


def save_partial(path: str | os.PathLike, identity: dict, **state: Any) -> Path:
    """Keep an unfinished run's state (JSON-able) in `path`/PARTIAL, atomically."""
    return atomic_write_json(Path(path) / PARTIAL, {"identity": identity, **state})


def finish_partial(path: str | os.PathLike, *extra: str) -> None:
    """A run is complete (its results.json written): drop PARTIAL and `extra` files."""
    for name in (PARTIAL, *extra):
        (Path(path) / name).unlink(missing_ok=True)


def load_state_dict_checked(model, state_dict: dict, assign: bool = False) -> None:
    """model.load_state_dict, but every missing, unexpected or mis-shaped key is named in one
    ValueError (nothing is loaded then). assign=True: the model takes the given tensors
    themselves (for a model built on the meta device)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state_dict[k].shape)}"
              for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if problems:
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(state_dict, strict=True, assign=assign)
