"""Para-Former-m-n: m serial stages, each of n parallel Transformer encoder layers.

The method is docs/method.md section 4. One stage computes, from a single input x,

    y = x + sum_{i=1..n} f_i(x),    f_i(x) = a_i + MLP_i(LN2_i(x + a_i)),  a_i = Attn_i(LN1_i(x))

so f_i is the residual update of an ordinary pre-norm encoder layer (Block below). With
n = 1 the stage *is* that layer, so a serial ViT-L is exactly ParaFormer(depth=L, width=1):
one code path, and every comparison between the two is fair.

A stage has two implementations that compute the same function:

- ReferenceStage: a readable Python loop over n Blocks. For teaching and testing.
- ParallelStage (the default): the n branches' weights are stacked on a leading branch
  axis and every matmul, norm and attention call runs once for all branches (batched
  matmuls; the branch axis folded into the batch of scaled_dot_product_attention), so the
  number of kernel launches does not grow with n. That is the difference from a
  structure-only "parallel block" whose branches run one after another.

`ParallelStage.from_reference` and `.to_reference` convert between them exactly (the same
tensors, copied). Image front end and head follow ViT: patch embedding, class token or
mean pooling, learned position embedding, final norm, linear classifier.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from duat.checks import check_layers, whole

POOLS = ("cls", "mean")
STAGES = ("batched", "reference")


@dataclass
class ParaFormerConfig:
    image_size: int = 8       # input images are image_size x image_size
    patch_size: int = 2       # square patches; image_size must be a multiple
    in_channels: int = 1      # 1 for grey (digits, MNIST), 3 for colour (CIFAR)
    num_classes: int = 10
    dim: int = 64             # D, the token width
    heads: int = 4            # attention heads; dim must be a multiple
    mlp_ratio: float = 2.0    # hidden width of each MLP = mlp_ratio * dim
    depth: int = 1            # m: stages in series
    width: int = 1            # n: parallel layers (branches) per stage
    pool: str = "cls"         # "cls" (class token) or "mean" (average of patch tokens)
    dropout: float = 0.0      # after the position embedding, attention projection and MLP
    attn_dropout: float = 0.0 # on the attention weights
    norm_eps: float = 1e-6    # LayerNorm epsilon (torchvision's ViT uses 1e-6)
    qkv_bias: bool = True
    stage: str = "batched"    # "batched" (one call for all n branches) or "reference" (a loop)
    debug_checks: bool = False  # check inputs for NaN / inf on every forward (slower)

    def __post_init__(self):
        for name in ("image_size", "patch_size", "in_channels", "num_classes"):
            setattr(self, name, whole(name, getattr(self, name)))
        check_layers(self, STAGES)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size "
                             f"{self.patch_size}: expected a multiple of the patch size")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")

    @property
    def hidden_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:  # T: patches, plus the class token when pool == "cls"
        return self.num_patches + (self.pool == "cls")

    @property
    def layers(self) -> int:  # m * n encoder layers in all
        return self.depth * self.width

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- one layer

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}   # name -> F.gelu's `approximate`


class Attention(nn.Module):
    """Multi-head self-attention, batch first: (B, T, D) -> (B, T, D); with causal=True,
    token t attends to tokens 0..t only (a language model's)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, proj_dropout: float = 0.0, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.attn_dropout = attn_dropout
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # rows: q, k, v; heads contiguous
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                   # each (B, h, T, hd)
        p = self.attn_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        o = o.transpose(1, 2).reshape(B, T, D)                    # (B, T, D)
        return self.proj_drop(self.proj(o))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=ACTIVATIONS[activation])
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """A pre-norm Transformer layer; `residual(x)` is its update f(x). With causal=True it
    is a GPT-2 decoder layer (masked self-attention), else a ViT encoder layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 qkv_bias: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0,
                 causal: bool = False, activation: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias, attn_dropout, dropout, causal)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout, activation)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))                 # a = Attn(LN1(x))
        return a + self.mlp(self.norm2(x + a))       # f(x) = a + MLP(LN2(x + a))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)


def _block_from_config(c: ParaFormerConfig) -> Block:
    return Block(c.dim, c.heads, c.mlp_ratio, c.norm_eps, c.qkv_bias, c.dropout, c.attn_dropout)


# ----------------------------------------------------------------------------- one stage

class ReferenceStage(nn.Module):
    """y = x + sum_i f_i(x), the n branches computed one after another."""

    def __init__(self, blocks: list[Block] | nn.ModuleList):
        super().__init__()
        if len(blocks) < 1:
            raise ValueError("a stage needs at least one block (n >= 1)")
        self.blocks = nn.ModuleList(blocks)

    @property
    def width(self) -> int:
        return len(self.blocks)

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """x + sum_{i < k} f_i(x): every branch, or the first k = `branches` only."""
        return x + self.update(x, branches)

    def update(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """sum_{i < k} f_i(x), the stage's update without the skip: (B, T, D)."""
        return sum(block.residual(x) for block in self.blocks[:branches])

    def branch_updates(self, x: torch.Tensor) -> torch.Tensor:
        """Each branch's update f_i(x), stacked: (B, T, D) -> (n, B, T, D)."""
        return torch.stack([block.residual(x) for block in self.blocks])


# The tensors of a stage's branches: (name in ParallelStage, path in Block). ParallelStage
# holds each with a leading branch axis n; the conversions (duat.convert, duat.transfer,
# duat.gpt2) and the branch surgery (duat.surgery) walk this one list.
STACKED = (
    ("norm1_weight", "norm1.weight"), ("norm1_bias", "norm1.bias"),
    ("qkv_weight", "attn.qkv.weight"), ("qkv_bias", "attn.qkv.bias"),
    ("proj_weight", "attn.proj.weight"), ("proj_bias", "attn.proj.bias"),
    ("norm2_weight", "norm2.weight"), ("norm2_bias", "norm2.bias"),
    ("fc1_weight", "mlp.fc1.weight"), ("fc1_bias", "mlp.fc1.bias"),
    ("fc2_weight", "mlp.fc2.weight"), ("fc2_bias", "mlp.fc2.bias"),
)


# Batched primitives: weights (n, ...), x (n, R, D) (the norm's: also (1, R, D), shared). One
# branch takes the fused kernels (F.linear, affine layer_norm); several, baddbmm and addcmul.

def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x_i W_i^T + b_i for every branch i: (n, R, D_in) -> (n, R, D_out)."""
    if w.shape[0] == 1:
        return F.linear(x, w[0], None if b is None else b[0])
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b[:, None], x, w.transpose(1, 2))


def _norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """LN_i(x) for every branch i: (1 or n, R, D) -> (n, R, D)."""
    D = x.shape[-1]
    if w.shape[0] == 1:
        return F.layer_norm(x, (D,), w[0], b[0], eps)
    return torch.addcmul(b[:, None], F.layer_norm(x, (D,), eps=eps), w[:, None])


class ParallelStage(nn.Module):
    """y = x + sum_i f_i(x), all n branches in one batched computation.

    Weights are stored stacked: qkv_weight (n, 3D, D), fc1_weight (n, H, D), ... exactly the
    tensors of n Blocks, so conversion in either direction is a copy. `f` below is the one
    place the batched path writes f_i; a causal stage (language) differs only in the mask of
    its attention, and with a KV cache (duat.language) in where keys and values come from.
    """

    def __init__(self, blocks: list[Block] | nn.ModuleList):
        super().__init__()
        if len(blocks) < 1:
            raise ValueError("a stage needs at least one block (n >= 1)")
        first = blocks[0]
        self.heads, self.head_dim = first.attn.heads, first.attn.head_dim
        self.causal = first.attn.causal
        self.approximate = first.mlp.act.approximate             # F.gelu's: "none" or "tanh"
        self.norm_eps = first.norm1.eps
        self.attn_dropout = first.attn.attn_dropout
        self.dropout = first.mlp.drop.p
        self.has_qkv_bias = first.attn.qkv.bias is not None
        for name, path in STACKED:
            if not _has(first, path):  # e.g. qkv_bias=False
                self.register_parameter(name, None)
                continue
            stacked = torch.stack([b.get_parameter(path).detach() for b in blocks])
            self.register_parameter(name, nn.Parameter(stacked.clone()))

    @property
    def width(self) -> int:
        return self.qkv_weight.shape[0]

    @classmethod
    def from_reference(cls, stage: ReferenceStage) -> "ParallelStage":
        new = cls(list(stage.blocks))
        new.train(stage.training)
        return new

    def to_reference(self) -> ReferenceStage:
        n, D = self.qkv_weight.shape[0], self.qkv_weight.shape[2]
        mlp_ratio = (self.fc1_weight.shape[1] + 0.5) / D  # int(D * ratio) == H, whatever the rounding
        activation = {v: k for k, v in ACTIVATIONS.items()}[self.approximate]
        blocks = [Block(D, self.heads, mlp_ratio, self.norm_eps, self.has_qkv_bias,
                        self.dropout, self.attn_dropout, self.causal, activation) for _ in range(n)]
        with torch.no_grad():
            for i, block in enumerate(blocks):
                for name, path in STACKED:
                    stacked = getattr(self, name)
                    if stacked is not None:
                        block.get_parameter(path).copy_(stacked[i])
        ref = ReferenceStage(blocks).to(self.qkv_weight.device, self.qkv_weight.dtype)
        ref.train(self.training)
        return ref

    # -- the equation: f_i(x) = a_i + MLP_i(LN2_i(x + a_i)),  a_i = Attn_i(LN1_i(x))

    def f(self, x: torch.Tensor, W: dict, kv=None) -> torch.Tensor:
        """f_i(x) of the branches whose weights W holds (n of them): (B, T, D) -> (n, BT, D).
        kv: this stage's slice of a KV cache and the positions of x (duat.language)."""
        B, T, D = x.shape
        x = x.reshape(1, B * T, D)                                                   # (1, BT, D)
        a = self.attention(_norm(x, W["norm1_weight"], W["norm1_bias"], self.norm_eps), W, B, kv)
        h = _norm(x + a, W["norm2_weight"], W["norm2_bias"], self.norm_eps)          # (n, BT, D)
        u = F.gelu(_linear(h, W["fc1_weight"], W["fc1_bias"]), approximate=self.approximate)
        m = self._drop(_linear(u, W["fc2_weight"], W["fc2_bias"]))                   # (n, BT, D)
        return a + m

    def attention(self, h: torch.Tensor, W: dict, B: int, kv=None) -> torch.Tensor:
        """a_i = Attn_i(h_i) for every branch: (n, BT, D) -> (n, BT, D). Without a cache the
        keys are this call's tokens (causal: each attends to itself and those before);
        with one, this call's keys and values are written into it at their positions and
        the queries attend to every cached position up to their own."""
        n, R, D = W["qkv_weight"].shape[0], h.shape[1], h.shape[2]
        T, heads, hd = R // B, self.heads, self.head_dim
        qkv = _linear(h, W["qkv_weight"], W["qkv_bias"])                             # (n, BT, 3D)
        q, k, v = qkv.view(n * B, T, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)  # (nB, h, T, hd)
        p = self.attn_dropout if self.training else 0.0
        if kv is None:
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        else:
            k_cache, v_cache, positions, mask = kv                                   # (n, B, h, S, hd)
            S = k_cache.shape[3]
            k_cache.index_copy_(3, positions, k.reshape(n, B, heads, T, hd))         # written in place
            v_cache.index_copy_(3, positions, v.reshape(n, B, heads, T, hd))
            o = F.scaled_dot_product_attention(q, k_cache.view(n * B, heads, S, hd),
                                               v_cache.view(n * B, heads, S, hd),
                                               attn_mask=mask, dropout_p=p)          # mask (T, S)
        o = o.transpose(1, 2).reshape(n, R, D)                                       # (n, BT, D)
        return self._drop(_linear(o, W["proj_weight"], W["proj_bias"]))

    def _drop(self, t: torch.Tensor) -> torch.Tensor:  # no call in eval or at p = 0: a dispatch each
        return F.dropout(t, self.dropout, True) if self.training and self.dropout else t

    # -- the stage

    # Rows (branches x tokens) one batched call may hold on a CPU. Past it, the branch axis
    # is cut into chunks: the matmuls are large enough by then, and one huge tensor per op
    # only adds memory traffic (page faults, cache misses). None: no limit (GPUs). A
    # property of the CPU path, not of the equation: `chunks` is the only place it acts.
    cpu_row_budget: int | None = 1024

    def chunks(self, n: int, rows_per_branch: int, device: torch.device) -> list[slice]:
        """The branches 0..n-1 cut into the slices computed by one batched call each."""
        budget = self.cpu_row_budget if device.type == "cpu" else None
        size = n if budget is None else max(1, min(n, budget // max(rows_per_branch, 1)))
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def forward(self, x: torch.Tensor, branches: int | None = None, kv=None) -> torch.Tensor:
        """x + sum_{i < k} f_i(x) for the first k = `branches` (default all n); the other
        n - k branches are not computed at all."""
        return x + self.update(x, branches, kv)

    def update(self, x: torch.Tensor, branches: int | None = None, kv=None) -> torch.Tensor:
        """sum_{i < k} f_i(x), the stage's update without the skip: (B, T, D)."""
        n = self.width if branches is None else branches
        f = None
        for sl in self.chunks(n, x.shape[0] * x.shape[1], x.device):  # one, unless a CPU's budget
            part = self.f(x, self._weights(sl), _slice_kv(kv, sl))                     # (n_sl, BT, D)
            part = part.sum(0) if part.shape[0] > 1 else part                           # one branch: as is
            f = part if f is None else f + part
        return f.view(x.shape)                                                         # sum_i f_i(x)

    def branch_updates(self, x: torch.Tensor) -> torch.Tensor:
        """Each branch's update f_i(x), stacked: (B, T, D) -> (n, B, T, D).

        The same batched computation as forward, before the sum over branches, so
        x + branch_updates(x).sum(0) is forward(x) (to the last bit when one chunk holds
        every branch, see chunks).
        """
        slices = self.chunks(self.width, x.shape[0] * x.shape[1], x.device)
        parts = [self.f(x, self._weights(sl)) for sl in slices]                       # (n_sl, BT, D)
        return torch.cat(parts).view(self.width, *x.shape)

    def _weights(self, sl: slice) -> dict:
        """The stacked parameters of the branches in sl, by name (no slicing when sl is all
        of them); None for an absent one (qkv_bias=False)."""
        whole_stage = sl.start == 0 and sl.stop == self.width
        return {name: (t if t is None or whole_stage else t[sl])
                for name, t in ((name, getattr(self, name)) for name, _ in STACKED)}


def _slice_kv(kv, sl: slice):
    """A stage's cache entry (k, v, positions, mask) for the branches in sl only."""
    return None if kv is None else (kv[0][sl], kv[1][sl], kv[2], kv[3])


def _has(module: nn.Module, path: str) -> bool:
    try:
        return module.get_parameter(path) is not None
    except AttributeError:
        return False


# ----------------------------------------------------------------------------- the model

class StagedModel(nn.Module):
    """What an image and a language Para-Former share: m stages of n branches (self.stages,
    self.config), the prefix width k, and exact conversion between the stage implementations."""

    def check_branches(self, branches) -> int | None:
        """`branches` as the prefix width k (1 <= k <= n), or None for all n; else ValueError."""
        n = self.config.width
        if branches is None:
            return None
        if not isinstance(branches, int) or isinstance(branches, bool) or not 1 <= branches <= n:
            raise ValueError(f"branches must be an int k with 1 <= k <= n = {n} (the branches "
                             f"per stage of this Para-Former-{self.config.depth}-{n}), got {branches!r}")
        return branches

    def to_reference(self):
        self.stages = nn.ModuleList(s.to_reference() if isinstance(s, ParallelStage) else s
                                    for s in self.stages)
        self.config = replace(self.config, stage="reference")  # never mutate a shared config
        return self

    def to_batched(self):
        self.stages = nn.ModuleList(ParallelStage.from_reference(s) if isinstance(s, ReferenceStage)
                                    else s for s in self.stages)
        self.config = replace(self.config, stage="batched")
        return self

    def blocks(self) -> list[list[Block]]:
        """The layers as Blocks, [stage][branch] (copies for batched stages)."""
        return [list((s.to_reference() if isinstance(s, ParallelStage) else s).blocks)
                for s in self.stages]


class ParaFormer(StagedModel):
    """Patch embedding -> m stages of n parallel layers -> norm -> pooled linear head."""

    def __init__(self, config: ParaFormerConfig | None = None, **kwargs):
        super().__init__()
        if config is not None and kwargs:
            raise TypeError("give either a ParaFormerConfig or keyword arguments, not both")
        c = config if config is not None else ParaFormerConfig(**kwargs)
        if not isinstance(c, ParaFormerConfig):
            raise TypeError(f"config must be a ParaFormerConfig, got {type(c).__name__}")
        self.config = c
        D = c.dim
        self.patch_embed = nn.Conv2d(c.in_channels, D, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if c.pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, D))
        self.pos_drop = nn.Dropout(c.dropout)
        stages = []
        for _ in range(c.depth):
            blocks = [_block_from_config(c) for _ in range(c.width)]
            for block in blocks:
                block.apply(_init_weights)
            stages.append(ParallelStage(blocks) if c.stage == "batched" else ReferenceStage(blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(D, eps=c.norm_eps)
        self.head = nn.Linear(D, c.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        _init_weights(self.head)

    # -- input checks: no silent broadcasting
    def check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of images, got {type(x).__name__}")
        expected = f"(batch, {c.in_channels}, {c.image_size}, {c.image_size})"
        if x.dim() != 4:
            raise ValueError(f"expected images of shape {expected}, got a {x.dim()}-D tensor "
                             f"of shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(f"expected {c.in_channels} channel(s), shape {expected}; got "
                             f"{x.shape[1]} channel(s) in shape {tuple(x.shape)}")
        if x.shape[2] != c.image_size or x.shape[3] != c.image_size:
            raise ValueError(f"expected {c.image_size}x{c.image_size} images, shape {expected}; "
                             f"got {x.shape[2]}x{x.shape[3]}")
        if x.shape[0] < 1:
            raise ValueError("expected a batch of at least one image, got an empty batch")
        if c.debug_checks and not torch.isfinite(x).all():
            raise ValueError("input contains NaN or inf values (debug_checks=True)")

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> the token sequence (B, T, D) fed to the first stage."""
        self.check_input(x)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)                  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, T, D)
        return self.pos_drop(x + self.pos_embed)

    def forward_features(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """Images -> normalised tokens (B, T, D) after the last stage; with `branches` = k,
        every stage computes only its first k branches (the prefix model y_k)."""
        k = self.check_branches(branches)
        x = self.forward_tokens(x)
        for stage in self.stages:
            x = stage(x) if k is None else stage(x, k)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self.config.pool == "cls" else tokens.mean(dim=1)

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """Logits (B, classes); `branches` = k: the prefix model y_k = x + sum_{i < k} f_i(x)
        in every stage (docs/method.md section 7); k = n is exactly the full model."""
        return self.head(self.pool(self.forward_features(x, branches)))    # (B, classes)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

