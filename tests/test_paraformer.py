"""Para-Former-m-n (docs/method.md section 4): the batched stage computes exactly what the reference
loop computes, forward and backward; the serial ViT is its n = 1 case; the registry's named
models; bad input is refused with a clear ValueError; devices, autocast and torch.compile."""
import copy
import os
import random
from functools import partial

import pytest
import torch

from duat.paraformer import Block, ParaFormer, ParaFormerConfig, ParallelStage, ReferenceStage
from duat.registry import create_model, list_models, model_config, parse_name

import conftest
from conftest import tiny_paraformer

TOL = 1e-5  # float32: batched and reference stages agree to rounding


# Every parameter drawn afresh (biases and norm affines too), so no term is trivially zero.
randomize = partial(conftest.randomize, scale=0.3, replace=True)


def random_config(seed):
    rng = random.Random(seed)
    heads = rng.randint(1, 4)
    patch = rng.choice([1, 2, 3])
    return ParaFormerConfig(
        image_size=patch * rng.randint(1, 3), patch_size=patch, in_channels=rng.randint(1, 3),
        num_classes=rng.randint(2, 7), dim=heads * rng.randint(4, 16), heads=heads,
        mlp_ratio=rng.choice([1.0, 1.5, 2.0, 4.0]), depth=rng.randint(1, 4), width=rng.randint(1, 4),
        pool=rng.choice(["cls", "mean"]), qkv_bias=rng.random() < 0.8,
    ), rng.randint(1, 5), rng.random() < 0.5


def stage_params(model):
    """{(stage, branch, Block path): tensor} for either stage implementation."""
    from duat.paraformer import STACKED

    out = {}
    for s, stage in enumerate(model.stages):
        if isinstance(stage, ReferenceStage):
            for i, block in enumerate(stage.blocks):
                for name, p in block.named_parameters():
                    out[s, i, name] = p
        else:
            for name, path in STACKED:
                stacked = getattr(stage, name)
                if stacked is not None:
                    for i in range(stacked.shape[0]):
                        out[s, i, path] = (stacked, i)
    return out


def grads_of(model):
    got = {}
    for key, p in stage_params(model).items():
        got[key] = p[0].grad[p[1]] if isinstance(p, tuple) else p.grad
    for name, p in model.named_parameters():
        if not name.startswith("stages."):
            got[name] = p.grad
    return got


# ----------------------------------------------------------------------------- batched == reference

@pytest.mark.parametrize("seed", range(16))
def test_batched_equals_reference_forward_and_backward(seed):
    config, batch, train = random_config(seed)
    torch.manual_seed(seed)
    batched = randomize(ParaFormer(config), seed=seed).train(train)
    reference = copy.deepcopy(batched).to_reference()
    assert all(isinstance(s, ParallelStage) for s in batched.stages)
    assert all(isinstance(s, ReferenceStage) for s in reference.stages)
    assert reference.training == train

    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    y_b, y_r = batched(x), reference(x)
    assert y_b.shape == (batch, config.num_classes)
    assert (y_b - y_r).abs().max().item() <= TOL

    target = torch.randn_like(y_b)
    ((y_b - target) ** 2).sum().backward()
    ((y_r - target) ** 2).sum().backward()
    g_b, g_r = grads_of(batched), grads_of(reference)
    assert g_b.keys() == g_r.keys() and len(g_b) == len(list(reference.parameters()))
    for key in g_b:
        scale = max(1.0, g_r[key].abs().max().item())
        assert (g_b[key] - g_r[key]).abs().max().item() <= TOL * scale, key


@pytest.mark.parametrize("budget", [1, 20, 50])
def test_cpu_row_budget_chunks_branches_without_changing_the_result(budget):
    torch.manual_seed(0)
    model = randomize(ParaFormer(dim=12, heads=3, depth=2, width=5, image_size=4, patch_size=2))
    x = torch.randn(3, 1, 4, 4)
    whole = model(x)
    for stage in model.stages:
        stage.cpu_row_budget = budget     # 3 images x 5 tokens = 15 rows per branch
        size = max(1, min(5, budget // 15))             # branches per batched call
        assert stage.chunks(5, 15, x.device) == [slice(s, min(s + size, 5)) for s in range(0, 5, size)]
    assert (model(x) - whole).abs().max().item() <= TOL


def test_conversion_is_exact_both_ways_and_keeps_mode_dtype():
    torch.manual_seed(1)
    model = randomize(ParaFormer(dim=16, heads=2, depth=3, width=3)).double().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.to_reference()
    assert model.config.stage == "reference" and not model.training
    assert all(p.dtype == torch.float64 for p in model.parameters())
    model.to_batched()
    assert model.config.stage == "batched"
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_conversion_copies_rather_than_shares():
    stage = ReferenceStage([Block(8, 2, 2.0) for _ in range(3)])
    par = ParallelStage.from_reference(stage)
    with torch.no_grad():
        par.qkv_weight.zero_()
    assert stage.blocks[0].attn.qkv.weight.abs().sum() > 0


def test_stacked_weight_shapes():
    model = ParaFormer(dim=12, heads=3, mlp_ratio=2.0, depth=2, width=4)
    stage = model.stages[0]
    assert stage.width == 4
    assert stage.qkv_weight.shape == (4, 36, 12)
    assert stage.fc1_weight.shape == (4, 24, 12)
    assert stage.fc2_weight.shape == (4, 12, 24)
    assert stage.norm1_weight.shape == (4, 12)


def test_hidden_width_that_float_rounding_would_change():
    # dim 11 * 1.37 -> 15 hidden units, while int(11 * (15 / 11)) == 14: to_reference must
    # still rebuild 15-unit MLPs.
    model = randomize(ParaFormer(dim=11, heads=1, mlp_ratio=1.37, width=2))
    x = torch.randn(2, 1, 8, 8)
    assert model.config.hidden_dim == 15
    assert (copy.deepcopy(model).to_reference()(x) - model(x)).abs().max().item() <= TOL


def test_eval_mode_ignores_dropout_train_mode_uses_it():
    torch.manual_seed(2)
    model = randomize(ParaFormer(dim=16, heads=2, depth=2, width=3, dropout=0.3, attn_dropout=0.3))
    reference = copy.deepcopy(model).to_reference()
    x = torch.randn(2, 1, 8, 8)
    model.eval(), reference.eval()
    assert (model(x) - reference(x)).abs().max().item() <= TOL
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# ----------------------------------------------------------------------------- the maths of a stage

def test_serial_vit_is_depth_L_width_1():
    torch.manual_seed(3)
    model = randomize(ParaFormer(dim=16, heads=4, depth=4, width=1), seed=3).eval()
    x = torch.randn(2, 1, 8, 8)
    tokens = model.forward_tokens(x)
    for row in model.blocks():           # x_l = x_{l-1} + f_l(x_{l-1}), one layer after another
        (block,) = row
        tokens = block(tokens)
    expected = model.head(model.pool(model.norm(tokens)))
    assert (model(x) - expected).abs().max().item() <= TOL


def test_parallel_stage_is_input_plus_sum_of_updates():
    torch.manual_seed(4)
    model = randomize(ParaFormer(dim=16, heads=2, depth=1, width=4), seed=4).eval()
    x = torch.randn(3, 1, 8, 8)
    x0 = model.forward_tokens(x)
    blocks = model.blocks()[0]
    y = x0 + sum(b(x0) - x0 for b in blocks)  # every layer reads the same x0
    assert (model.stages[0](x0) - y).abs().max().item() <= TOL
    # and it is not the serial composition
    serial = x0
    for b in blocks:
        serial = b(serial)
    assert (serial - y).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- registry

@pytest.mark.parametrize("name", list_models())
def test_named_models(name):
    m, n = parse_name(name)
    torch.manual_seed(0)
    model = create_model(name, stage="batched").eval()
    assert (model.config.depth, model.config.width) == (m, n)
    assert len(model.stages) == m and all(s.width == n for s in model.stages)
    if name.startswith("vit-"):
        assert n == 1 and model_config(f"pf-{m}-1", stage="batched") == model.config
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 10) and torch.isfinite(y).all()
        reference = copy.deepcopy(model).to_reference()
        assert (reference(x) - y).abs().max().item() <= TOL


def test_equal_layer_counts_have_equal_parameters():
    counts = {name: sum(p.numel() for p in create_model(name).parameters())
              for name in ("vit-12", "pf-1-12", "pf-2-6", "pf-3-4", "pf-4-3", "pf-6-2")}
    assert len(set(counts.values())) == 1, counts
    assert sum(p.numel() for p in create_model("vit-6").parameters()) < counts["vit-12"]


def test_registry_refuses_bad_names_and_options():
    for bad in ("vit-0", "pf-0-3", "pf-2-0", "vit", "resnet-50", "pf-2", 12):
        with pytest.raises(ValueError, match="expected 'vit-L', 'gpt-L' or 'pf-m-n'|depth and width|must be"):
            model_config(bad)
    with pytest.raises(ValueError, match="unknown size"):
        model_config("vit-2", size="huge")
    with pytest.raises(ValueError, match="unknown option"):
        model_config("vit-2", colour=True)
    with pytest.raises(ValueError, match="contradicts"):
        model_config("pf-2-3", width=4)
    c = model_config("pf-2-3", size="small", image_size=32, in_channels=3)
    assert (c.dim, c.patch_size, c.depth, c.width) == (192, 4, 2, 3)


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def small():
    return tiny_paraformer(patch_size=2, in_channels=3, dim=8)


@pytest.mark.parametrize("shape, words", [
    ((2, 3, 8, 6), r"expected 8x8 images.*got 8x6"),
    ((2, 3, 16, 16), r"expected 8x8 images.*got 16x16"),
    ((2, 1, 8, 8), r"expected 3 channel\(s\).*got 1 channel"),
    ((3, 8, 8), r"expected images of shape \(batch, 3, 8, 8\), got a 3-D tensor"),
    ((0, 3, 8, 8), r"at least one image"),
])
def test_wrong_image_shapes_are_refused(small, shape, words):
    with pytest.raises(ValueError, match=words):
        small(torch.zeros(shape))


def test_non_tensor_input_is_a_type_error(small):
    with pytest.raises(TypeError, match="torch.Tensor"):
        small([[0.0]])


@pytest.mark.parametrize("kwargs, words", [
    (dict(image_size=10, patch_size=4), "image_size 10 is not divisible by patch_size 4"),
    (dict(depth=0), r"depth \(m\) must be an int >= 1, got 0"),
    (dict(width=0), r"width \(n\) must be an int >= 1, got 0"),
    (dict(width=-2), r"width \(n\)"),
    (dict(depth=1.5), r"depth \(m\)"),
    (dict(width=True), r"width \(n\)"),
    (dict(dim=10, heads=4), "dim 10 is not divisible by heads 4"),
    (dict(pool="max"), "pool must be one of"),
    (dict(stage="fast"), "stage must be one of"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(mlp_ratio=0), "mlp_ratio must be > 0"),
    (dict(dim=0), "dim must be a positive int"),
])
def test_bad_configurations_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ParaFormer(**kwargs)


def test_config_and_kwargs_together_are_refused():
    with pytest.raises(TypeError, match="not both"):
        ParaFormer(ParaFormerConfig(), dim=8)


def test_nan_inputs_are_caught_by_the_debug_check():
    x = torch.zeros(2, 1, 8, 8)
    x[1, 0, 3, 3] = float("nan")
    checked = ParaFormer(dim=8, heads=2, debug_checks=True)
    with pytest.raises(ValueError, match="NaN or inf"):
        checked(x)
    x[1, 0, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        checked(x)
    # without the debug check, no per-call cost and no error: the NaN just propagates
    assert torch.isnan(ParaFormer(dim=8, heads=2)(x)[1]).any()


def test_stage_needs_a_block():
    with pytest.raises(ValueError, match="at least one block"):
        ReferenceStage([])
    with pytest.raises(ValueError, match="at least one block"):
        ParallelStage([])


# ----------------------------------------------------------------------------- devices and precision

_tiny = partial(tiny_paraformer, 2, 3, seed=5, patch_size=2)  # Para-Former-2-3, 16 patches


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_autocast_is_close_to_float32(dtype):
    model, x = _tiny(), torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=dtype):
            low = model(x)
    assert low.dtype == dtype
    assert torch.allclose(low.float(), full, atol=5e-2, rtol=5e-2)


def test_half_precision_weights_run():
    model, x = _tiny().to(torch.bfloat16), torch.randn(2, 1, 8, 8, dtype=torch.bfloat16)
    ref = copy.deepcopy(model).to_reference()
    with torch.no_grad():
        assert torch.allclose(model(x).float(), ref(x).float(), atol=5e-2)


def test_torch_compile_matches_eager():
    # aot_eager traces forward and backward like inductor but skips code generation, which
    # takes over a minute on a 2-core CPU (DUAT_TEST_INDUCTOR=1 runs the inductor test below).
    torch._dynamo.reset()
    model, x = _tiny(), torch.randn(2, 1, 8, 8)
    compiled = torch.compile(model, backend="aot_eager")
    assert (compiled(x) - model(x)).abs().max().item() <= TOL
    model.train()
    compiled(x).sum().backward()
    assert model.stages[0].qkv_weight.grad is not None


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DUAT_TEST_INDUCTOR") != "1",
                    reason="inductor compilation takes about a minute on 2 CPU cores; set DUAT_TEST_INDUCTOR=1")
def test_torch_compile_inductor():
    torch._dynamo.reset()
    model, x = _tiny(), torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (torch.compile(model)(x) - model(x)).abs().max().item() <= TOL


def _device_check(device):
    torch.manual_seed(6)
    model = randomize(ParaFormer(dim=32, heads=4, depth=2, width=4), seed=6).eval()
    x = torch.randn(4, 1, 8, 8)
    expected = model(x).detach()
    model, x = model.to(device), x.to(device)
    with torch.no_grad():
        got = model(x)
        ref = copy.deepcopy(model).to_reference()(x)
        assert (got - ref).abs().max().item() <= 1e-4
        assert (got.cpu() - expected).abs().max().item() <= 1e-3
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast(device.split(":")[0], dtype=dtype):
                low = model(x)
            assert torch.allclose(low.float().cpu(), expected, atol=0.1, rtol=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda():
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _device_check("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


@pytest.mark.skipif(not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
                    reason="no MPS device")
def test_mps():
    _device_check("mps")


# ----------------------------------------------------------------------------- the drawing

def test_diagram_draws_one_box_per_layer():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duat.diagrams import draw_layouts, draw_paraformer

    ax = draw_paraformer(2, 3, placement=[[0, 2, 4], [1, 3, 5]])
    labels = [t.get_text() for t in ax.texts]
    assert sorted(l for l in labels if l.startswith("$f_")) == sorted(f"$f_{{{l}}}$" for l in range(1, 7))
    assert labels.count("+") == 2 and ax.get_title() == "Para-Former-2-3"
    fig = draw_layouts([(4, 1), (1, 4)])
    assert [a.get_title() for a in fig.axes] == ["ViT-4 = Para-Former-4-1", "Para-Former-1-4"]
    plt.close("all")
    with pytest.raises(ValueError, match=r"width \(n\) must be an int in \[1, 16\]"):
        draw_paraformer(2, 0)
    with pytest.raises(ValueError, match="placement must be 2 rows of 2"):
        draw_paraformer(2, 2, placement=[[0, 1]])


# ----------------------------------------------------------------------------- batched = reference, in every mode

def _stage_pair(n, qkv_bias=True, seed=0, dim=16, heads=2, dtype=torch.float32):
    torch.manual_seed(seed)
    ref = ReferenceStage([Block(dim, heads, 2.0, qkv_bias=qkv_bias) for _ in range(n)])
    for p in ref.parameters():  # every tensor drawn afresh: norm affines far from (1, 0)
        with torch.no_grad():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 and p.shape[0] == dim else 0.0))
    ref = ref.to(dtype)
    return ref, ParallelStage.from_reference(ref)


def _close(a, b, tol=TOL):
    scale = max(1.0, b.abs().max().item())
    assert (a - b).abs().max().item() <= tol * scale


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("budget", [None, 1, 14])   # 7 rows per branch: all, 1 and 2 per chunk
@pytest.mark.parametrize("mode", ["inference", "no_grad", "grad"])
def test_fast_path_forward_equals_reference(n, qkv_bias, budget, mode):
    ref, par = _stage_pair(n, qkv_bias, seed=n)
    par.cpu_row_budget = budget
    ref.eval(), par.eval()
    x = torch.randn(2, 7, 16)
    ctx = {"inference": torch.inference_mode, "no_grad": torch.no_grad,
           "grad": torch.enable_grad}[mode]
    with ctx():
        y_p, y_r = par(x), ref(x)
        _close(y_p, y_r)
        _close(par(x), y_r)           # and again: nothing carried over from the first call
        _close(par.branch_updates(x), ref.branch_updates(x))
        if budget is None:
            assert torch.equal(x + par.branch_updates(x).sum(0), par(x))


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("budget", [None, 14])
def test_fast_path_gradients_equal_reference(n, budget):
    ref, par = _stage_pair(n, seed=10 + n)
    par.cpu_row_budget = budget
    ref.train(), par.train()            # dropout 0: training runs the same arithmetic
    x = torch.randn(3, 7, 16)
    x_p, x_r = x.clone().requires_grad_(), x.clone().requires_grad_()
    target = torch.randn_like(x)
    ((par(x_p) - target) ** 2).sum().backward()
    ((ref(x_r) - target) ** 2).sum().backward()
    _close(x_p.grad, x_r.grad)
    from duat.paraformer import STACKED
    for name, path in STACKED:
        for i, block in enumerate(ref.blocks):
            _close(getattr(par, name).grad[i], block.get_parameter(path).grad)


