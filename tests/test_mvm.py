"""The Matrix-Vector Method (docs/method.md section 2): module(x).flatten() == W @ x.flatten() + b
for every supported operation, random hyper-parameters, both float formats, dense and sparse."""
import random

import pytest
import torch
from torch import nn

from duat.paraformer import Attention
from duat.theory import mvm as M
from duat.theory.mvm import MatrixTooLargeError, apply, forward, mvm, mvm_error

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]


def _randomize_bn(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return bn.eval()


def check(module, x, dtype, sparse=None):
    module, x = module.to(dtype), x.to(dtype)
    err = mvm_error(module, x, sparse=sparse)
    assert err <= TOL[dtype], f"{module}: max abs error {err:.2e}"
    return err


def random_conv(rng):
    groups = rng.choice([1, 2, 3])
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    k = (rng.randint(1, 4), rng.randint(1, 4))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    mode = rng.choice(["zeros", "zeros", "reflect", "replicate", "circular"])
    if rng.random() < 0.25 and stride == (1, 1):
        padding = "same"
    else:
        padding = (rng.randint(0, k[0] - 1), rng.randint(0, k[1] - 1))
    H, W = rng.randint(max(k) * 2 + 2, 11), rng.randint(max(k) * 2 + 2, 11)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=rng.random() < 0.7, padding_mode=mode)
    x = torch.randn(1, cin, H, W) if rng.random() < 0.7 else torch.randn(cin, H, W)
    return conv, x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(24))
def test_conv2d_random_hyperparameters(seed, dtype):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    conv, x = random_conv(rng)
    check(conv, x, dtype)
    check(conv, x, dtype, sparse=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(16))
def test_pooling_random_hyperparameters(seed, dtype):
    rng = random.Random(100 + seed)
    torch.manual_seed(seed)
    k = rng.randint(1, 4)
    stride = rng.randint(1, 3)
    pad = rng.randint(0, k // 2)
    x = torch.randn(1, rng.randint(1, 3), rng.randint(k + 2, 10), rng.randint(k + 2, 10))
    avg = nn.AvgPool2d(k, stride, pad, ceil_mode=rng.random() < 0.5, count_include_pad=rng.random() < 0.5,
                       divisor_override=rng.choice([None, None, 3]))
    mx = nn.MaxPool2d(k, stride, pad, dilation=rng.randint(1, 2) if k * 2 < x.shape[-1] else 1,
                      ceil_mode=rng.random() < 0.5)
    check(avg, x, dtype)
    check(mx, x, dtype)
    check(avg, x[0], dtype, sparse=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fixed_and_gated_elementwise_ops(dtype):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 4)
    check(_randomize_bn(nn.BatchNorm2d(3)), x, dtype)
    check(_randomize_bn(nn.BatchNorm2d(3, affine=False)), x, dtype)
    for act in (nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Tanh()):
        check(act, x, dtype)
    for ident in (nn.Flatten(), nn.Identity(), nn.Dropout(0.5).eval(), nn.Unflatten(1, (3, 1))):
        check(ident, x, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_and_layernorm_tokenwise(dtype):
    torch.manual_seed(1)
    check(nn.Linear(7, 4), torch.randn(1, 7), dtype)
    check(nn.Linear(7, 4, bias=False), torch.randn(7), dtype)
    check(nn.Linear(7, 4), torch.randn(1, 5, 7), dtype)          # acts on each of 5 tokens
    check(nn.LayerNorm(6), torch.randn(1, 5, 6), dtype)
    check(nn.LayerNorm((3, 6), elementwise_affine=False), torch.randn(2, 3, 6), dtype)
    ln = nn.LayerNorm(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2), ln.bias.uniform_(-1, 1)
    check(ln, torch.randn(4, 6), dtype, sparse=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,batch_first,bias", [(1, True, True), (2, True, False), (4, False, True)])
def test_multihead_attention(heads, batch_first, bias, dtype):
    torch.manual_seed(heads)
    mha = nn.MultiheadAttention(8, heads, bias=bias, batch_first=batch_first).eval()
    T = 5
    x = torch.randn(1, T, 8) if batch_first else torch.randn(T, 1, 8)
    check(mha, x, dtype)
    check(mha, torch.randn(T, 8), dtype)  # unbatched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,qkv_bias", [(1, True), (2, False), (4, True)])
def test_kit_attention(heads, qkv_bias, dtype):
    torch.manual_seed(heads)
    attn = Attention(16, heads, qkv_bias=qkv_bias).eval()
    with torch.no_grad():  # the kit's init is small; make the maps far from uniform
        attn.qkv.weight.normal_(0, 0.5)
    check(attn, torch.randn(1, 6, 16), dtype)


def test_attention_matrix_depends_on_input():
    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    with torch.no_grad():
        attn.qkv.weight.normal_(0, 0.5)
    W1, _ = mvm(attn, torch.randn(1, 4, 8))
    W2, _ = mvm(attn, torch.randn(1, 4, 8))
    assert (W1 - W2).abs().max() > 1e-3


def test_relu_matrix_is_the_gate_diagonal():
    x = torch.tensor([[-1.0, 2.0, 0.0, 3.0]])
    W, b = mvm(nn.ReLU(), x)
    assert torch.equal(W, torch.diag(torch.tensor([0.0, 1.0, 0.0, 1.0])))
    assert torch.equal(b, torch.zeros(4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_cnn_chain_is_the_product(dtype):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), _randomize_bn(nn.BatchNorm2d(4)), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.GELU(),
                        nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(1, 2, 9, 9)
    check(net, x, dtype)
    check(net, x, dtype, sparse=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_token_chain(dtype):
    torch.manual_seed(3)
    net = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    check(net, torch.randn(1, 5, 8), dtype)


def test_large_convolution_becomes_sparse_and_stays_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 80, 80)  # dense W would be 25600 x 25600 = 655 M entries
    W, b = mvm(conv, x)
    assert W.is_sparse and W.shape == (25600, 25600)
    assert W._nnz() <= 4 * 80 * 80 * 4 * 9
    assert (forward(conv, x).flatten() - apply(W, b, x)).abs().max() <= 1e-5


def test_absurd_sizes_are_refused_with_the_size():
    conv = nn.Conv2d(64, 64, 3, padding=1)
    with pytest.raises(MatrixTooLargeError, match=r"262144 x 262144.*SPARSE_LIMIT"):
        mvm(conv, torch.zeros(1, 64, 64, 64))
    attn = Attention(128, 4)
    with pytest.raises(MatrixTooLargeError, match=r"25600 x 25600.*T = 200"):
        mvm(attn, torch.zeros(1, 200, 128))
    with pytest.raises(MatrixTooLargeError, match="DENSE_LIMIT"):
        mvm(nn.Conv2d(4, 4, 3, padding=1), torch.zeros(1, 4, 80, 80), sparse=False)
    assert M.DENSE_LIMIT < M.SPARSE_LIMIT


def test_unsupported_module_names_its_type():
    with pytest.raises(NotImplementedError, match="LSTM"):
        mvm(nn.LSTM(4, 4), torch.randn(1, 4))
    with pytest.raises(NotImplementedError, match="Softplus"):
        mvm(nn.Sequential(nn.Linear(4, 4), nn.Softplus()), torch.randn(1, 4))


@pytest.mark.parametrize("module,x,pattern", [
    (nn.Linear(5, 3), torch.randn(1, 4), r"\(\.\.\., 5\)"),
    (nn.Conv2d(3, 4, 3), torch.randn(1, 2, 8, 8), r"\(1, 3, H, W\)"),
    (nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8), r"one image"),
    (nn.MaxPool2d(2), torch.randn(8, 8), r"one image"),
    (nn.LayerNorm(6), torch.randn(1, 5, 4), r"\(\.\.\., 6\)"),
    (nn.MultiheadAttention(8, 2, batch_first=True), torch.randn(2, 5, 8), r"\(1, T, D\)"),
    (Attention(8, 2), torch.randn(5, 8), r"\(1, T, 8\)"),
])
def test_wrong_input_shape_is_a_clear_error(module, x, pattern):
    with pytest.raises(ValueError, match=pattern):
        mvm(module.eval(), x)


def test_batchnorm_in_training_mode_is_refused():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"training mode.*eval"):
        mvm(bn, torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(1, 3, H, W\)"):
        mvm(bn.eval(), torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="track_running_stats"):
        mvm(nn.BatchNorm2d(3, track_running_stats=False).eval(), torch.randn(1, 3, 4, 4))


def test_type_errors():
    with pytest.raises(TypeError, match="float64"):
        mvm(nn.Linear(3, 3), torch.randn(1, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        mvm(nn.ReLU(), torch.arange(3))
    with pytest.raises(TypeError, match="nn.Module"):
        mvm(lambda x: x, torch.randn(3))


def test_tanh_gate_at_zero_is_its_limit():
    """tanh(x) = diag(tanh(x) / x) x: at x = 0 the gate is the limit 1, never 0/0."""
    x = torch.tensor([-2.0, -1e-8, 0.0, 1e-8, 3.0])
    W, b = mvm(nn.Tanh(), x)
    gate = W.diagonal()
    assert torch.isfinite(gate).all() and gate[2] == 1.0
    assert torch.allclose(W @ x + b, torch.tanh(x), atol=1e-7)
