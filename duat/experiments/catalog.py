"""Every experiment of `duat reproduce`, and one way to run, read, write, show and compare
any of them by name.

    EXPERIMENTS         name -> duat.experiments.runs.Experiment: the four sweeps, finetune,
                        progressive and composition
    run_experiment      run one: run_experiment("data-scale", "quick", seeds=[0])
    load_results        its results.json: by name the committed quick results that ship with
                        the kit (duat.locations.committed), or a results.json or its folder
    write_results       a results dict's tables, figures and results.json into a folder
    format_summary      the results as a plain-text table
    plot_results        one of its figures (the first unless named)
    compare_results     new means against a reference's (the sweeps and composition)

A results dict names its experiment in results["experiment"]; the functions that take one
find the experiment by it.
"""
from __future__ import annotations

from pathlib import Path

from duat.experiments.composition import COMPOSITION
from duat.experiments.finetune import FINETUNE
from duat.experiments.progressive import PROGRESSIVE
from duat.experiments.runs import Experiment, results_folder
from duat.experiments.sweeps import SWEEP_EXPERIMENTS
from duat.locations import committed
from duat.storage import UnreadableFileError, read_results

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (*SWEEP_EXPERIMENTS, FINETUNE, PROGRESSIVE,
                                                           COMPOSITION)}


def get_experiment(name: str) -> Experiment:
    if not isinstance(name, str) or name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known experiments: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run_experiment(name: str, profile: str = "quick", **options) -> dict:
    """Run experiment `name` in `profile` (quick or full) and return its results; `options`
    are its run function's (out, overwrite, resume, progress, seeds, device, threads, ...)."""
    return get_experiment(name).run(profile, **options)


def experiment_of(results: dict) -> Experiment:
    """The experiment a results dict belongs to (by its "experiment")."""
    return get_experiment(results.get("experiment"))


def load_results(name_or_path: str | Path) -> dict:
    """results.json of an experiment: by name, the committed quick results that ship with the
    kit (or $DUAT_RESULTS/<name>, see duat.locations.committed); else a results.json or the
    folder of one. A missing file is a FileNotFoundError that says how to make it; a file
    that is not an experiment's results (no "experiment", or not all the keys its experiment
    holds) is a duat.storage.UnreadableFileError."""
    name = str(name_or_path)
    if name in EXPERIMENTS:
        path = committed(results_folder(name, "quick"))
        hint = f"run `duat reproduce {name} --quick` first"
    else:
        path = Path(name_or_path)
        hint = f"give a results.json, its folder, or an experiment's name ({', '.join(EXPERIMENTS)})"
    results = read_results(path, hint, ("experiment",))
    if results["experiment"] not in EXPERIMENTS:
        raise UnreadableFileError(f"{path} holds the results of an unknown experiment "
                                  f"{results['experiment']!r}")
    return read_results(path, hint, EXPERIMENTS[results["experiment"]].keys)


def write_results(results: dict, out_dir: str | Path) -> None:
    """The results' CSV tables, figures, then results.json, into `out_dir`."""
    experiment_of(results).write(results, out_dir)


def format_summary(results: dict) -> str:
    """The results as a plain-text table (what `duat reproduce` prints)."""
    return experiment_of(results).report(results)


def plot_results(results: dict, figure: str | None = None):
    """The figure file `figure` of the results (default: the experiment's first), drawn."""
    figures = experiment_of(results).figures
    if figure is not None and figure not in figures:
        raise ValueError(f"no figure {figure!r}; this experiment draws {', '.join(figures)}")
    return figures[figure or next(iter(figures))](results)


def compare_results(results: dict, reference: dict) -> list[dict]:
    """Per configuration, the new mean against the reference's: reference, new, difference,
    tolerance and whether it is within (the sweeps: two seed spreads and one test image;
    composition: max(2 sd, 0.02))."""
    experiment, other = experiment_of(results), experiment_of(reference)
    if experiment.compare is None:
        raise ValueError(f"comparing results is not supported for the {experiment.name} experiment")
    if other.compare is not experiment.compare:
        raise ValueError(f"the reference holds {other.name} results; {experiment.name} results "
                         f"compare only with results of the same kind")
    return experiment.compare(results, reference)
