"""How the claims table judges: the thresholds (data), the rules that use them, one typed
record per claim, and the table as Markdown or text (duat.experiments.claims fills it).

Every verdict is one of VERDICTS and is computed, never typed: `verdict_of` for
differences of means over seeds (rule A), `share_verdict` for cases that either hold or
not (rules B, C), `compression_verdict` (rule D); `cap` lowers a verdict to "partly" when
a control is missing or the design is confounded. RULES states each rule in words, with
the thresholds of THRESHOLDS written in, and is printed under the table.
"""
from __future__ import annotations

import math
import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path

from duat.bench.regime import FLAT_LIMIT
from duat.locations import in_checkout, packaged

HOLDS, PARTLY, DOES_NOT, NOT_TESTED = "holds", "partly", "does not", "not tested here"
VERDICTS = (HOLDS, PARTLY, DOES_NOT, NOT_TESTED)

THRESHOLDS = {
    "spread": 2.0,            # a difference of two means counts beyond 2 x the larger seed sd
    "pooled_se": 2.0,         # paired runs pooled: their mean difference beyond 2 standard errors
    "min_pairs": 6,           # ... and at least 6 pairs
    "flat": FLAT_LIMIT,       # latency: Para-Former-1-n_max within 1.5x Para-Former-1-1
    "within": 0.01,           # compression: kept branches within 1 point of the whole model
    "compress_min": 2.0,      # compression counts from 2x fewer parameters
    "compress_paper": 15.07,  # the follow-up's reported compression (its claim, not the kit's)
    "solved": 0.9,            # composition: a task counts as learnt from this held-out accuracy
}


@dataclass(frozen=True)
class Rule:
    key: str
    name: str
    text: str


@dataclass(frozen=True)
class Claim:
    """One row of the table."""
    key: str           # stable id (tests, links)
    claim: str
    source: str        # docs/method.md section
    measured: str      # the kit's numbers, with their spread
    device: str
    seeds: str
    verdict: str       # one of VERDICTS
    rule: str          # the key of the RULES entry that computed it
    where: str         # notebook and results folder


def rules() -> tuple[Rule, ...]:
    """The rules, in words, with the current THRESHOLDS written in."""
    t = THRESHOLDS
    return (
        Rule("A", "means over seeds",
             f"A difference of two means counts when it exceeds {t['spread']:g} x the larger of "
             f"their seed sds (and one test image, where the test size is recorded); paired runs "
             f"(same seed and data) count pooled when their mean difference exceeds "
             f"{t['pooled_se']:g} standard errors (at least "
             f"{t['min_pairs']} pairs). holds: every comparison counts, or the pooled pairs do "
             f"and no comparison is <= 0; partly: some comparison or the pooled pairs count; "
             f"does not: none counts (the claim is not seen at this spread). A missing control "
             f"or a confounded design caps the verdict at partly."),
        Rule("B", "latency against n",
             f"Per (batch, width) case of a run, at its largest n: Para-Former-1-n is flat when "
             f"its median time is at most {t['flat']:g}x Para-Former-1-1's; the serial ViT-n "
             f"grows when ViT-n / ViT-1 exceeds {t['flat']:g} even at the low end of its range "
             f"(from the interquartile ranges). holds: both in every case; partly: in some; "
             f"does not: in none. No serial model timed caps the verdict at partly."),
        Rule("C", "speed-up across processes",
             "A split over processes is faster when one process's time / the split's exceeds 1 "
             "even at the low end of its range (p25 / p75). holds: in every case; partly: in "
             "some; does not: in none."),
        Rule("D", "compression",
             f"The largest parameter ratio of a model keeping k of n branches whose mean accuracy "
             f"is within {t['within']:g} of the whole model's. holds: at least the follow-up's "
             f"{t['compress_paper']:g}x; partly: at least {t['compress_min']:g}x; does not: less."),
        Rule("E", "exact",
             "An exact identity or an exact keep: holds when it is exact in every committed case "
             "(and the kit's tests check it to float rounding); does not otherwise."),
        Rule("F", "not measured", "No committed result measures the claim: not tested here."),
        Rule("G", "what one stage cannot compose",
             f"Per composed task (induction, MQAR) and sequence length, tested where a serial "
             f"GPT-L (L >= 2) learns it (mean held-out accuracy >= {t['solved']:g}): held when "
             f"every model with two or more stages in series learns it and every "
             f"Para-Former-1-n stays below that even at its mean + {t['spread']:g} sd; partly "
             f"when the one-stage models stay below but a Para-Former-m-n (m >= 2) does not "
             f"learn it either; did not hold when a Para-Former-1-n comes within its spread. "
             f"holds: held in every tested case; partly: held or partly in some; does not: in "
             f"none. A control task that some model did not learn caps the verdict at partly."),
    )


# ----------------------------------------------------------------------------- judging

@dataclass(frozen=True)
class Comparison:
    """One difference of two means, A - B, where the claim says A > B."""
    label: str
    diff: float
    sd: float            # the larger seed sd of A and B
    unit: float = 0.0    # the smallest resolvable difference (one test image)

    @property
    def threshold(self) -> float:
        return max(THRESHOLDS["spread"] * self.sd, self.unit)

    @property
    def counts(self) -> bool:
        return self.diff > self.threshold


@dataclass(frozen=True)
class Pooled:
    """Paired differences A - B (one per seed and data variant), pooled."""
    n: int
    mean: float
    se: float

    @classmethod
    def of(cls, diffs) -> Pooled:
        d = [float(x) for x in diffs]
        se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.inf
        return cls(len(d), statistics.fmean(d) if d else 0.0, se)

    @property
    def counts(self) -> bool:
        return self.n >= THRESHOLDS["min_pairs"] and self.mean > THRESHOLDS["pooled_se"] * self.se


def verdict_of(points: list[Comparison], pooled: Pooled | None = None) -> str:
    """Rule A, from comparisons of means and (optionally) their pooled pairs."""
    if not points:
        return NOT_TESTED
    pooled_counts = pooled is not None and pooled.counts
    if all(p.counts for p in points) or (pooled_counts and all(p.diff > 0 for p in points)):
        return HOLDS
    if any(p.counts for p in points) or pooled_counts:
        return PARTLY
    return DOES_NOT


def cap(verdict: str) -> str:
    """No stronger than partly (a missing control, a confounded design)."""
    return PARTLY if verdict == HOLDS else verdict


def share_verdict(hits: int, cases: int) -> str:
    """Rules B and C: holds in every case, partly in some, does not in none."""
    return NOT_TESTED if not cases else HOLDS if hits == cases else PARTLY if hits else DOES_NOT


def compression_verdict(ratio: float) -> str:
    """Rule D."""
    return (HOLDS if ratio >= THRESHOLDS["compress_paper"] else
            PARTLY if ratio >= THRESHOLDS["compress_min"] else DOES_NOT)


def judged(points: list[Comparison], pooled: Pooled | None = None) -> str:
    """How many comparisons count, and the pooled pairs: the spread a rule-A verdict used."""
    text = f"{sum(p.counts for p in points)} of {len(points)} comparisons count"
    if pooled is not None and pooled.n:
        text += f"; pooled {signed(pooled.mean)} (SE {pooled.se:.3f}, {pooled.n} pairs)"
    return text


# ----------------------------------------------------------------------------- formatting

def signed(x: float) -> str:
    """+0.012, -0.003; never -0.000."""
    return f"{0.0 if abs(x) < 5e-4 else x:+.3f}"


def span(points: list[Comparison]) -> str:
    """The smallest to the largest difference of some comparisons."""
    return f"{signed(min(p.diff for p in points))} to {signed(max(p.diff for p in points))}"


def mean_sd(mean: float, sd: float) -> str:
    return f"{mean:.3f} (sd {sd:.3f})"


def device_label(env: dict) -> str:
    """The device of a run, from its recorded environment."""
    if env.get("device") == "cuda":
        return f"GPU, {env.get('device_name', 'CUDA')}"
    cores = f" ({env['cpu_count']} cores)" if env.get("cpu_count") else ""
    return f"CPU, {env.get('cpu') or env.get('device_name', '?')}{cores}"


def missing(key: str, claim: str, source: str, name: str, where: str) -> Claim:
    """The row of a claim whose results folder is missing."""
    return Claim(key, claim, source, f"no committed results in duat/results/{name}", "-", "-",
                 NOT_TESTED, "F", where)


# ----------------------------------------------------------------------------- rendering

CLAIMS_BEGIN, CLAIMS_END = "<!-- claims:begin -->", "<!-- claims:end -->"


def sweep_missing(name: str, where: str, data: tuple[str, str], width: tuple[str, str]) -> list[Claim]:
    """A data sweep's two rows (the data's effect, 5.3; width at each data variant, 5.1 and
    5.3) when its committed results are missing."""
    return [missing(*data, "method.md 5.3", name, where),
            missing(*width, "method.md 5.1, 5.3", name, where)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(claims: list[Claim]) -> str:
    """The table and its rules as Markdown (the README's block between the claims markers)."""
    lines = ["| # | claim | source | the kit's measurement | device | seeds | verdict | where |",
             "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(claims, 1):
        cells = (str(i), c.claim, c.source, c.measured, c.device, c.seeds,
                 f"**{c.verdict}** ({c.rule})", c.where)
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    lines += ["", "| rule | | how the verdict is computed |", "|---|---|---|"]
    lines += [f"| {r.key} | {r.name} | {_cell(r.text)} |" for r in rules()]
    return "\n".join(lines) + "\n"


def to_text(claims: list[Claim], width: int = 100) -> str:
    """The table as plain text, one block per claim, then the rules."""
    out = []
    for i, c in enumerate(claims, 1):
        out.append(textwrap.fill(f"{i:2d}. [{c.verdict}] {c.claim}", width, subsequent_indent="    "))
        for label, value in (("source", f"{c.source} · device: {c.device} · seeds: {c.seeds}"),
                             ("measured", c.measured), ("rule", f"{c.rule} · where: {c.where}")):
            out.append(textwrap.fill(f"{label}: {value}", width, initial_indent="    ",
                                     subsequent_indent="      "))
    out += ["", "rules:"]
    out += [textwrap.fill(f"{r.key} ({r.name}): {r.text}", width, initial_indent="  ",
                          subsequent_indent="    ") for r in rules()]
    return "\n".join(out)


def readme_block(markdown: str) -> str:
    return (f"{CLAIMS_BEGIN}\n<!-- generated by `duat claims --write-readme` from the committed "
            f"results: do not edit by hand -->\n\n{markdown}{CLAIMS_END}")


def replace_block(text: str, markdown: str) -> str:
    """`text` (a README) with its claims block replaced by one made from `markdown`."""
    start, end = text.find(CLAIMS_BEGIN), text.find(CLAIMS_END)
    if start < 0 or end < start:
        raise ValueError(f"no {CLAIMS_BEGIN} ... {CLAIMS_END} block to replace")
    return text[:start] + readme_block(markdown) + text[end + len(CLAIMS_END):]


def current_block(text: str) -> str | None:
    """The claims block of `text` as it stands (None when it has none)."""
    start, end = text.find(CLAIMS_BEGIN), text.find(CLAIMS_END)
    return None if start < 0 or end < start else text[start:end + len(CLAIMS_END)]


def readme_path() -> Path:
    """README.md of a source checkout (an installed kit has none to rewrite)."""
    if not in_checkout():
        raise FileNotFoundError("duat is not imported from a source checkout: give the README to rewrite")
    return packaged().parents[1] / "README.md"
