"""A causal Para-Former language model, its KV cache, and seeded generation.

The same stages as the image model (duat.paraformer), with a causal flag: token t attends
to tokens 0..t only. Around them, GPT-2's front end and head:

    x = E[tokens] + P[positions]            token and learned position embeddings (B, T, D)
    x = x + sum_i f_i(x)                    m stages of n causal branches
    logits = LN(x) E^T                      final norm, head tied to the embedding (B, T, V)

so the serial GPT-L is ParaFormerLM(depth=L, width=1), exactly as ViT-L is Para-Former-L-1,
and HF GPT-2's weights load one to one (duat.gpt2).

Decoding. `KVCache(model, batch)` preallocates, for every stage, the keys and values of all
n branches, (n, B, heads, S_max, head_dim), on the model's device and dtype. A forward with
the cache writes this call's keys and values in place at their positions and attends to
every cached position up to each query's own (a boolean mask row per position), so

- the prompt (prefill) goes in one call, and each new token in one more: one batched call
  per stage whatever n is;
- the shapes never change from one token to the next (the cache attends over all S_max
  positions, masked), so a decode step can be captured in a CUDA graph (gpt-fast's design):
  `decode_step(tokens, positions)` is that step, with no Python-side checks.

`generate(model, prompt, max_new_tokens, temperature, top_k, seed, branches)` samples with
its own seeded generator (temperature 0: greedy), and works with prefix models (branches=k).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from duat.checks import check_layers, whole
from duat.paraformer import (ACTIVATIONS, STAGES, Block, ParallelStage, ReferenceStage,
                             StagedModel, _init_weights)


@dataclass
class ParaFormerLMConfig:
    vocab_size: int = 96      # V: token ids 0..V-1
    positions: int = 128      # S_max: the longest sequence (prompt + new tokens)
    dim: int = 64             # D, the token width
    heads: int = 4            # attention heads; dim must be a multiple
    mlp_ratio: float = 4.0    # hidden width of each MLP = mlp_ratio * dim (GPT-2: 4)
    depth: int = 1            # m: stages in series
    width: int = 1            # n: parallel causal layers (branches) per stage
    dropout: float = 0.0      # after the embeddings, attention projection and MLP
    attn_dropout: float = 0.0 # on the attention weights
    norm_eps: float = 1e-5    # LayerNorm epsilon (GPT-2's)
    qkv_bias: bool = True
    activation: str = "gelu"  # "gelu" (exact) or "gelu_tanh" (GPT-2's "gelu_new")
    stage: str = "batched"    # "batched" (one call for all n branches) or "reference" (a loop)

    def __post_init__(self):
        for name in ("vocab_size", "positions"):
            setattr(self, name, whole(name, getattr(self, name)))
        check_layers(self, STAGES)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def hidden_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def layers(self) -> int:  # m * n causal layers in all
        return self.depth * self.width

    def to_dict(self) -> dict:
        return asdict(self)


def _causal_block(c: ParaFormerLMConfig) -> Block:
    return Block(c.dim, c.heads, c.mlp_ratio, c.norm_eps, c.qkv_bias, c.dropout, c.attn_dropout,
                 causal=True, activation=c.activation)


class ParaFormerLM(StagedModel):
    """Token and position embeddings -> m stages of n causal branches -> norm -> tied head."""

    def __init__(self, config: ParaFormerLMConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("give either a ParaFormerLMConfig or keyword arguments, not both")
        c = config if config is not None else ParaFormerLMConfig(**kwargs)
        if not isinstance(c, ParaFormerLMConfig):
            raise TypeError(f"config must be a ParaFormerLMConfig, got {type(c).__name__}")
        self.config = c
        self.tok_embed = nn.Embedding(c.vocab_size, c.dim)                   # E: (V, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.positions, c.dim))   # P: (1, S_max, D)
        self.drop = nn.Dropout(c.dropout)
        stages = []
        for _ in range(c.depth):
            blocks = [_causal_block(c) for _ in range(c.width)]
            for block in blocks:
                block.apply(_init_weights)
            stages.append(ParallelStage(blocks) if c.stage == "batched" else ReferenceStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    # -- checks: one clear line for each kind of bad input
    def check_tokens(self, tokens, start: int = 0) -> torch.Tensor:
        """tokens as a (B, T) LongTensor of ids < V, placed at positions start..start+T-1."""
        c = self.config
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"expected integer token ids (torch.long), got {tokens.dtype}")
        if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise ValueError(f"expected token ids of shape (batch, T) with batch, T >= 1, got "
                             f"shape {tuple(tokens.shape)}")
        if start + tokens.shape[1] > c.positions:
            raise ValueError(f"{start + tokens.shape[1]} tokens do not fit the model's "
                             f"{c.positions} positions")
        low, high = tokens.min().item(), tokens.max().item()
        if low < 0 or high >= c.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{c.vocab_size - 1}")
        return tokens.long()

    def forward(self, tokens: torch.Tensor, branches: int | None = None,
                cache: "KVCache | None" = None) -> torch.Tensor:
        """Logits (B, T, V) of the next token at every position. `branches` = k: the prefix
        model (each stage's first k branches). With a cache: these tokens come after the
        ones already in it (cache.length of them), and their keys and values are added."""
        k = self.check_branches(branches)
        if cache is None:
            tokens = self.check_tokens(tokens)
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            return self._logits(tokens, positions, k, None)
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache, got {type(cache).__name__}")
        tokens = self.check_tokens(tokens)
        cache.check(self, tokens.shape[0], tokens.shape[1])               # e.g. a cache overflow
        positions = torch.arange(cache.length, cache.length + tokens.shape[1], device=tokens.device)
        logits = self._logits(tokens, positions, k, cache)
        cache.length += tokens.shape[1]
        return logits

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, cache: "KVCache",
                    branches: int | None = None) -> torch.Tensor:
        """forward with a cache, without its checks or its Python-side position count: the
        static-shape step a CUDA graph captures (the caller owns positions, (T,) long)."""
        return self._logits(tokens, positions, branches, cache)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x_0 = E[tokens] + P[positions] (positions 0..T-1 when None), before dropout: (B, T, D)."""
        if positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.tok_embed(tokens) + self.pos_embed[0, positions]

    def _logits(self, tokens, positions, k, cache) -> torch.Tensor:
        x = self.drop(self.embed(tokens, positions))                              # (B, T, D)
        for s, stage in enumerate(self.stages):
            if cache is None:
                x = stage(x) if k is None else stage(x, k)
            else:
                x = stage(x, k, (cache.k[s], cache.v[s], positions, cache.mask[positions]))
        return F.linear(self.norm(x), self.tok_embed.weight)                     # (B, T, V)


class KVCache:
    """Every stage's keys and values, preallocated and written in place.

    k[s], v[s]: (n, B, heads, S_max, head_dim) for stage s; mask: (S_max, S_max) bool, row
    t true at the positions a query at t may see (0..t); length: positions filled so far.
    """

    def __init__(self, model: ParaFormerLM, batch: int, positions: int | None = None):
        if not isinstance(model, ParaFormerLM):
            raise TypeError(f"a KVCache is made for a ParaFormerLM, got {type(model).__name__}")
        if any(not isinstance(s, ParallelStage) for s in model.stages):
            raise ValueError("decoding with a KV cache needs the batched stage; call "
                             "model.to_batched() first")
        c = model.config
        S = c.positions if positions is None else whole("positions", positions)
        if S > c.positions:
            raise ValueError(f"a cache of {S} positions is longer than the model's {c.positions}")
        self.batch = whole("batch", batch)
        like = model.pos_embed
        shape = (c.width, self.batch, c.heads, S, c.dim // c.heads)
        self.k = [torch.zeros(shape, device=like.device, dtype=like.dtype) for _ in range(c.depth)]
        self.v = [torch.zeros(shape, device=like.device, dtype=like.dtype) for _ in range(c.depth)]
        self.mask = torch.ones(S, S, dtype=torch.bool, device=like.device).tril()
        self.length = 0

    @property
    def positions(self) -> int:
        return self.mask.shape[0]

    def check(self, model: ParaFormerLM, batch: int, new: int) -> None:
        if any(not isinstance(s, ParallelStage) for s in model.stages):
            raise ValueError("decoding with a KV cache needs the batched stage; call "
                             "model.to_batched() first")
        if self.k[0].shape[0] != model.config.width or len(self.k) != model.config.depth:
            raise ValueError("this cache was made for another model (its stages or branches differ)")
        if batch != self.batch:
            raise ValueError(f"this cache holds a batch of {self.batch}, got {batch} sequences")
        if self.length + new > self.positions:
            raise ValueError(f"cache overflow: {self.length} positions filled, {new} more do not "
                             f"fit its {self.positions}")

    def reset(self) -> None:
        """Start again at position 0 (the old keys are masked out, then overwritten)."""
        self.length = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def _as_prompt(prompt, device: torch.device) -> torch.Tensor:
    if isinstance(prompt, torch.Tensor):
        return prompt[None] if prompt.dim() == 1 else prompt
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) for t in prompt):
        return torch.tensor([list(prompt)], dtype=torch.long, device=device)
    raise TypeError("prompt must be a (T,) or (B, T) tensor of token ids, or a non-empty list "
                    f"of ints, got {type(prompt).__name__}")


@torch.inference_mode()
def generate(model: ParaFormerLM, prompt, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int = 0, branches: int | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """The prompt (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens).

    temperature 0 picks the likeliest token (greedy); otherwise tokens are drawn from
    softmax(logits / temperature) over the top_k likeliest (all when None), with a
    generator seeded by `seed`: the same call gives the same tokens. The prompt goes in
    one call (prefill), then one token per call with the KV cache (use_cache=False: the
    whole sequence again each step, for checking)."""
    if not isinstance(model, ParaFormerLM):
        raise TypeError(f"generate needs a ParaFormerLM, got {type(model).__name__}")
    c = model.config
    device = model.pos_embed.device
    tokens = model.check_tokens(_as_prompt(prompt, device).to(device))
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)
                              or not 1 <= top_k <= c.vocab_size):
        raise ValueError(f"top_k must be an int in 1..{c.vocab_size} (the vocabulary), got {top_k!r}")
    if tokens.shape[1] + max_new_tokens > c.positions:
        raise ValueError(f"a prompt of {tokens.shape[1]} tokens and {max_new_tokens} new ones "
                         f"do not fit the model's {c.positions} positions")
    model.check_branches(branches)
    generator = torch.Generator(device=device).manual_seed(seed)
    cache = KVCache(model, tokens.shape[0]) if use_cache else None
    was_training = model.training
    model.eval()
    try:
        logits = model(tokens, branches, cache)[:, -1]                       # prefill: (B, V)
        out = [tokens]
        for step in range(max_new_tokens):
            nxt = _sample(logits.float(), temperature, top_k, generator)      # (B, 1)
            out.append(nxt)
            if step + 1 < max_new_tokens:
                seq = nxt if use_cache else torch.cat(out, dim=1)
                logits = model(seq, branches, cache)[:, -1]
    finally:
        model.train(was_training)
    return torch.cat(out, dim=1)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None,
            generator: torch.Generator) -> torch.Tensor:
    """One token per row of logits (B, V): the argmax at temperature 0, else a seeded draw."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]               # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
