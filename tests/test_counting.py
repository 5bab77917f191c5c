"""Counting (docs/method.md section 4): the analytic FLOP count equals the one torch.utils.flop_counter
measures, for both stage implementations; parameters follow the closed form; m x n layouts
with equal m*n cost the same parameters and FLOPs."""
import random

import pytest
import torch

from duat.counting import count_parameters, flops, flops_breakdown, layer_flops, measured_flops
from duat.paraformer import ParaFormer, ParaFormerConfig


def config_for(seed):
    rng = random.Random(seed)
    heads = rng.randint(1, 4)
    patch = rng.choice([2, 4])
    return ParaFormerConfig(
        image_size=patch * rng.randint(1, 4), patch_size=patch, in_channels=rng.randint(1, 3),
        num_classes=rng.randint(2, 12), dim=heads * rng.randint(2, 12), heads=heads,
        mlp_ratio=rng.choice([1.0, 2.0, 3.0, 4.0]), depth=rng.randint(1, 4), width=rng.randint(1, 4),
        pool=rng.choice(["cls", "mean"]), qkv_bias=rng.random() < 0.8,
        stage=rng.choice(["batched", "reference"]),
    ), rng.randint(1, 6)


@pytest.mark.parametrize("seed", range(10))
def test_analytic_flops_equal_measured(seed):
    config, batch = config_for(seed)
    torch.manual_seed(seed)
    model = ParaFormer(config).eval()
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    assert measured_flops(model, x) == flops(config, batch)


def test_flops_do_not_depend_on_branch_chunking():
    config = ParaFormerConfig(dim=16, heads=2, depth=2, width=5)
    model = ParaFormer(config)
    x = torch.randn(4, 1, 8, 8)
    for stage in model.stages:
        stage.cpu_row_budget = 70           # 68 rows per branch: one branch per call
    assert measured_flops(model, x) == flops(config, 4)


def test_breakdown_parts_and_scaling():
    c = ParaFormerConfig(dim=32, heads=4, mlp_ratio=4.0, depth=2, width=3)
    b = flops_breakdown(c, batch=2)
    assert b["total"] == sum(v for k, v in b.items() if k != "total")
    assert set(b) == {"patch_embed", "qkv", "attention", "proj", "mlp", "head", "total"}
    T, D = c.num_tokens, c.dim
    assert b["mlp"] == 2 * 2 * 2 * T * D * 4 * D * 6          # 2 matmuls, 6 layers, batch 2
    assert flops(c, 6) == 3 * flops(c, 2)                     # linear in the batch
    one = ParaFormerConfig(dim=32, heads=4, mlp_ratio=4.0, depth=1, width=1)
    assert layer_flops(c, 2) == 6 * layer_flops(one, 2)       # linear in m * n


def test_equal_layer_counts_cost_the_same():
    layouts = [(12, 1), (1, 12), (2, 6), (3, 4), (4, 3), (6, 2)]
    configs = [ParaFormerConfig(dim=32, heads=4, depth=m, width=n) for m, n in layouts]
    assert len({flops(c, 3) for c in configs}) == 1
    assert len({count_parameters(ParaFormer(c)) for c in configs}) == 1


def closed_form_parameters(c: ParaFormerConfig) -> int:
    D, H, C = c.dim, c.hidden_dim, c.num_classes
    layer = (2 * D                          # norm1
             + 3 * D * D + 3 * D * c.qkv_bias  # qkv
             + D * D + D                    # proj
             + 2 * D                        # norm2
             + D * H + H + H * D + D)       # fc1, fc2
    front = c.in_channels * c.patch_size ** 2 * D + D + (D if c.pool == "cls" else 0) + c.num_tokens * D
    return front + c.layers * layer + 2 * D + D * C + C


@pytest.mark.parametrize("seed", range(6))
def test_parameter_count_closed_form(seed):
    config, _ = config_for(seed)
    model = ParaFormer(config)
    assert count_parameters(model) == closed_form_parameters(config)
    for p in model.stages.parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == closed_form_parameters(config) - sum(
        p.numel() for p in model.stages.parameters())


def test_bad_batch_is_refused():
    for bad in (0, -1, 2.0, "4"):
        with pytest.raises(ValueError, match="batch must be an int >= 1"):
            flops(ParaFormerConfig(), bad)
