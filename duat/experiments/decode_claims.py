"""The claims table's row for decoding: claim 5.2 asked of a causal Para-Former, per token.

`duat bench --preset decode` times GPT-n against causal Para-Former-1-n with a KV cache
(docs/method.md section 9). Its row reads the committed run as rule B reads a vision
latency run: at the largest n, for every (batch, D), is Para-Former-1-n within the flat
limit of Para-Former-1-1 while the serial GPT-n grows past it?
"""
from __future__ import annotations

import math

from duat.bench.decode_model import decode_grid
from duat.experiments.verdicts import THRESHOLDS, Claim, device_label, share_verdict

DECODE = ("Per-token decoding with a KV cache does not grow with the parallel layers "
          "(causal Para-Former-1-n), while the serial GPT-n's grows (the kit's extension to language)")


def is_decode(res: dict) -> bool:
    return res.get("kind") == "decode"


def decode_claim(res: dict, name: str) -> Claim:
    """Rule B on a decode run: each (variant, batch, D) at the largest n."""
    flat, cases = THRESHOLDS["flat"], []     # (text, ratio, flat, serial grows)
    for variant in sorted({r["variant"] for r in res["records"]}):
        for batch in sorted({r["batch"] for r in res["records"] if r["variant"] == variant}):
            g = decode_grid(res, batch, variant)
            j = len(g["ns"]) - 1
            for i, dim in enumerate(g["dims"] if g["ns"][0] == 1 and j > 0 else []):
                pf, gpt = float(g["pf"][i, j]), float(g["gpt"][i, j])
                if math.isnan(pf) or math.isnan(gpt):
                    continue
                text = (f"batch {batch}, D {dim}{'' if variant == 'eager' else ', ' + variant}: "
                        f"{pf:.2f}x [{g['pf_low'][i, j]:.2f}-{g['pf_high'][i, j]:.2f}] (GPT {gpt:.1f}x)")
                cases.append((text, pf, pf <= flat, bool(g["gpt_low"][i, j] > flat)))
    hits = sum(c[2] and c[3] for c in cases)
    closest = min(cases, key=lambda c: c[1]) if cases else None
    others = [c[1] for c in cases if c is not closest]
    n = max(r["layers"] for r in res["records"] if r["implementation"] == "pf")
    text = (f"per token, causal Para-Former-1-{n} / Para-Former-1-1 [range]: flat with GPT-{n} "
            f"growing in {hits} of {len(cases)} cases; closest: {closest[0] if closest else '-'}"
            + (f"; elsewhere {min(others):.2f}x to {max(others):.2f}x" if others else ""))
    env = res["environment"]
    return Claim(f"decode:{name}", DECODE, "method.md 5.2, 9", text,
                 f"{device_label(env)}, {env.get('threads', '?')} threads",
                 "timings: medians over every decode step", share_verdict(hits, len(cases)), "B",
                 f"notebook 13 · duat/results/bench/{name}")
