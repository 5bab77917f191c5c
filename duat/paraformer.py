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

from duat.checks import whole

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
        for name in ("image_size", "patch_size", "in_channels", "num_classes", "dim", "heads"):
            setattr(self, name, whole(name, getattr(self, name)))
        # m and n keep their own wording, "an int >= 1", which duat.convert shares
        for name, letter in (("depth", "m"), ("width", "n")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} ({letter}) must be an int >= 1, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size "
                             f"{self.patch_size}: expected a multiple of the patch size")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}: "
                             f"each head needs dim / heads channels")
        if not self.mlp_ratio > 0 or self.hidden_dim < 1:
            raise ValueError(f"mlp_ratio must be > 0 (hidden width >= 1), got {self.mlp_ratio!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")

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

class Attention(nn.Module):
    """Multi-head self-attention, batch first: (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # rows: q, k, v; heads contiguous
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                   # each (B, h, T, hd)
        p = self.attn_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, T, hd)
        o = o.transpose(1, 2).reshape(B, T, D)
        return self.proj_drop(self.proj(o))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """A pre-norm Transformer encoder layer; `residual(x)` is its update f(x)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 qkv_bias: bool = True, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, heads, qkv_bias, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        return a + self.mlp(self.norm2(x + a))

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


# (name in ParallelStage, path in Block); every tensor gets a leading branch axis n.
_STACKED = (
    ("norm1_weight", "norm1.weight"), ("norm1_bias", "norm1.bias"),
    ("qkv_weight", "attn.qkv.weight"), ("qkv_bias", "attn.qkv.bias"),
    ("proj_weight", "attn.proj.weight"), ("proj_bias", "attn.proj.bias"),
    ("norm2_weight", "norm2.weight"), ("norm2_bias", "norm2.bias"),
    ("fc1_weight", "mlp.fc1.weight"), ("fc1_bias", "mlp.fc1.bias"),
    ("fc2_weight", "mlp.fc2.weight"), ("fc2_bias", "mlp.fc2.bias"),
)


class ParallelStage(nn.Module):
    """y = x + sum_i f_i(x), all n branches in one batched computation.

    Weights are stored stacked: qkv_weight (n, 3D, D), fc1_weight (n, H, D), ... exactly the
    tensors of n Blocks, so conversion in either direction is a copy.
    """

    def __init__(self, blocks: list[Block] | nn.ModuleList):
        super().__init__()
        if len(blocks) < 1:
            raise ValueError("a stage needs at least one block (n >= 1)")
        first = blocks[0]
        self.heads, self.head_dim = first.attn.heads, first.attn.head_dim
        self.norm_eps = first.norm1.eps
        self.attn_dropout = first.attn.attn_dropout
        self.dropout = first.mlp.drop.p
        self.has_qkv_bias = first.attn.qkv.bias is not None
        for name, path in _STACKED:
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
        blocks = [Block(D, self.heads, mlp_ratio, self.norm_eps, self.has_qkv_bias,
                        self.dropout, self.attn_dropout) for _ in range(n)]
        with torch.no_grad():
            for i, block in enumerate(blocks):
                for name, path in _STACKED:
                    stacked = getattr(self, name)
                    if stacked is not None:
                        block.get_parameter(path).copy_(stacked[i])
        ref = ReferenceStage(blocks).to(self.qkv_weight.device, self.qkv_weight.dtype)
        ref.train(self.training)
        return ref

    # Rows (branches x tokens) one batched call may hold on a CPU. Past it, the branch axis
    # is cut into chunks: the matmuls are large enough by then, and one huge tensor per op
    # only adds memory traffic (page faults, cache misses). None: no limit (GPUs).
    cpu_row_budget: int | None = 1024

    def branch_chunk(self, rows_per_branch: int, device: torch.device) -> int:
        """How many branches to compute in one batched call."""
        budget = self.cpu_row_budget if device.type == "cpu" else None
        if budget is None:
            return self.width
        return max(1, min(self.width, budget // max(rows_per_branch, 1)))

    def forward(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """x + sum_{i < k} f_i(x) for the first k = `branches` (default all n); the other
        n - k branches are not computed at all."""
        return x + self.update(x, branches)

    def update(self, x: torch.Tensor, branches: int | None = None) -> torch.Tensor:
        """sum_{i < k} f_i(x), the stage's update without the skip: (B, T, D)."""
        B, T, D = x.shape
        n = self.width if branches is None else branches
        chunk = min(self.branch_chunk(B * T, x.device), n)
        xn = (F.layer_norm(x, (D,), eps=self.norm_eps).reshape(1, B * T, D)  # shared by all branches
              if chunk > 1 else None)                                       # (one branch: its own)
        f = None
        for start in range(0, n, chunk):          # one pass when the whole stage fits the budget
            part = self._branches(x, xn, slice(start, min(start + chunk, n)))  # (BT, D)
            f = part if f is None else f + part
        return f.view(B, T, D)                                              # sum_i f_i(x)

    def branch_updates(self, x: torch.Tensor) -> torch.Tensor:
        """Each branch's update f_i(x), stacked: (B, T, D) -> (n, B, T, D).

        The same batched computation as forward, before the sum over branches, so
        x + branch_updates(x).sum(0) is forward(x) (to the last bit when one chunk holds
        every branch, see branch_chunk).
        """
        B, T, D = x.shape
        n = self.width
        chunk = self.branch_chunk(B * T, x.device)
        xn = F.layer_norm(x, (D,), eps=self.norm_eps).reshape(1, B * T, D) if chunk > 1 else None
        parts = [self._branches(x, xn, slice(start, min(start + chunk, n)), keep_branches=True)
                 for start in range(0, n, chunk)]
        return torch.cat(parts).view(n, B, T, D)

    def _branches(self, x: torch.Tensor, xn: torch.Tensor, sl: slice,
                  keep_branches: bool = False) -> torch.Tensor:
        """sum_{i in sl} f_i(x) (BT, D), every op batched over the branches in sl; with
        keep_branches, the f_i themselves, (n_sl, BT, D)."""
        B, T, D = x.shape
        n, h, hd = sl.stop - sl.start, self.heads, self.head_dim
        drop = self.dropout if self.training else 0.0
        if n == 1:  # a single branch: plain fused kernels (F.linear, affine layer_norm)
            f = self._one_branch(x, self._weights(sl.start))
            return f[None] if keep_branches else f
        W = self._weights(None if n == self.width else sl)  # no slicing when one slice is all

        # attention: the shared normalised input, each branch's own affine and weights
        h1 = torch.addcmul(W["norm1_bias"][:, None], xn, W["norm1_weight"][:, None])  # (n, BT, D)
        if W["qkv_bias"] is not None:
            qkv = torch.baddbmm(W["qkv_bias"][:, None], h1, W["qkv_weight"].transpose(1, 2))
        else:
            qkv = torch.bmm(h1, W["qkv_weight"].transpose(1, 2))                     # (n, BT, 3D)
        qkv = qkv.view(n * B, T, 3, h, hd).permute(2, 0, 3, 1, 4)                    # (3, nB, h, T, hd)
        q, k, v = qkv.unbind(0)
        p = self.attn_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p)                     # (nB, h, T, hd)
        o = o.transpose(1, 2).reshape(n, B * T, D)                                   # (n, BT, D)
        a = torch.baddbmm(W["proj_bias"][:, None], o, W["proj_weight"].transpose(1, 2))
        if drop:
            a = F.dropout(a, drop, True)                                             # a_i: (n, BT, D)

        # MLP on each branch's own x + a_i
        x1 = x.reshape(1, B * T, D) + a                                              # (n, BT, D)
        h2 = F.layer_norm(x1, (D,), eps=self.norm_eps)
        h2 = torch.addcmul(W["norm2_bias"][:, None], h2, W["norm2_weight"][:, None])
        u = F.gelu(torch.baddbmm(W["fc1_bias"][:, None], h2, W["fc1_weight"].transpose(1, 2)))
        m = torch.baddbmm(W["fc2_bias"][:, None], u, W["fc2_weight"].transpose(1, 2))
        if drop:
            m = F.dropout(m, drop, True)                                             # (n, BT, D)
        return (a + m) if keep_branches else (a + m).sum(0)                          # (BT, D)

    def _weights(self, index) -> dict:
        """The stacked parameters by name, indexed by `index` (a branch, a slice of them, or
        None for all); None for an absent one (qkv_bias=False)."""
        out = {}
        for name, _ in _STACKED:
            t = getattr(self, name)
            out[name] = None if t is None else t if index is None else t[index]
        return out

    def _one_branch(self, x: torch.Tensor, W: dict) -> torch.Tensor:
        """f(x) for one branch: the same maths as Block.residual, on stacked weights."""
        B, T, D = x.shape
        h, hd = self.heads, self.head_dim
        drop = self.dropout if self.training else 0.0
        x = x.reshape(B * T, D)
        h1 = F.layer_norm(x, (D,), W["norm1_weight"], W["norm1_bias"], self.norm_eps)
        qkv = F.linear(h1, W["qkv_weight"], W["qkv_bias"])                           # (BT, 3D)
        q, k, v = qkv.view(B, T, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)          # (B, h, T, hd)
        p = self.attn_dropout if self.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(B * T, D)
        a = F.linear(o, W["proj_weight"], W["proj_bias"])
        if drop:  # no dropout call at all in eval, or with p = 0: each call costs a dispatch
            a = F.dropout(a, drop, True)
        h2 = F.layer_norm(x + a, (D,), W["norm2_weight"], W["norm2_bias"], self.norm_eps)
        u = F.gelu(F.linear(h2, W["fc1_weight"], W["fc1_bias"]))
        m = F.linear(u, W["fc2_weight"], W["fc2_bias"])
        if drop:
            m = F.dropout(m, drop, True)
        return a + m                                                                 # (BT, D)


def _has(module: nn.Module, path: str) -> bool:
    try:
        return module.get_parameter(path) is not None
    except AttributeError:
        return False


# ----------------------------------------------------------------------------- the model

class ParaFormer(nn.Module):
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

    def check_branches(self, branches) -> int | None:
        """`branches` as the prefix width k (1 <= k <= n), or None for all n; else ValueError."""
        n = self.config.width
        if branches is None:
            return None
        if not isinstance(branches, int) or isinstance(branches, bool) or not 1 <= branches <= n:
            raise ValueError(f"branches must be an int k with 1 <= k <= n = {n} (the branches "
                             f"per stage of this Para-Former-{self.config.depth}-{n}), got {branches!r}")
        return branches

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

    # -- exact conversion between the two stage implementations
    def to_reference(self) -> "ParaFormer":
        self.stages = nn.ModuleList(s.to_reference() if isinstance(s, ParallelStage) else s
                                    for s in self.stages)
        self.config = replace(self.config, stage="reference")  # never mutate a shared config
        return self

    def to_batched(self) -> "ParaFormer":
        self.stages = nn.ModuleList(ParallelStage.from_reference(s) if isinstance(s, ReferenceStage)
                                    else s for s in self.stages)
        self.config = replace(self.config, stage="batched")
        return self

    def blocks(self) -> list[list[Block]]:
        """The encoder layers as Blocks, [stage][branch] (copies for batched stages)."""
        out = []
        for s in self.stages:
            ref = s.to_reference() if isinstance(s, ParallelStage) else s
            out.append(list(ref.blocks))
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

