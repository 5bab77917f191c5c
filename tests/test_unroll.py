"""Residual networks unrolled into dynamic-UAT terms (docs/method.md section 3): the terms sum to
the forward pass for depths 1, 4 and 12, and bad input is refused with a clear error."""
import pytest
import torch
from torch import nn

from duat.paraformer import Block
from duat.theory.unroll import (ResidualCNN, ResidualMLP, TransformerTerm, UATTerm, parameter_spread,
                                residual_blocks, unroll, unroll_error)

from conftest import tiny_paraformer

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]
DEPTHS = [1, 4, 12]


def sharpen(net):
    """The kit's init (std 0.02) makes attention nearly uniform; widen the weights so the
    input-dependent parts are really exercised."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "weight" in name and p.ndim >= 2:
                p.normal_(0, 0.3)
    return net


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_residual_mlp_terms_sum_to_forward(depth, dtype):
    torch.manual_seed(depth)
    net = ResidualMLP(6, 16, depth).to(dtype)
    x0 = torch.randn(8, 6, dtype=dtype)
    u = unroll(net, x0)
    assert len(u.terms) == depth and all(isinstance(t, UATTerm) for t in u.terms)
    assert (u.reconstruct() - net(x0)).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_residual_cnn_terms_sum_to_forward(depth, dtype):
    torch.manual_seed(depth)
    net = ResidualCNN(3, depth).to(dtype)
    x0 = torch.randn(3, 3, 6, 5, dtype=dtype)
    u = unroll(net, x0)
    assert (u.reconstruct() - net(x0)).abs().max() <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("stage", ["batched", "reference"])
def test_transformer_terms_sum_to_forward(depth, stage, dtype):
    torch.manual_seed(depth)
    net = sharpen(tiny_paraformer(depth, stage=stage)).to(dtype)
    x0 = net.forward_tokens(torch.randn(3, 1, 8, 8, dtype=dtype))
    u = unroll(net, x0)
    assert all(isinstance(t, TransformerTerm) for t in u.terms)
    expected = x0
    for s in net.stages:
        expected = s(expected)
    assert (u.reconstruct() - expected).abs().max() <= TOL[dtype]
    assert u.max_error() <= TOL[dtype]


def test_sequence_of_blocks_and_each_term_is_its_residual_update():
    torch.manual_seed(0)
    blocks = sharpen(nn.ModuleList(Block(8, 2, 2.0) for _ in range(3))).double()
    x0 = torch.randn(2, 4, 8, dtype=torch.float64)
    u = unroll(blocks, x0)
    for l, value in enumerate(u.term_values()):
        assert torch.allclose(value, (u.stream[l + 1] - u.stream[l]).flatten(1), atol=1e-12)
    maps = u.terms[0].attn_maps
    assert maps.shape == (2, 2, 4, 4)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 2, 4, dtype=torch.float64))


def test_mlp_b_tilde_is_static_in_layer_one_and_dynamic_after():
    torch.manual_seed(0)
    net = ResidualMLP(4, 8, 3)
    u = unroll(net, torch.randn(16, 4))
    assert torch.allclose(u.terms[0].b_tilde, net.blocks[0].fc1.bias.expand(16, -1))
    spread = parameter_spread(u)
    assert [r["layer"] for r in spread] == [1, 2, 3]
    assert spread[0]["b_tilde_std"] == 0.0
    assert spread[1]["b_tilde_std"] > 1e-3 and spread[2]["b_tilde_std"] > 1e-3


def test_transformer_weights_vary_across_inputs():
    torch.manual_seed(0)
    net = sharpen(tiny_paraformer(2))
    u = unroll(net, net.forward_tokens(torch.randn(4, 1, 8, 8)))
    for row in parameter_spread(u):
        assert row["A_std"] > 1e-4 and row["attn_map_std"] > 1e-4 and row["b_tilde_std"] > 1e-4


def test_unroll_error_helper():
    torch.manual_seed(0)
    assert unroll_error(ResidualMLP(3, 5, 4), torch.randn(4, 3)) <= 1e-5


@pytest.mark.parametrize("net,pattern", [
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)), r"serial residual network.*member 0 is a Linear"),
    (nn.Linear(4, 4), r"serial residual network.*got Linear"),
    (tiny_paraformer(1, 2), r"2 parallel branches"),
    (nn.Sequential(), r"got Sequential"),
])
def test_non_residual_networks_are_refused(net, pattern):
    with pytest.raises(ValueError, match=pattern):
        unroll(net, torch.randn(2, 4))


def test_residual_blocks_lists_the_layers():
    assert len(residual_blocks(tiny_paraformer(3))) == 3
    assert len(residual_blocks(ResidualCNN(2, 5))) == 5


@pytest.mark.parametrize("net,x0,pattern", [
    (ResidualMLP(4, 8, 2), torch.randn(2, 5), r"\(B, 4\)"),
    (ResidualMLP(4, 8, 2), torch.randn(4), r"\(B, 4\)"),
    (ResidualCNN(3, 2), torch.randn(3, 6, 6), r"\(B, 3, H, W\)"),
    (tiny_paraformer(2), torch.randn(2, 5, 8), r"\(B, T, 16\)"),
])
def test_wrong_input_shape_is_refused(net, x0, pattern):
    with pytest.raises(ValueError, match=pattern):
        unroll(net, x0)


def test_training_mode_dropout_is_refused():
    net = tiny_paraformer(2, dropout=0.1)
    with pytest.raises(ValueError, match="eval"):
        unroll(net.train(), torch.randn(2, 5, 16))
    assert unroll(net.eval(), torch.randn(2, 5, 16)).max_error() <= 1e-5


def test_constructor_checks():
    with pytest.raises(ValueError, match="activation"):
        ResidualMLP(4, 8, 2, activation="swish")
    with pytest.raises(ValueError, match="odd"):
        ResidualCNN(3, 2, kernel_size=2)
