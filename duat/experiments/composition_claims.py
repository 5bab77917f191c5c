"""The claims table's row for composition: what one parallel stage cannot compute.

`duat reproduce composition` (docs/method.md section 10) trains GPT-L and Para-Former-m-n of
equal size on induction, MQAR and a copy control. Its row reads the committed results with
rule G: per composed task and length, do all two-stage models learn it while every
Para-Former-1-n stays below? (composition.prediction holds the rule for one case.)
"""
from __future__ import annotations

from duat.experiments import composition
from duat.experiments.catalog import load_results
from duat.experiments.plots import label
from duat.experiments.verdicts import (DOES_NOT, HOLDS, NOT_TESTED, PARTLY, Claim, device_label,
                                      missing)

COMPOSITION = ("One parallel stage cannot compose attention: Para-Former-1-n fails induction and "
               "associative recall at every n, Para-Former-2-n learns them like GPT-2, and a task "
               "one attention layer solves is learnt by both (the kit's test of the thesis, "
               "after Elhage et al. 2021, Olsson et al. 2022, Arora et al. 2023)")
SOURCE, WHERE = "method.md 10", "notebook 14 · duat/results/composition"


def composition_claim(results: dict | None = None) -> Claim:
    """Rule G on composition results (default: the committed ones; none: not tested here)."""
    if results is None:
        try:
            results = load_results(composition.NAME)
        except FileNotFoundError:
            results = None
    if results is None:
        return missing("composition", COMPOSITION, SOURCE, "composition", WHERE)
    rows = composition.prediction(results)
    tested = [r for r in rows if not r["verdict"].startswith("not tested")]
    held = [r for r in tested if r["verdict"] == "held"]
    failed_controls = composition.controls(results)
    cases = "; ".join(f"{r['task']} T={r['length']}: {r['verdict']} (best one-stage "
                      f"{label(r['best_one_stage'])} {r['best_one_stage_mean']:.2f} ± "
                      f"{r['best_one_stage_std']:.2f}, worst two-stage {label(r['worst_two_stage'])} "
                      f"{r['worst_two_stage_mean']:.2f})" for r in rows)
    control = ("control learnt by every model" if not failed_controls else
               "control not learnt by " + ", ".join(f"{label(r['model'])} at T={r['length']}"
                                                    for r in failed_controls))
    partly = [r for r in tested if r["verdict"] == "partly"]
    verdict = (NOT_TESTED if not tested else HOLDS if len(held) == len(tested)
               else PARTLY if held or partly else DOES_NOT)
    if failed_controls and verdict == HOLDS:      # a control not learnt: capped at partly
        verdict = PARTLY
    env, spec = results["environment"], results["spec"]
    return Claim("composition", COMPOSITION, SOURCE,
                 f"held in {len(held)} and partly in {len(partly)} of {len(tested)} tested cases; "
                 f"{cases}; {control}",
                 f"{device_label(env)}, {env.get('threads', '?')} threads",
                 f"{len(spec['seeds'])} seeds", verdict, "G", WHERE)
