"""Sequence tasks for causal language models: what one parallel stage can and cannot compose.

A Para-Former stage sums n branches that all read the same input, so its attention layers
cannot feed one another. Some tasks need exactly that: an *induction head* finds the earlier
copy of the current token a in one attention layer and copies the token after it, b, in a
second that reads the first one's output. This module makes such tasks, offline and seeded,
for duat.language.ParaFormerLM (tokens (B, T) int64 -> logits (B, T, V)):

    induction   [a][b] ... [a] -> b: two attention layers in series (an induction head)
    mqar        k1 v1 ... kK vK, then each key again -> its value (multi-query associative
                recall, Zoology, Arora et al. 2023): also two layers in series
    copy        the token `offset` back from the next position: one attention layer suffices
                (it attends by position alone), the control
    text        a character-level corpus (load_text): Python's own documentation by default

Every task gives inputs x (N, T) int64 and targets y (N, T) int64: y[:, t] is what the
model must predict at position t, having seen x[:, :t+1], and IGNORE (-100,
F.cross_entropy's ignore_index) marks the positions that are not scored.

    task = SequenceTask("induction", length=32, vocab_size=16)
    x, y = task.generate(4096, seed=0)              # the same tensors on every machine
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE)

Generation draws on a CPU torch.Generator with integer operations only, so a seed gives the
same sequences everywhere. SequenceLoader batches (x, y) like duat.data.BatchLoader.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from pydoc_data.topics import topics   # the documentation text that ships with every Python
from torch import Tensor

from duat.checks import real, whole

IGNORE = -100
TASKS = ("induction", "mqar", "copy", "text")


# ----------------------------------------------------------------------------- synthetic tasks

def _check(name: str, count: int, length: int, vocab_size: int, pairs: int = 1,
           offset: int = 1) -> tuple[int, int, int, int, int]:
    """The arguments as ints (N, T, V, K, offset); ValueError naming the minimum where the
    length or the vocabulary cannot hold the task's pattern."""
    N, T, V = whole("count", count), whole("length", length), whole("vocab_size", vocab_size)
    K, offset = whole("pairs", pairs), whole("offset", offset)
    if name == "induction":
        if V < K + 2:
            raise ValueError(f"induction with K={K} pairs needs vocab_size >= K + 2 = {K + 2} "
                             f"(K + 1 distinct tokens in the repeated segment, and one for the "
                             f"rest), got {V}")
        if T < 2 * K + 3:
            raise ValueError(f"length {T} is a sequence length below the pattern: induction "
                             f"with K={K} pairs needs length >= 2K + 3 = {2 * K + 3}")
    elif name == "mqar":
        if V // 2 - 1 < K or V - V // 2 < K:
            raise ValueError(f"mqar needs at least K keys and K values: vocab_size >= "
                             f"{2 * K + 2} for K={K} pairs, got {V}")
        if T < 3 * K:
            raise ValueError(f"length {T} is a sequence length below the pattern: mqar with "
                             f"K={K} pairs needs length >= 3K = {3 * K}")
    elif name == "copy":
        if V < 2:
            raise ValueError(f"copy needs vocab_size >= 2, got {V}")
        if T <= offset:
            raise ValueError(f"copy needs length >= offset + 1 = {offset + 1}, got {T}")
    return N, T, V, K, offset


def _permutations(rows: int, n: int, generator: torch.Generator) -> Tensor:
    """`rows` independent random permutations of range(n), (rows, n): the stable order of
    random 62-bit integers."""
    return torch.randint(0, 2 ** 62, (rows, n), generator=generator).argsort(dim=1, stable=True)


def induction(count: int, length: int, vocab_size: int, pairs: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """[a][b] ... [a] -> b, `pairs` = K times per sequence. A segment s of K + 1 distinct
    tokens occurs twice: at a random p, and again at a random q > p + K + 1 (so the gap
    between the copies varies and no fixed position tells where to look); every other token
    is uniform over the vocabulary without s. In the second copy, position q + j holds
    a = s[j], and its target is the token after a's first occurrence, b = s[j + 1]: the K
    positions q .. q + K - 1 are scored. Neither a nor b occurs anywhere else.
    K = 1 is the single pattern [a][b] ... [a] -> b. A lookup of the current token scores
    about 1/(V - K - 1); one attention layer can do better by guessing among the tokens
    seen twice or once, but not the rule itself (it needs two layers in series)."""
    N, T, V, K, _ = _check("induction", count, length, vocab_size, pairs=pairs)
    L = K + 1                                                          # segment length
    order = _permutations(N, V, generator)                             # (N, V) tokens, shuffled
    s, rest = order[:, :L], order[:, L:]                               # (N, L) segment, (N, V - L)
    pick = torch.randint(0, V - L, (N, T), generator=generator)        # (N, T)
    x = rest.gather(1, pick)                                           # filler: uniform over V \ s
    q = torch.randint(L + 1, T - L + 1, (N, 1), generator=generator)   # (N, 1) second copy
    p = torch.randint(0, 2 ** 62, (N, 1), generator=generator) % (q - L)   # (N, 1) in [0, q - L - 1]
    j = torch.arange(L)                                                # (L,)
    x.scatter_(1, p + j, s).scatter_(1, q + j, s)
    y = torch.full_like(x, IGNORE)                                     # (N, T)
    y.scatter_(1, q + j[:K], s[:, 1:])                                 # at a = s[j]: b = s[j + 1]
    return x, y


def mqar(count: int, length: int, vocab_size: int, pairs: int,
         generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Multi-query associative recall. Keys come from [1, V//2), values from [V//2, V), token
    0 is a filler. A sequence starts k1 v1 ... kK vK with K distinct keys and K distinct
    values; then every key occurs once more, in a random order at random distinct positions
    in [2K, T), the rest being filler. The K query positions are scored, each with its key's
    value. Guessing among the K values in the sequence scores 1/K."""
    N, T, V, K, _ = _check("mqar", count, length, vocab_size, pairs=pairs)
    half = V // 2
    k = 1 + _permutations(N, half - 1, generator)[:, :K]               # (N, K) keys
    v = half + _permutations(N, V - half, generator)[:, :K]            # (N, K) values
    q = 2 * K + _permutations(N, T - 2 * K, generator)[:, :K]          # (N, K) where k is asked
    x = torch.zeros(N, T, dtype=torch.int64)                           # (N, T)
    x[:, 0:2 * K:2], x[:, 1:2 * K:2] = k, v
    x.scatter_(1, q, k)
    y = torch.full_like(x, IGNORE).scatter_(1, q, v)                   # (N, T)
    return x, y


def copy_back(count: int, length: int, vocab_size: int, offset: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform random tokens; at position t the target is the token `offset` positions back
    from the next one, y[:, t] = x[:, t + 1 - offset], scored for t >= offset - 1 (offset 1:
    repeat the current token; offset 2: the previous one), T - offset + 1 positions."""
    N, T, V, _, offset = _check("copy", count, length, vocab_size, offset=offset)
    x = torch.randint(0, V, (N, T), generator=generator)               # (N, T)
    y = torch.full_like(x, IGNORE)                                     # (N, T)
    y[:, offset - 1:] = x[:, :T - offset + 1]
    return x, y


@dataclass(frozen=True)
class SequenceTask:
    """A synthetic task's settings; generate(count, seed) makes its (x, y)."""

    name: str                # "induction" | "mqar" | "copy"
    length: int              # T, tokens per sequence
    vocab_size: int = 16     # V
    pairs: int = 4           # induction: patterns [a][b] ... [a] -> b; mqar: key-value pairs K
    offset: int = 2          # copy: how far back

    def __post_init__(self):
        if self.name == "text":
            raise ValueError("'text' is a corpus, not a synthetic task: use load_text() and "
                             "TextCorpus.windows")
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; tasks: {', '.join(TASKS)}")
        _, T, V, K, offset = _check(self.name, 1, self.length, self.vocab_size,
                                    self.pairs, self.offset)
        for name, value in (("length", T), ("vocab_size", V), ("pairs", K), ("offset", offset)):
            object.__setattr__(self, name, value)       # NumPy ints become Python ints

    def generate(self, count: int, seed: int) -> tuple[Tensor, Tensor]:
        """`count` sequences (x, y), both (count, length) int64; the same for a seed everywhere."""
        g = torch.Generator().manual_seed(whole("seed", seed, minimum=0))
        if self.name == "induction":
            return induction(count, self.length, self.vocab_size, self.pairs, g)
        if self.name == "mqar":
            return mqar(count, self.length, self.vocab_size, self.pairs, g)
        return copy_back(count, self.length, self.vocab_size, self.offset, g)

    def scored(self) -> str:
        """One line: which positions are scored, and with what."""
        T, K, o = self.length, self.pairs, self.offset
        if self.name == "induction":
            return (f"{K} of {T} positions: the second copy of the repeated segment, each with "
                    f"the token after its first occurrence as target")
        if self.name == "mqar":
            return f"{K} of {T} positions: each key's second occurrence, whose target is its value"
        return (f"{T - o + 1} of {T} positions: t >= {o - 1}, whose target is the token "
                f"{o} back from the next, x[t + 1 - {o}]")

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- text

@dataclass
class TextCorpus:
    """Characters of a text, their vocabulary (sorted distinct characters), encode/decode."""

    text: str = field(repr=False)
    name: str = "text"
    chars: list[str] = field(init=False)

    def __post_init__(self):
        self.chars = sorted(set(self.text))
        self._index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str) -> Tensor:
        """The ids of the characters of `s`, (len(s),) int64."""
        unknown = set(s) - self._index.keys()
        if unknown:
            raise ValueError(f"characters not in the vocabulary of {self.name}: "
                             f"{''.join(sorted(unknown))!r}")
        return torch.tensor([self._index[c] for c in s], dtype=torch.int64)

    def decode(self, ids: Tensor | list[int]) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.chars)]
        if bad:
            raise ValueError(f"ids must be in [0, {len(self.chars)}), got {bad[0]}")
        return "".join(self.chars[i] for i in ids)

    def split(self, held_out: float = 0.1) -> tuple[Tensor, Tensor]:
        """(train, held-out) ids, contiguous: the first 1 - held_out of the text, then the rest."""
        held_out = real("held_out", held_out, 0, 1, low_open=True, high_open=True)
        ids = self.encode(self.text)                                   # (L,)
        cut = len(ids) - round(held_out * len(ids))
        if not 0 < cut < len(ids):
            raise ValueError(f"held_out={held_out} leaves one part of the {len(ids)} "
                             f"characters empty")
        return ids[:cut], ids[cut:]

    def windows(self, ids: Tensor, length: int, count: int | None = None,
                seed: int = 0) -> tuple[Tensor, Tensor]:
        """Windows x (N, length) of `ids` and their next characters y (N, length), every
        position scored. count None: all non-overlapping windows, in order; else `count`
        windows at random starts drawn with `seed`."""
        T = whole("length", length)
        L = ids.numel()
        if L < T + 1:
            raise ValueError(f"the ids hold {L} characters, fewer than length + 1 = {T + 1}")
        if count is None:
            N = (L - 1) // T
            return ids[:N * T].view(N, T), ids[1:N * T + 1].view(N, T)
        g = torch.Generator().manual_seed(whole("seed", seed, minimum=0))
        start = torch.randint(0, L - T, (whole("count", count), 1), generator=g)  # (N, 1)
        at = start + torch.arange(T)                                   # (N, T)
        return ids[at], ids[at + 1]


def load_text(path: str | os.PathLike | None = None, *, min_length: int = 2) -> TextCorpus:
    """A character corpus: the UTF-8 file at `path`, or None for the documentation text that
    ships with every Python (pydoc_data.topics, about 465,000 characters). `min_length`:
    the fewest characters accepted (callers pass their context length + 1)."""
    min_length = whole("min_length", min_length)
    if path is None:
        corpus = TextCorpus("\n".join(topics[k] for k in sorted(topics)), "pydoc_data.topics")
    else:
        shown, p = os.fspath(path), Path(path)
        if p.is_dir():
            raise IsADirectoryError(f"--text needs a file, got the folder {shown}")
        if not p.exists():
            raise FileNotFoundError(f"no file {shown}: --text needs an existing UTF-8 text "
                                    f"file (or none, for Python's own documentation)")
        raw = p.read_bytes()
        if not raw:
            raise ValueError(f"{shown} is empty: --text needs a file with text in it")
        try:
            text = raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as err:
            raise ValueError(f"{shown} is not UTF-8 text (byte {err.start}: "
                             f"0x{raw[err.start]:02x}); save it as UTF-8") from None
        corpus = TextCorpus(text, p.name)
    if len(corpus.text) < min_length:
        raise ValueError(f"the text has {len(corpus.text)} characters, fewer than the context "
                         f"of {min_length - 1} + 1; give a longer text or a shorter context")
    return corpus


# ----------------------------------------------------------------------------- batches

class SequenceLoader:
    """Batches of (x, y) from two tensors, shuffled by a seeded per-epoch generator
    (set_epoch), like duat.data.BatchLoader: the order of epoch e depends on (seed, e) only."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0):
        if x.shape[:1] != y.shape[:1]:
            raise ValueError(f"x and y must hold as many examples, got {len(x)} and {len(y)}")
        if len(x) == 0:
            raise ValueError("cannot make batches from no examples")
        self.x, self.y, self.batch_size = x, y, whole("batch_size", batch_size)
        self.shuffle, self.seed, self.epoch = shuffle, whole("seed", seed, minimum=0), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = whole("epoch", epoch, minimum=0)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


# ----------------------------------------------------------------------------- splits

TEST_SEED = 1_000_003      # the held-out sequences of a synthetic task: the same for every seed


@dataclass
class LanguageSplits:
    """Train / validation / test (x, y) of one task or text, and what they were drawn with;
    the language counterpart of duat.data.DataSplits."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    vocab_size: int
    config: dict                         # the arguments that made these splits
    corpus: TextCorpus | None = field(default=None, repr=False)   # the text's, to decode

    def model_kwargs(self) -> dict:
        """What a ParaFormerLM needs: vocab_size, and positions = the sequence length."""
        return dict(vocab_size=self.vocab_size, positions=self.train[0].shape[1])

    def summary(self) -> dict:
        return {**self.config, "train": len(self.train[0]), "val": len(self.val[0]),
                "test": len(self.test[0])}

    def loaders(self, batch_size: int = 32, seed: int = 0, eval_batch_size: int | None = None):
        """(train, val, test) loaders; only the training one shuffles."""
        eval_bs = eval_batch_size or max(batch_size, 250)
        return (SequenceLoader(*self.train, batch_size, shuffle=True, seed=seed),
                SequenceLoader(*self.val, eval_bs), SequenceLoader(*self.test, eval_bs))


def load_task(name: str, *, length: int, seed: int = 0, vocab_size: int = 32, pairs: int = 4,
              offset: int = 2, text: str | os.PathLike | None = None,
              train_sequences: int = 20000, test_sequences: int = 1000) -> LanguageSplits:
    """A task's splits. Synthetic: `train_sequences` drawn with `seed`; validation and test
    (`test_sequences` each) drawn with seeds that do not change with it. "text": random
    windows of `length` characters from the first 90 % of the text (`text` file, or None for
    Python's documentation), validation and test the non-overlapping windows of the two
    halves of the last 10 %; every position scored."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    config = dict(task=name, length=length, seed=seed)
    if name != "text":
        task = SequenceTask(name, length, vocab_size=vocab_size, pairs=pairs, offset=offset)
        config.update(task.to_dict(), task=name, train_sequences=train_sequences,
                      test_sequences=test_sequences)
        del config["name"]
        return LanguageSplits(task.generate(train_sequences, seed),
                              task.generate(test_sequences, TEST_SEED + 1),
                              task.generate(test_sequences, TEST_SEED), vocab_size, config)
    T = whole("length", length)
    corpus = load_text(text, min_length=T + 1)
    train_ids, held_ids = corpus.split()
    half = held_ids.numel() // 2
    if half < T + 1:
        raise ValueError(f"the text's held-out tenth has {held_ids.numel()} characters, too few "
                         f"for two windows of the context {T} + 1; give a longer text or a "
                         f"shorter context")
    config.update(text=corpus.name, characters=len(corpus.text), vocab_size=corpus.vocab_size,
                  train_sequences=train_sequences)
    return LanguageSplits(corpus.windows(train_ids, T, train_sequences, seed),
                          corpus.windows(held_ids[:half], T), corpus.windows(held_ids[half:], T),
                          corpus.vocab_size, config, corpus)
