"""Exercises of notebook 13 (decoding a causal Para-Former, duat.language): the causal mask
of a block of new tokens over a KV cache, and the bytes one decode step must read."""
from __future__ import annotations

import torch

from duat.exercises.core import BadAnswer, Wrong, call, cases, compare, exercise, pick
from duat.language import KVCache, ParaFormerLM, ParaFormerLMConfig

F64 = torch.float64
DTYPES = {4: torch.float32, 2: torch.bfloat16}   # bytes per number -> a dtype of that size


def _kit_mask(p: int, T: int, S: int) -> torch.Tensor:
    """The rows the kit's forward hands its attention: cache.mask[positions] (duat.language)."""
    mask = torch.ones(S, S, dtype=torch.bool).tril()          # KVCache.mask: row t sees 0..t
    return mask[torch.arange(p, p + T)]                       # (T, S)


def _rows_seeing(last: torch.Tensor, S: int) -> torch.Tensor:
    """(T, S) bool: row r true at the key positions s <= last[r]."""
    return torch.arange(S)[None, :] <= last[:, None]


@exercise("13.1", "the causal mask of new tokens over a KV cache",
          "a function causal_mask(p, T, S) returning a bool tensor of shape (T, S), True where "
          "the query at position p + t (t = 0..T-1) may attend to the key at position s: s <= p + t")
def causal_mask(answer) -> str:
    for i, g in cases(8):
        S = int(torch.randint(6, 24, (1,), generator=g))
        T = 1 if i % 3 == 0 else int(torch.randint(2, 6, (1,), generator=g))  # decode and prefill
        p = int(torch.randint(1, S - T + 1, (1,), generator=g))               # p >= 1: a cache in use
        case = f"case {i}: p = {p}, T = {T}, S = {S}"
        got = call(answer, p, T, S, case=case)
        if not isinstance(got, torch.Tensor):
            raise BadAnswer(f"on {case} it returned {type(got).__name__}, not a torch.Tensor.")
        if got.shape == (T, S) and got.dtype != torch.bool:
            raise Wrong(f"the mask on {case} has dtype {got.dtype}; expected torch.bool.",
                        "scaled_dot_product_attention adds a float mask to the scores (0 and 1 "
                        "would let every position through); return a bool tensor: True = may see.")
        expected = _kit_mask(p, T, S)
        queries = torch.arange(p, p + T)
        compare(got, expected, case=case, what="the mask", atol=0, rtol=0, mistakes=[
            (_rows_seeing(torch.arange(T), S),
             "the queries sit at positions p .. p + T - 1, not 0 .. T - 1: row t is the query "
             "at p + t, which sees the p cached positions before the block too."),
            (_rows_seeing(queries - 1, S),
             "a token attends to itself too: s <= p + t, not s < p + t."),
            (~expected, "inverted: True marks a position the query may see (the convention of "
             "scaled_dot_product_attention's bool mask); masked_fill's mask is the opposite."),
            (_rows_seeing(queries + 1, S), "one position too far: row t sees s <= p + t."),
            (_rows_seeing(torch.full((T,), p + T - 1), S),
             "every query of the block sees the whole block: the mask is causal inside the block "
             "too (row t stops at p + t)."),
        ], hint="build it from two index vectors: key positions s = arange(S) as a row, query "
                "positions p + arange(T) as a column, and compare s <= query.")
    return "8 unseen (p, T, S), decode steps (T = 1) and prompt blocks"


def _model(c: ParaFormerLMConfig, bytes_per_number: int) -> ParaFormerLM:
    with torch.device("meta"):                         # shapes and dtypes only, no numbers
        return ParaFormerLM(c).to(DTYPES[bytes_per_number])


def _config(g: torch.Generator) -> ParaFormerLMConfig:
    heads = pick((1, 2, 4, 6), g)
    return ParaFormerLMConfig(vocab_size=pick((50, 96, 257, 1000), g), positions=pick((16, 40, 64), g),
                              dim=heads * pick((4, 8, 16), g), heads=heads,
                              mlp_ratio=pick((2.0, 3.0, 4.0), g), depth=pick((1, 2, 3), g),
                              width=pick((1, 2, 4, 6), g))


@exercise("13.2", "the bytes one decode step must read",
          "a function decode_bytes(config, t, batch, bytes_per_number) returning the pair "
          "(weight_bytes, cache_bytes): every parameter of a ParaFormerLM with that "
          "ParaFormerLMConfig (its fields depth, width, dim, heads, hidden_dim, vocab_size, "
          "positions; qkv biases on), the position table at one row, and the keys and values "
          "of t cached positions for `batch` sequences, at bytes_per_number bytes a number")
def decode_bytes(answer) -> str:
    for i, g in cases(8):
        c = _config(g)
        t = int(torch.randint(1, c.positions + 1, (1,), generator=g))
        batch, size = pick((1, 1, 2, 4), g), pick((4, 2), g)
        case = (f"case {i}: depth {c.depth}, width {c.width}, dim {c.dim}, heads {c.heads}, "
                f"hidden_dim {c.hidden_dim}, vocab_size {c.vocab_size}, positions {c.positions}; "
                f"t = {t}, batch {batch}, {size} bytes a number")
        got = call(answer, c, t, batch, size, case=case)
        model = _model(c, size)
        D, V, S, L = c.dim, c.vocab_size, c.positions, c.depth * c.width
        every = sum(p.numel() * p.element_size() for p in model.parameters())
        weights = every - size * (S - 1) * D                     # the position table: one row
        cache = KVCache(model, batch, positions=t).nbytes()     # the kit's own cache, t positions
        expected = torch.tensor([weights, cache], dtype=F64)
        per_layer = (weights - size * (V * D + D + 2 * D)) / L
        mistakes = [
            (torch.tensor([weights, 0.0], dtype=F64), "the cache is read too: every causal "
             "layer's keys and values at the t positions so far."),
            (torch.tensor([weights, cache / 2], dtype=F64), "keys and values: two numbers of "
             "width D per position, layer and sequence."),
            (torch.tensor([weights, cache * S / t], dtype=F64), "the t positions cached so far, "
             "not the positions the cache was made for (the least a step must read)."),
            (torch.tensor([every, cache], dtype=F64), "a step reads one row of the position "
             "table, its own position's, not all S_max of them."),
            (torch.tensor([weights + size * V * D, cache], dtype=F64), "the head is the token "
             "embedding, tied: its V x D numbers are one parameter, counted once."),
            (torch.tensor([weights * batch, cache], dtype=F64), "the weights are read once for "
             "the whole batch; only the cache grows with it."),
            (torch.tensor([weights - per_layer * (L - c.depth), cache / c.width], dtype=F64),
             "every stage has n = width branches, each with its own weights and its own keys "
             "and values: depth x width causal layers."),
            (expected / size, "in bytes: multiply the numbers by bytes_per_number."),
        ]
        compare(got, expected, case=case, what="(weight_bytes, cache_bytes)", atol=0.5, rtol=0,
                mistakes=mistakes,
                hint="per causal layer: two norms (2D each), qkv (3D x D + 3D), the output "
                     "projection (D x D + D), the MLP (H x D + H and D x H + D); around them "
                     "the token table V x D (the head too), one row of the position table (D) "
                     "and the final norm 2D. The cache: 2 x layers x batch x t x D numbers.")
    return "8 unseen configurations, cache lengths, batches and number sizes"
