"""Exercises of notebook 14 (what one parallel stage cannot compose, duat.tasks): the rule
of the induction task, the attention pattern an induction head needs, and the paths of an
unrolled Para-Former-m-n."""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from duat.exercises.core import (SEED, BadAnswer, Wrong, as_numbers, call, cases, compare, exercise,
                                 pick)
from duat.tasks import IGNORE, SequenceTask

F64 = torch.float64


# ----------------------------------------------------------------------------- 14.1

def _last_earlier(x: torch.Tensor, *, first: bool = False) -> torch.Tensor:
    """(N, T): for each position t, the last (or first) j < t with x[j] == x[t], or -1
    where there is none."""
    T = x.shape[1]
    j = torch.arange(T)
    match = (x[:, :, None] == x[:, None, :]) & (j[None, :] < j[:, None])        # (N, T, T) [n, t, j]
    if first:
        return torch.where(match, j, T).amin(-1).masked_fill(~match.any(-1), -1)
    return torch.where(match, j, -1).amax(-1)


def _follow(x: torch.Tensor, at: torch.Tensor, shift: int = 1) -> torch.Tensor:
    """x[n, at + shift] where at >= 0 (and the index is inside the sequence), else IGNORE."""
    T = x.shape[1]
    idx = at + shift
    ok = (at >= 0) & (idx >= 0) & (idx < T)
    return torch.where(ok, x.gather(1, idx.clamp(0, T - 1)), IGNORE)


def kit_induction_targets(x: torch.Tensor) -> torch.Tensor:
    """The induction rule on any tokens (N, T): at t, the token after the last earlier
    occurrence of x[t], x[j + 1] for the largest j < t with x[j] == x[t]; IGNORE if none."""
    return _follow(x, _last_earlier(x))


def _induction_case(i: int, g: torch.Generator) -> tuple[torch.Tensor, str]:
    """Odd cases: the kit's induction sequences; even ones: uniform tokens from a small
    vocabulary, where tokens repeat three times and more."""
    if i % 2:
        K = pick((1, 2, 3, 4), g)
        T = pick((2 * K + 3, 12, 16, 24), g)
        V = pick((K + 2, 8, 16), g)
        x, _ = SequenceTask("induction", T, V, pairs=K).generate(pick((2, 3, 5), g), seed=SEED + i)
        return x, f"case {i}: the kit's induction task, T = {T}, V = {V}, K = {K} ({len(x)} sequences)"
    N, T, V = pick((2, 3, 4), g), pick((6, 10, 16, 20), g), pick((3, 4, 6), g)
    x = torch.randint(0, V, (N, T), generator=g)
    return x, f"case {i}: {N} sequences of {T} uniform tokens from {V}"


@exercise("14.1", "the induction rule [a][b] ... [a] -> b",
          "a function induction_targets(x) taking tokens x, an int64 tensor (N, T), and "
          "returning an int64 tensor (N, T): at position t, the token that followed the last "
          "earlier occurrence of x[n, t], x[n, j + 1] for the largest j < t with "
          "x[n, j] == x[n, t], and -100 (duat.tasks.IGNORE) where x[n, t] did not occur before")
def induction_targets(answer) -> str:
    for i, g in cases(8):
        x, case = _induction_case(i, g)
        got = call(answer, x, case=case)
        if not isinstance(got, torch.Tensor):
            raise BadAnswer(f"on {case} it returned {type(got).__name__}, not a torch.Tensor.")
        expected = kit_induction_targets(x)
        at = _last_earlier(x)
        compare(got, expected, case=case, what="the targets", atol=0, rtol=0, mistakes=[
            (_follow(x, _last_earlier(x, first=True)),
             "the *last* earlier occurrence: where x[t] occurred two or more times before, "
             "the largest j < t."),
            (_follow(x, at, 0), "that is the token found, a = x[j] (the current token again); "
                                "the target is the one after it, b = x[j + 1]."),
            (_follow(x, at, -1), "one position off: the target is the token *after* the earlier "
                                 "occurrence, x[j + 1], not the one before it."),
            (_follow(x, torch.arange(x.shape[1]).expand_as(x).clone()),
             "a token matches itself: the earlier occurrence is at j < t, strictly (with j = t "
             "the rule gives the next token, x[t + 1], which the model cannot have seen)."),
            (torch.where(expected == IGNORE, 0, expected),
             "where x[t] did not occur before, the target is -100 (IGNORE: not scored), not 0."),
            (torch.where(expected == IGNORE, -1, expected),
             "where x[t] did not occur before, the target is -100 (IGNORE: not scored), not -1."),
            (torch.where(expected == IGNORE, x, expected),
             "where x[t] did not occur before there is no target: -100 (IGNORE), not x[t]."),
        ], hint="for each t, look back over x[:t] for the token x[t]; at the last match j, "
                "read x[j + 1]. Vectorised: the (N, T, T) matrix x[:, :, None] == "
                "x[:, None, :], kept below the diagonal.")
    return "8 unseen token tensors: the kit's induction sequences and tokens that repeat often"


# ----------------------------------------------------------------------------- 14.2

def _pattern(x: torch.Tensor, shift: int = 1, *, causal: bool = True, strict: bool = False,
             wrap: bool = False) -> torch.Tensor:
    """(T, T) bool: True at [t, s] where x[s - shift] == x[t] (s - shift inside the sequence,
    or wrapped around if `wrap`), s <= t (s < t if `strict`; any s if not causal)."""
    T = x.shape[0]
    s = torch.arange(T)
    src = s - shift
    inside = (src >= 0) & (src < T)
    key = x[src % T]                                                    # (T,) the key's token
    out = key[None, :] == x[:, None]                                    # (T, T) [t, s]
    if not wrap:
        out &= inside[None, :]
    if causal:
        out &= (s[None, :] < s[:, None]) if strict else (s[None, :] <= s[:, None])
    return out


def kit_induction_pattern(x: torch.Tensor, d: int = 1) -> torch.Tensor:
    """(T, T) bool: True at [t, s] where d <= s <= t and x[s - d] == x[t]: the keys an
    induction head's second layer attends to when the first layer wrote the token d back
    into every position (d = 1: the previous token; then s is the position after an
    earlier x[t])."""
    return _pattern(x, d)


@exercise("14.2", "the attention pattern of an induction head",
          "a function induction_pattern(x, d) taking one sequence of tokens x, an int64 tensor "
          "(T,), and an int d >= 1, and returning a bool tensor (T, T) that is True at [t, s] "
          "where the token d positions before the key s is the query's token: d <= s <= t and "
          "x[s - d] == x[t]")
def induction_pattern(answer) -> str:
    for i, g in cases(8):
        T, V = pick((8, 12, 16, 24), g), pick((3, 4, 5, 8), g)
        d = 1 if i <= 3 else pick((2, 3, 5), g)
        x = torch.randint(0, V, (T,), generator=g)
        case = f"case {i}: d = {d}, {T} tokens from {V}, {x.tolist()}"
        got = call(answer, x, d, case=case)
        if not isinstance(got, torch.Tensor):
            raise BadAnswer(f"on {case} it returned {type(got).__name__}, not a torch.Tensor.")
        expected = kit_induction_pattern(x, d)
        compare(got, expected, case=case, what="the pattern", atol=0, rtol=0, mistakes=[
            (_pattern(x, 0), "that matches the key's own token, x[s] == x[t]: the pattern one "
             "attention layer reading the tokens can make. The induction head's key holds the "
             "token d *before* s, x[s - d], which only a layer before it can have written there."),
            (_pattern(x, -d), "x[s + d] lies after the key; the key must *follow* the earlier "
             "occurrence: x[s - d] == x[t]."),
            (_pattern(x, d - 1), "one position off: the token d before the key is x[s - d]."),
            (_pattern(x, d + 1), "one position off: the token d before the key is x[s - d]."),
            (_pattern(x, 1), "use d: the token d positions before the key, x[s - d] (here "
             f"d = {d})."),
            (_pattern(x, d, wrap=True), "the keys s < d have no token d before them: "
             "torch.roll wraps the last tokens around to the front; mask s < d out."),
            (_pattern(x, d, causal=False), "causal: the query at t sees the keys s <= t only."),
            (_pattern(x, d, strict=True), "the key s = t is allowed: where x[t - d] == x[t], "
             "the query's own position is d after an earlier x[t]."),
            (expected.T, "transposed: rows are queries t, columns keys s."),
        ], hint="shift the tokens by d, before[s] = x[s - d] for s >= d, compare "
                "before[None, :] == x[:, None], then keep d <= s <= t.")
    return "8 unseen sequences with repeated tokens, d = 1 and larger"


# ----------------------------------------------------------------------------- 14.3

def kit_paths(m: int, n: int) -> list[int]:
    """Entry k: the paths of Para-Former-m-n's unrolled residual stream through exactly k
    branches, counted one by one: each stage takes its skip (0) or one of its n branches."""
    counts = [0] * (m + 1)
    for choice in itertools.product(range(n + 1), repeat=m):
        counts[sum(c > 0 for c in choice)] += 1
    return counts


@exercise("14.3", "the paths through an unrolled Para-Former-m-n",
          "a function paths(m, n) returning a list of m + 1 ints: entry k is the number of "
          "paths through the residual stream of Para-Former-m-n (m stages of n branches) that "
          "pass through exactly k branches, k = 0..m, where at every stage a path takes the "
          "skip or one of the n branches")
def paths(answer) -> str:
    for i, g in cases(8):
        m, n = {1: (2, 1), 2: (1, 2)}.get(i) or (pick((1, 2, 3, 4, 5), g), pick((1, 2, 3, 4, 6), g))
        case = f"case {i}: Para-Former-{m}-{n}" + (" (GPT-2)" if (m, n) == (2, 1) else "")
        got = call(answer, m, n, case=case)
        if isinstance(got, (torch.Tensor, np.ndarray)) and got.ndim == 1:
            got = list(got)
        if not isinstance(got, (list, tuple)):
            raise BadAnswer(f"on {case} it returned {type(got).__name__} {got!r:.40}, not a list "
                            f"of m + 1 = {m + 1} counts (one for each k = 0..m).")
        got = torch.tensor(as_numbers(got, len(got), f"the counts on {case}"), dtype=F64)
        expected = torch.tensor(kit_paths(m, n), dtype=F64)
        if len(got) != m + 1:
            why = {m * n + 1: "m n + 1 entries: GPT-(m n)'s count of layers. A path passes through "
                              "at most one branch of a stage, so at most m branches in all.",
                   m: "entry 0 counts too: the one path through no branch (the skip everywhere)."}
            raise Wrong(f"the counts have {len(got)} entries on {case}; expected m + 1 = {m + 1} "
                        f"(k = 0..{m}).", why.get(len(got), "one entry for each k = 0..m."))
        k = torch.arange(m + 1, dtype=F64)
        compare(got, expected, case=case, what="the counts", atol=0, rtol=0, mistakes=[
            (torch.tensor([float(n) ** j for j in range(m + 1)], dtype=F64),
             "which k of the m stages the path goes through can be chosen in C(m, k) ways; "
             "n ** k counts the branch choices only."),
            (torch.tensor([float(math.comb(m, j)) for j in range(m + 1)], dtype=F64),
             "at a stage the path may go through any one of its n branches: C(m, k) times n ** k."),
            (torch.tensor([float(math.comb(m * n, j)) for j in range(m + 1)], dtype=F64),
             "those are GPT-(m n)'s paths: m n layers in series. The n branches of one stage sit "
             "side by side, all reading the same input, so a path passes through at most one "
             "of them."),
            (expected.flip(0), "entry 0 is the single path through no branch (the skip at every "
             "stage); entry m the n ** m paths through one branch of every stage."),
            (expected * (k > 0), "entry 0 counts too: the skip at every stage is one path, x0 "
             "itself."),
        ], hint="choose which k of the m stages the path passes through a branch (C(m, k) "
                "ways), then one of n branches at each of them; the counts add up to (n + 1) ** m.")
    return "8 (m, n), GPT-2 and Para-Former-1-2 among them"
