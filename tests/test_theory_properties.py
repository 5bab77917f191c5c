"""Property-style checks of the theory modules (docs/method.md sections 2-3): many random shapes and
hyper-parameters per test (seeded loops; the project has no hypothesis dependency), plus the
edge cases the main test files leave out."""
import random

import pytest
import torch
from torch import nn

from duat.paraformer import Attention, Block
from duat.theory import format_error
from duat.theory.mvm import forward, mvm, mvm_error
from duat.theory.unroll import ResidualCNN, ResidualMLP, ResidualMLPBlock, unroll

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]


def worst(cases, dtype):
    """The largest MVM error over (module, x) cases, and the case that gave it."""
    errs = [(mvm_error(m.to(dtype), x.to(dtype)), repr(m), tuple(x.shape)) for m, x in cases]
    return max(errs)


def check_random_cases(draw, rounds, seed, dtype):
    """Seed Python's and torch's generators, call draw(rng) `rounds` times (each call returns
    a list of (module, x) cases), and assert the worst MVM error over all of them is within
    TOL, naming the case that gave it."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    cases = [case for _ in range(rounds) for case in draw(rng)]
    err, module, shape = worst(cases, dtype)
    assert err <= TOL[dtype], f"{module} on {shape}: {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_many_random_configurations(dtype):
    def draw(rng):
        g = rng.choice([1, 1, 2, 3, 4])
        cin, cout = g * rng.randint(1, 2), g * rng.randint(1, 3)
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, 3), rng.randint(0, 3))
        H = d[0] * (k[0] - 1) + 1 + rng.randint(0, 6)    # at least one output row
        W = d[1] * (k[1] - 1) + 1 + rng.randint(0, 6)
        conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=rng.random() < 0.5)
        return [(conv, torch.randn(1, cin, H, W))]

    check_random_cases(draw, rounds=120, seed=7, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tokenwise_ops_random_shapes(dtype):
    def draw(rng):
        lead = tuple(rng.randint(1, 4) for _ in range(rng.randint(0, 2)))
        n_in, n_out = rng.randint(1, 9), rng.randint(1, 9)
        cases = [(nn.Linear(n_in, n_out, bias=rng.random() < 0.7), torch.randn(*lead, n_in))]
        ln = nn.LayerNorm(n_in + 1, elementwise_affine=rng.random() < 0.7)
        if ln.weight is not None:
            with torch.no_grad():
                ln.weight.uniform_(0.5, 2), ln.bias.uniform_(-1, 1)
        cases.append((ln, 3 * torch.randn(*lead, n_in + 1) + 1))
        act = rng.choice([nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Tanh()])
        return cases + [(act, torch.randn(*lead, n_in))]

    check_random_cases(draw, rounds=40, seed=11, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_random_heads_and_lengths(dtype):
    def draw(rng):
        heads = rng.choice([1, 2, 3, 4])
        D, T = heads * rng.randint(1, 4), rng.randint(1, 7)
        mha = nn.MultiheadAttention(D, heads, bias=rng.random() < 0.7, batch_first=True).eval()
        kit = Attention(D, heads, qkv_bias=rng.random() < 0.7).eval()
        with torch.no_grad():
            mha.in_proj_weight.normal_(0, 0.7)
            kit.qkv.weight.normal_(0, 0.7)
        return [(mha, torch.randn(1, T, D)), (kit, torch.randn(1, T, D))]

    check_random_cases(draw, rounds=12, seed=5, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_sequential_chains_are_the_product(dtype):
    rng = random.Random(3)
    torch.manual_seed(3)
    for _ in range(8):
        c1, c2 = rng.randint(1, 4), rng.randint(1, 4)
        layers = [nn.Conv2d(1, c1, 3, padding=1)]
        if rng.random() < 0.5:
            bn = nn.BatchNorm2d(c1)
            with torch.no_grad():
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            layers.append(bn.eval())
        layers.append(rng.choice([nn.ReLU(), nn.GELU()]))
        layers.append(rng.choice([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
        layers += [nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(c2 * 16, 5)]
        net = nn.Sequential(*layers).to(dtype)
        x = torch.randn(1, 1, 16, 16, dtype=dtype)
        for sparse in (None, True, False):
            W, _ = mvm(net, x, sparse=sparse)
            assert W.shape == (5, 256) and W.is_sparse == bool(sparse)
            assert mvm_error(net, x, sparse=sparse) <= TOL[dtype]


def test_sequential_may_hold_multihead_attention():
    torch.manual_seed(0)
    net = nn.Sequential(nn.LayerNorm(8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 8)).eval()
    x = torch.randn(1, 5, 8)
    W, b = mvm(net, x)
    ln, mha, lin = net
    expected = lin(forward(mha, ln(x)))
    assert (expected.flatten() - (W @ x.flatten() + b)).abs().max() <= 1e-5


def test_dropout_without_rate_is_allowed_in_training_mode():
    x = torch.randn(1, 4)
    assert mvm_error(nn.Dropout(0.0).train(), x) == 0
    with pytest.raises(ValueError, match="training mode"):
        mvm(nn.Dropout(0.2).train(), x)


def test_cross_attention_shapes_are_refused_clearly():
    mha = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True).eval()
    with pytest.raises(ValueError, match="kdim == vdim == embed_dim = 8"):
        mvm(mha, torch.randn(1, 3, 8))


def test_mixed_residual_blocks_are_refused():
    net = nn.Sequential(ResidualMLPBlock(16, 8), Block(16, 2))
    with pytest.raises(ValueError, match="a mix of Block, ResidualMLPBlock"):
        unroll(net, torch.randn(2, 16))


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh"])
def test_b_tilde_is_the_papers_formula(activation):
    """b~_l(x0) = b1_l + W1_l (x_{l-1} - x0), with x_{l-1} read off the forward pass."""
    torch.manual_seed(0)
    net = ResidualMLP(5, 7, 6, activation).double()
    x0 = torch.randn(10, 5, dtype=torch.float64)
    u = unroll(net, x0)
    for l, (term, block) in enumerate(zip(u.terms, net.blocks), start=1):
        x_prev = u.stream[l - 1]
        expected = block.fc1.bias + (x_prev - x0) @ block.fc1.weight.T
        assert torch.allclose(term.b_tilde, expected, atol=1e-12)
    assert (u.reconstruct() - net(x0)).abs().max() <= 1e-10


@pytest.mark.parametrize("dtype", DTYPES)
def test_unroll_random_sizes(dtype):
    rng = random.Random(1)
    for i in range(6):
        torch.manual_seed(i)
        mlp = ResidualMLP(rng.randint(1, 8), rng.randint(1, 12), rng.randint(1, 8),
                          rng.choice(["relu", "gelu", "tanh"])).to(dtype)
        x0 = torch.randn(rng.randint(1, 9), mlp.blocks[0].fc1.in_features, dtype=dtype)
        assert unroll(mlp, x0).max_error() <= TOL[dtype]
        cnn = ResidualCNN(rng.randint(1, 3), rng.randint(1, 5), rng.choice([1, 3, 5])).to(dtype)
        x0 = torch.randn(rng.randint(1, 3), cnn.blocks[0].conv1.in_channels, rng.randint(3, 7),
                         rng.randint(3, 7), dtype=dtype)
        assert (unroll(cnn, x0).reconstruct() - cnn(x0)).abs().max() <= TOL[dtype]


def test_format_error():
    assert format_error(4.8e-07) == "4.8e-07"
    assert format_error(0.041) == "4.1e-02"
    assert format_error(0.0) == "0.0e-16"
    assert format_error(5.6e-17) == "0.6e-16"
    assert float(format_error(0.0)) == 0.0
    assert format_error(torch.tensor(2.0, requires_grad=True) * 1e-7) == "2.0e-07"
    with pytest.raises(ValueError, match="non-negative"):
        format_error(-1.0)
