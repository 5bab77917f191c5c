"""Exercises of notebook 08 (a Para-Former from a pre-trained ViT, docs/method.md section 5,
claim 4): where the serial blocks go, which of them to keep, and what stays trainable."""
from __future__ import annotations

import torch

from duat.exercises.core import BadAnswer, Wrong, call, compare, exercise
from duat.paraformer import ParaFormer
from duat.registry import model_config
from duat.training.tuning import freeze
from duat.transfer import place_blocks, select_blocks

# (L, m, n) layouts the notebook never shows (it shows 4 blocks as 2 x 2 and 1 x 4)
PLACE_CASES = [(12, 3, 4), (12, 4, 3), (8, 2, 4), (6, 3, 2), (12, 2, 6), (5, 5, 1), (3, 1, 3)]


def _placement(got, m: int, n: int, case: str) -> torch.Tensor:
    """The learner's placement as an (m, n) tensor, or Wrong / BadAnswer saying why not."""
    if hasattr(got, "tolist") and not isinstance(got, (list, tuple)):   # a tensor or an array
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in got):
        raise BadAnswer(f"the placement on {case} is {type(got).__name__}, not a list of rows "
                        "(placement[s][i]: one list per stage).")
    if len(got) != m or any(len(r) != n for r in got):
        shape = (len(got), sorted({len(r) for r in got}))
        hint = ("rows and columns swapped: placement[s] is stage s (m of them), each a row of "
                f"its n branches." if len(got) == n and all(len(r) == m for r in got) else
                "placement has one row per stage (m rows), each with the n branches of that stage.")
        raise Wrong(f"the placement on {case} has {shape[0]} rows of lengths {shape[1]}; "
                    f"expected {m} rows of {n}.", hint)
    return torch.tensor([[float(b) for b in row] for row in got])


@exercise("8.1", "placing serial blocks on an m x n layout",
          "a function place(num_layers, depth, width, assignment) returning placement, a "
          "list of depth rows of width block indices (placement[s][i] = the source block of "
          "branch i of stage s), for assignment 'stage-major' or 'strided'")
def place(answer) -> str:
    for L, m, n in PLACE_CASES:
        for assignment in ("stage-major", "strided"):
            case = f"L = {L} blocks on {m} x {n}, {assignment}"
            got = _placement(call(answer, L, m, n, assignment, case=case), m, n, case)
            other = "strided" if assignment == "stage-major" else "stage-major"
            compare(got, torch.tensor(place_blocks(L, m, n, assignment), dtype=torch.float64),
                    case=case, what="the placement", mistakes=[
                        (torch.tensor(place_blocks(L, m, n, other), dtype=torch.float64),
                         f"this is the {other} rule: swap which of k // n, k % n (or k % m, "
                         "k // m) gives the stage."),
                        (torch.tensor(place_blocks(L, m, n, assignment), dtype=torch.float64) + 1,
                         "block indices start at 0, as in the ViT's encoder layers."),
                    ], hint="stage-major: block k goes to stage k // n, branch k % n; strided: "
                            "stage k % m, branch k // m.")
    return f"{2 * len(PLACE_CASES)} unseen layouts and assignments"


# (L, count): no tie at k + 0.5 in the "spread" positions, so rounding is unambiguous
SELECT_CASES = [(12, 4), (12, 6), (24, 6), (7, 3), (10, 4), (6, 1), (9, 9), (17, 6), (15, 4)]


def _floor_spread(L: int, count: int) -> list[int]:
    return [0] if count == 1 else [k * (L - 1) // (count - 1) for k in range(count)]


def _step_spread(L: int, count: int) -> list[int]:
    return [k * L // count for k in range(count)]


@exercise("8.2", "which blocks a smaller layout keeps",
          "a function select(num_layers, count, rule) returning the list of `count` source "
          "block indices that rule 'first', 'last' or 'spread' keeps")
def select(answer) -> str:
    for L, count in SELECT_CASES:
        for rule in ("first", "last", "spread"):
            case = f"{count} of L = {L} blocks, rule {rule!r}"
            got = call(answer, L, count, rule, case=case)
            if isinstance(got, (str, bytes, dict)) or not hasattr(got, "__len__"):
                raise BadAnswer(f"on {case} it returned {type(got).__name__}, not a list of "
                                "indices.")
            if len(got) != count:
                raise Wrong(f"on {case} it returned {len(got)} indices; expected {count}.",
                            "one index per kept block: exactly `count` of them, each once "
                            "(round the positions, do not drop or add any).")
            expected = torch.tensor(select_blocks(L, count, rule), dtype=torch.float64)
            f64 = dict(dtype=torch.float64)
            mistakes = {
                "last": [(torch.arange(L - count - 1, L - 1, **f64), "off by one: the last "
                          "block is L - 1, so the last `count` blocks start at L - count."),
                         (torch.arange(L - 1, L - count - 1, -1, **f64), "right blocks, wrong "
                          "order: keep them in increasing order, as they run in the ViT.")],
                "spread": [(torch.tensor(_floor_spread(L, count)), "positions k (L - 1) / "
                            "(count - 1) are rounded to the nearest block, not down (int())."),
                           (torch.tensor(_step_spread(L, count)), "the spread includes both "
                            "ends: the first block 0 and the last block L - 1, so the step "
                            "is (L - 1) / (count - 1), not L / count.")],
            }.get(rule, [])
            kept = torch.as_tensor([float(b) for b in got], dtype=torch.float64)
            compare(kept, expected, case=case,
                    what="the list of kept blocks", mistakes=mistakes,
                    hint="first: 0 .. count-1; last: L-count .. L-1; spread: round(k (L-1) / "
                         "(count-1)) for k = 0 .. count-1 (block 0 alone when count = 1).")
    return f"{3 * len(SELECT_CASES)} unseen (L, count, rule) choices"


# (layout, config options, parts to freeze); the parameter names come from the model
TRAINABLE_CASES = [("pf-2-3", {}, "blocks"), ("pf-3-2", {}, "all-but-head"),
                   ("pf-1-4", {"pool": "mean"}, "embed"),
                   ("pf-2-2", {"stage": "reference"}, "embed"),
                   ("vit-3", {}, ["embed", "blocks"]), ("pf-2-2", {}, "none"),
                   ("pf-1-3", {"stage": "reference"}, "all-but-head")]


def _kit_trainable(layout: str, options: dict, parts) -> tuple[list[str], list[str]]:
    """(all parameter names, those left trainable by freeze(model, parts)): the kit's answer."""
    with torch.device("meta"):            # names only: no weights are drawn
        model = ParaFormer(model_config(layout, size="tiny", **options))
    freeze(model, parts)
    names = [name for name, _ in model.named_parameters()]
    return names, [name for name, p in model.named_parameters() if p.requires_grad]


@exercise("8.3", "what stays trainable under a freeze rule",
          "a function trainable(names, parts) returning the list of the parameter names "
          "(from `names`, a ParaFormer's parameter names) that freeze(model, parts) leaves "
          "trainable, for parts 'none', 'embed', 'blocks', 'all-but-head' or a list of these")
def trainable(answer) -> str:
    for layout, options, parts in TRAINABLE_CASES:
        names, expected = _kit_trainable(layout, options, parts)
        case = f"{layout}{' ' + str(options) if options else ''}, parts {parts!r}"
        given = list(parts) if isinstance(parts, list) else parts   # a copy: the answer may edit it
        got = call(answer, list(names), given, case=case)
        if isinstance(got, (str, bytes)) or not hasattr(got, "__iter__"):
            raise BadAnswer(f"on {case} it returned {type(got).__name__} {got!r:.40}, not a list "
                            "of parameter names.")
        got = list(got)
        if not all(isinstance(g, str) for g in got):
            raise BadAnswer(f"on {case} it returned {got!r:.60}, not a list of parameter names.")
        if set(got) == set(expected):
            continue
        extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        message = (f"on {case}: {len(got)} names trainable, expected {len(expected)}"
                   + (f"; should be frozen: {extra[:3]}" if extra else "")
                   + (f"; should stay trainable: {missing[:3]}" if missing else "") + ".")
        if set(got) == set(names) - set(expected):
            hint = "these are the frozen names: return the ones that still learn."
        elif any(n.startswith("norm.") for n in extra):
            hint = "'all-but-head' freezes the final norm too: only head.* stays trainable."
        elif any(n in ("cls_token", "pos_embed") for n in extra):
            hint = "'embed' is the patch embedding, the class token and the position embedding."
        elif parts == "none" or missing and all(n.startswith("head.") for n in missing):
            hint = "'none' freezes nothing, and no rule ever freezes the head."
        else:
            hint = ("a name's part is its first component: patch_embed / cls_token / pos_embed "
                    "(embed), stages (blocks), norm, head (duat.training.tuning.part_of).")
        raise Wrong(message, hint)
    return f"{len(TRAINABLE_CASES)} unseen models and freeze rules"
