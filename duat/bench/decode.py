"""Per-token decode latency: serial GPT-n against causal Para-Former-1-n, with a KV cache.

`duat bench --preset decode` (duat.bench.decode_model reads, draws and saves what this
module measures). GPT-n is ParaFormerLM(depth=n, width=1), causal Para-Former-1-n is
ParaFormerLM(depth=1, width=n): the same parameters and FLOPs per token. Each timed
sequence is

    a fixed, seeded prompt of P tokens in one call (prefill, timed on its own), then
    N new tokens, one decode step each (greedy: the argmax of the last logits is the next
    token), every step timed on its own,

into a KV cache of S_max = P + N positions (duat.language.KVCache; the kit's step is
`model.decode_step`, the static-shape step a CUDA graph captures). The per-token latency of
a case is the median over every step of every timed sequence, with its quartiles.

What a step should cost, t = max(ops x tau, bytes / bandwidth, FLOPs / peak), with all
three rates measured in the same run, between the rounds: the fixed cost of one dispatched
operation tau (one decode step of a GPT-1 at D = 8, duat.bench.decode_run.STEP_PROBE),
the memory read rate (duat.bench.timing.memory_bandwidth), and the matmul peak. Per step: `ops` counted by count_ops on one step; `bytes` = the weights it
reads (every parameter, and one row of the position table) + the KV cache it reads (the
kit's step attends over all S_max positions, masked); `flops` = 2 per multiply-add of its
matrix products (decode_cost).

The outside peer (`hf-gpt2`): HF transformers' GPT2LMHeadModel of the same sizes (random
weights, no download), with its own growing KV cache; skipped with a note where
transformers is not installed. Variants: eager, and on CUDA "graph" (one decode step
captured as a CUDA graph over static token / position tensors and the static cache; its
logits are checked against eager ones before it is timed). The timing and the run are
duat.bench.decode_run.
"""
from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import torch

from duat.bench.timing import DTYPES, check_dtype
from duat.checks import real, whole, wholes
from duat.language import KVCache, ParaFormerLM, ParaFormerLMConfig

IMPLEMENTATIONS: dict[str, str] = {
    "gpt": "GPT-n: n causal layers in series (ParaFormerLM depth n, width 1)",
    "pf": "causal Para-Former-1-n: n causal branches in one stage (depth 1, width n)",
    "hf-gpt2": "HF transformers GPT2LMHeadModel, n layers, its own KV cache (random weights)",
}
VARIANTS = ("eager", "graph")   # graph: one CUDA graph replay per decode step (CUDA only)
GRAPH_TOLERANCE = 1e-4          # graph logits against eager logits, before timing


# `duat bench --preset NAME`: DecodeSpec fields; command-line options override them.
DECODE_PRESETS: dict[str, dict] = {
    # the committed CPU run: under ten minutes on a 2-core CPU (the time cap per case sets
    # the timed sequences of the slow cases)
    "decode": dict(layers=(1, 2, 4, 8, 16, 24), dims=(32, 64, 128, 256, 512), batches=(1, 8),
                   peer_layers=(1, 12, 24), reps=8, min_reps=3, warmup=1, rounds=2,
                   max_case_seconds=1.0),
    # a GPU visit: GPT-2 small's width (768) and 256, eager and one CUDA graph per step
    "decode-gpu": dict(device="cuda", layers=(1, 2, 4, 8, 16, 24), dims=(256, 768), batches=(1,),
                       peer_layers=(1, 12), variants=("eager", "graph"), reps=10, min_reps=3,
                       warmup=1, rounds=2, max_case_seconds=1.5),
}


@dataclass
class DecodeSpec:
    layers: tuple = (1, 2, 4, 8, 16, 24)   # n: GPT-n and Para-Former-1-n
    dims: tuple = (32, 64, 128, 256, 512)  # token widths D
    batches: tuple = (1, 8)                # sequences decoded together
    peer_layers: tuple = (1, 12, 24)       # n of HF GPT-2 (kit GPT-n timed there too); () none
    variants: tuple = ("eager",)
    heads: int | None = None               # None: D // 64 and at least 1
    mlp_ratio: float = 4.0
    vocab_size: int = 256
    prompt_tokens: int = 16                # P: the prompt, one prefill call
    new_tokens: int = 32                   # N: decode steps per sequence; S_max = P + N
    activation: str = "gelu_tanh"          # GPT-2's GELU, in the kit's models too
    dtype: str = "float32"
    device: str = "auto"
    threads: int | None = None
    warmup: int = 1                        # untimed sequences per case (at least one)
    reps: int = 6                          # timed sequences per case, at most
    min_reps: int = 2                      # ... and at least, whatever the time cap
    rounds: int = 2                        # the sequences split into rounds over the cases
    max_case_seconds: float = 1.0          # time cap per case; lowers reps (to min_reps)
    peak_sizes: tuple | None = None        # GEMM sides for the peak (None: by device)
    bandwidth_bytes: int | None = None     # the bandwidth probe's tensor (None: by device)
    seed: int = 0

    def __post_init__(self):
        self.layers = tuple(dict.fromkeys(wholes("layers (n)", self.layers)))
        self.dims = tuple(dict.fromkeys(wholes("dims (D)", self.dims)))
        self.batches = tuple(dict.fromkeys(wholes("batch", self.batches)))
        self.peer_layers = () if not self.peer_layers else tuple(dict.fromkeys(
            wholes("peer layers", self.peer_layers)))
        variants = (self.variants,) if isinstance(self.variants, str) else tuple(self.variants)
        for v in variants or ("",):
            if v not in VARIANTS:
                raise ValueError(f"unknown decode variant {v!r}; known: {', '.join(VARIANTS)}")
        self.variants = tuple(dict.fromkeys(variants))
        check_dtype(self.dtype)
        for name in ("vocab_size", "prompt_tokens", "new_tokens", "reps", "min_reps", "rounds"):
            setattr(self, name, whole(name, getattr(self, name)))
        self.warmup = whole("warmup", self.warmup)
        if self.min_reps < 1 or self.reps < self.min_reps:
            raise ValueError(f"reps ({self.reps}) must be >= min_reps ({self.min_reps})")
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 so that a spread exists, got {self.new_tokens}")
        real("max_case_seconds", self.max_case_seconds, low=0, low_open=True)
        real("mlp_ratio", self.mlp_ratio, low=0, low_open=True)
        if self.heads is not None:
            self.heads = whole("heads", self.heads)
        if self.threads is not None:
            self.threads = whole("threads", self.threads)
        if self.peak_sizes is not None:
            self.peak_sizes = wholes("peak_sizes", self.peak_sizes)
        if self.bandwidth_bytes is not None:
            self.bandwidth_bytes = whole("bandwidth_bytes", self.bandwidth_bytes)
        for D in self.dims:
            if D % self.heads_for(D):
                raise ValueError(f"token width D={D} is not divisible by {self.heads_for(D)} "
                                 f"heads; give widths that are multiples of the heads")

    @property
    def positions(self) -> int:  # S_max: the prompt and every new token
        return self.prompt_tokens + self.new_tokens

    def heads_for(self, dim: int) -> int:
        return self.heads or max(1, dim // 64)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DecodeRecord:
    """One case: an implementation at (n, D, batch, variant), its per-token latency over
    every timed step (median, spread, samples), its prefill, its costs and the model."""
    implementation: str
    variant: str
    label: str
    model: str
    layers: int
    batch: int
    dim: int
    heads: int
    mlp_ratio: float
    vocab_size: int
    prompt_tokens: int
    new_tokens: int
    positions: int
    dtype: str
    device: str
    device_name: str
    torch: str
    threads: int
    date: str
    params: int
    flops: int                   # one decode step, all sequences of the batch
    weights_bytes: int           # parameters read by one step
    kv_bytes: int                # KV cache read by one step
    bytes: int                   # weights_bytes + kv_bytes
    ops: int | None              # aten operations one step dispatches
    warmup: int                  # untimed sequences
    reps: int                    # timed sequences
    steps: int                   # timed decode steps (reps x new_tokens)
    median_ms: float             # per decode step (one new token for each sequence)
    mean_ms: float
    min_ms: float
    p10_ms: float
    p25_ms: float
    p75_ms: float
    p90_ms: float
    iqr_ms: float
    rel_iqr: float
    prefill_median_ms: float     # the prompt in one call
    prefill_p25_ms: float
    prefill_p75_ms: float
    tokens_per_s: float          # batch / median
    graph_max_abs_diff: float | None = None  # graph variant: |graph - eager| logits
    peak_gflops: float | None = None
    bandwidth_gbps: float | None = None
    us_per_op: float | None = None
    overhead_ms: float | None = None   # ops x tau
    bytes_ms: float | None = None      # bytes / bandwidth
    flop_ms: float | None = None       # flops / peak
    predicted_ms: float | None = None  # the largest of the three
    bound_by: str | None = None        # "overhead", "bytes" or "flops"
    samples_ms: list = field(default_factory=list)


# ----------------------------------------------------------------------------- costs

def decode_cost(config, batch: int, attended: float, params: int, position_rows: int,
                dtype: str = "float32") -> dict:
    """What one decode step of a GPT-2-shaped model costs, by hand: `flops` (2 per
    multiply-add: q, k, v, the attention over `attended` positions, the projection, the
    MLP, the tied head), `weights_bytes` (every parameter but the position table, which is
    read at one row; `position_rows` is its length) and `kv_bytes` (keys and values of
    `attended` positions, every layer, every sequence). `config`: a ParaFormerLMConfig."""
    B, D, H, V = whole("batch", batch), config.dim, config.hidden_dim, config.vocab_size
    size = torch.finfo(DTYPES[dtype]).bits // 8
    per_layer = 2 * B * (3 * D * D + 2 * attended * D + D * D + 2 * D * H)
    layers = config.layers
    weights = params - position_rows * D + D
    kv = attended * 2 * D * layers * B
    return {"flops": int(round(layers * per_layer + 2 * B * D * V)),
            "weights_bytes": size * weights, "kv_bytes": int(round(size * kv))}


def add_prediction(record: dict, us_per_op: float | None, gbps: float | None,
                   gflops: float | None) -> dict:
    """The record's three terms and t = max(ops x tau, bytes / bandwidth, FLOPs / peak);
    a term whose rate was not measured is None (and left out of the max). A graph replay
    dispatches no operations from Python: its overhead term is None."""
    graph = record["variant"] == "graph"
    record["us_per_op"], record["bandwidth_gbps"], record["peak_gflops"] = us_per_op, gbps, gflops
    record["overhead_ms"] = (record["ops"] * us_per_op / 1e3
                             if us_per_op is not None and record.get("ops") and not graph else None)
    record["bytes_ms"] = record["bytes"] / gbps / 1e6 if gbps else None
    record["flop_ms"] = record["flops"] / gflops / 1e6 if gflops else None
    terms = {k: record[f"{k}_ms"] for k in ("overhead", "bytes", "flop") if record[f"{k}_ms"] is not None}
    if terms:
        bound = max(terms, key=terms.get)
        record["predicted_ms"], record["bound_by"] = terms[bound], "flops" if bound == "flop" else bound
    else:
        record["predicted_ms"] = record["bound_by"] = None
    return record


# ----------------------------------------------------------------------------- models

def model_name(implementation: str, n: int) -> str:
    return {"gpt": f"gpt-{n}", "pf": f"pf-1-{n}", "hf-gpt2": f"hf-gpt2-{n}"}[implementation]


def kit_config(implementation: str, n: int, dim: int, spec: DecodeSpec) -> ParaFormerLMConfig:
    """The configuration of GPT-n (also HF GPT-2-n's sizes) or Para-Former-1-n at width D."""
    return ParaFormerLMConfig(vocab_size=spec.vocab_size, positions=spec.positions, dim=dim,
                              heads=spec.heads_for(dim), mlp_ratio=spec.mlp_ratio,
                              depth=1 if implementation == "pf" else n,
                              width=n if implementation == "pf" else 1, activation=spec.activation)


def layer_params(dim: int, hidden: int) -> int:
    """Parameters of one GPT-2 layer: qkv and projection, the MLP, two LayerNorms."""
    return 3 * dim * dim + 3 * dim + dim * dim + dim + 2 * dim * hidden + hidden + dim + 4 * dim


def build_kit_model(implementation: str, n: int, dim: int, spec: DecodeSpec) -> ParaFormerLM:
    """GPT-n or causal Para-Former-1-n at width D, eval mode, float32, on the default device."""
    torch.manual_seed(spec.seed)
    return ParaFormerLM(kit_config(implementation, n, dim, spec)).eval()


def _transformers():
    """(GPT2Config, GPT2LMHeadModel), or the reason transformers cannot be imported (a str).
    transformers is optional (the `test` extra) and slow to import: imported when asked."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except Exception as err:  # ImportError, or a broken install
        return f"transformers is not importable ({type(err).__name__}: {err}); pip install transformers"
    return GPT2Config, GPT2LMHeadModel


def peer_available() -> str | None:
    """None if HF transformers' GPT-2 can be built, else the reason it cannot."""
    found = _transformers()
    return found if isinstance(found, str) else None


def build_peer(n: int, dim: int, spec: DecodeSpec):
    """HF GPT2LMHeadModel with the sizes of GPT-n at width D (random weights), eval mode."""
    found = _transformers()
    if isinstance(found, str):
        raise RuntimeError(found)
    GPT2Config, GPT2LMHeadModel = found
    torch.manual_seed(spec.seed)
    config = GPT2Config(vocab_size=spec.vocab_size, n_positions=spec.positions, n_embd=dim,
                        n_layer=n, n_head=spec.heads_for(dim), n_inner=int(dim * spec.mlp_ratio),
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return GPT2LMHeadModel(config).eval()


# ----------------------------------------------------------------------------- decoders
# A decoder runs one sequence: prefill() -> the first new token, step(token, t) -> the next.

class KitDecoder:
    """The kit's model with its static KV cache, through model.decode_step (no checks)."""

    def __init__(self, model: ParaFormerLM, prompt: torch.Tensor, positions: int):
        self.model, self.prompt = model, prompt
        self.cache = KVCache(model, prompt.shape[0], positions)
        self.pos = [torch.arange(t, t + 1, device=prompt.device) for t in range(positions)]
        self.prefix = torch.arange(prompt.shape[1], device=prompt.device)

    def prefill(self) -> torch.Tensor:
        logits = self.model.decode_step(self.prompt, self.prefix, self.cache)
        return logits[:, -1].argmax(-1, keepdim=True)                             # (B, 1)

    def logits(self, token: torch.Tensor, t: int) -> torch.Tensor:
        return self.model.decode_step(token, self.pos[t], self.cache)[:, -1]

    def step(self, token: torch.Tensor, t: int) -> torch.Tensor:
        return self.logits(token, t).argmax(-1, keepdim=True)


class GraphDecoder(KitDecoder):
    """One decode step captured as a CUDA graph: the token and the position are copied into
    static tensors, the graph replayed; the cache is the same static KVCache."""

    def __init__(self, model: ParaFormerLM, prompt: torch.Tensor, positions: int):
        if prompt.device.type != "cuda":
            raise ValueError(f"variant 'graph' (CUDA graphs) needs a CUDA device, got {prompt.device}")
        super().__init__(model, prompt, positions)
        P = prompt.shape[1]
        self.static_tok = torch.zeros(prompt.shape[0], 1, dtype=torch.long, device=prompt.device)
        self.static_pos = self.pos[P].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for _ in range(3):
                self.model.decode_step(self.static_tok, self.static_pos, self.cache)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits = self.model.decode_step(self.static_tok, self.static_pos,
                                                        self.cache)[:, -1]
            self.static_next = self.static_logits.argmax(-1, keepdim=True)

    def logits(self, token: torch.Tensor, t: int) -> torch.Tensor:
        self.static_tok.copy_(token)
        self.static_pos.copy_(self.pos[t])  # within S_max: t < P + N
        self.graph.replay()
        return self.static_logits

    def step(self, token: torch.Tensor, t: int) -> torch.Tensor:
        self.logits(token, t)
        return self.static_next


class PeerDecoder:
    """HF GPT-2 with its own KV cache (a new one each sequence, grown a position a step)."""

    def __init__(self, model, prompt: torch.Tensor):
        self.model, self.prompt = model, prompt
        params = inspect.signature(model.forward).parameters
        self.key = "cache" if "cache" in params else "past_key_values"  # transformers 5.x / 4.x
        self.past = None

    def _call(self, tokens, past) -> torch.Tensor:
        out = self.model(input_ids=tokens, use_cache=True, **({self.key: past} if past is not None else {}))
        self.past = out["cache"] if "cache" in out else out.get("past_key_values")
        return out.logits[:, -1].argmax(-1, keepdim=True)

    def prefill(self) -> torch.Tensor:
        return self._call(self.prompt, None)

    def step(self, token: torch.Tensor, t: int) -> torch.Tensor:
        return self._call(token, self.past)


def check_graph(graph: GraphDecoder, steps: int = 4) -> float:
    """The largest |graph - eager| over the logits of the first `steps` decode steps of a
    captured decoder, against the same model eagerly with a cache of its own."""
    positions = graph.cache.positions
    eager, P = KitDecoder(graph.model, graph.prompt, positions), graph.prompt.shape[1]
    worst = 0.0
    with torch.inference_mode():
        token = eager.prefill()
        graph.prefill()
        for t in range(P, min(P + steps, positions)):
            la, lb = eager.logits(token, t), graph.logits(token, t).clone()
            worst = max(worst, (la - lb).abs().max().item())
            token = la.argmax(-1, keepdim=True)
    return worst
