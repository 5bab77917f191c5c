"""duat.inside (docs/method.md sections 3 and 4): the branch updates add up to each stage's
output, the cosine matrix is a cosine matrix, a branch whose update is zero costs nothing
when left out, attention rows are distributions, the per-branch DUAT terms sum back to the
forward pass, and bad input is refused with one clear line."""
import pytest
import torch

from duat import inside
from duat.paraformer import ParallelStage
from duat.theory.unroll import ResidualMLP
from duat.training import evaluate

import conftest
from conftest import tiny_paraformer

TOL = 1e-12  # float64: sums that are the same arithmetic in another order


def model_and_images(depth=2, width=3, seed=0, dtype=torch.float64, **kw):
    """A tiny Para-Former-m-n with every parameter drawn afresh (no term is trivially zero)
    and a few random 8x8 images."""
    model = conftest.randomize(tiny_paraformer(depth, width, seed=seed, **kw), scale=0.3,
                               seed=seed, replace=True).to(dtype)
    g = torch.Generator().manual_seed(seed)
    return model, torch.randn(5, 1, 8, 8, generator=g, dtype=dtype)


@pytest.mark.parametrize("stage", ["batched", "reference"])
@pytest.mark.parametrize("depth,width", [(1, 1), (1, 4), (2, 3)])
def test_branch_updates_plus_input_are_each_stage_output(stage, depth, width):
    model, x = model_and_images(depth, width, stage=stage)
    stream = inside.stage_stream(model, x)
    updates = inside.branch_updates(model, x)
    assert len(stream) == depth + 1 and len(updates) == depth
    for s, f in enumerate(updates):
        assert f.shape == (width, 5, model.config.num_tokens, model.config.dim)
        torch.testing.assert_close(stream[s] + f.sum(0), stream[s + 1], rtol=0, atol=TOL)
    torch.testing.assert_close(model.head(model.pool(model.norm(stream[-1]))), model(x), rtol=0, atol=TOL)


def test_batched_branch_updates_are_exactly_the_forward_sum():
    """The same batched arithmetic as forward, before the sum: equal to the last bit."""
    model, x = model_and_images(1, 4, dtype=torch.float32)
    stage, tokens = model.stages[0], model.forward_tokens(x)
    with torch.no_grad():
        assert torch.equal(tokens + stage.branch_updates(tokens).sum(0), stage(tokens))


def test_batched_and_reference_branch_updates_agree_and_chunking_changes_nothing():
    model, x = model_and_images(2, 4)
    batched = inside.branch_updates(model, x)
    model.stages[0].cpu_row_budget = 5 * model.config.num_tokens   # one branch per chunk
    chunked = inside.branch_updates(model, x)
    reference = inside.branch_updates(model.to_reference(), x)
    for b, c, r in zip(batched, chunked, reference):
        torch.testing.assert_close(b, c, rtol=0, atol=TOL)
        torch.testing.assert_close(b, r, rtol=0, atol=TOL)


def test_update_norms_are_the_norms_of_the_updates_and_relative_divides_by_the_input():
    model, x = model_and_images(2, 2)
    stream, updates = inside.stage_stream(model, x), inside.branch_updates(model, x)
    norms, rel = inside.update_norms(model, x), inside.update_norms(model, x, relative=True)
    for s in range(2):
        assert norms[s].shape == (2, 5)
        want = torch.stack([updates[s][i, b].norm() for i in range(2) for b in range(5)]).view(2, 5)
        torch.testing.assert_close(norms[s], want)
        torch.testing.assert_close(rel[s] * stream[s].flatten(1).norm(dim=1), norms[s])


def test_cosine_is_symmetric_with_unit_diagonal_and_bounded():
    model, x = model_and_images(2, 4)
    for c in inside.branch_cosine(model, x):
        assert c.shape == (4, 4)
        torch.testing.assert_close(c, c.T, rtol=0, atol=TOL)
        torch.testing.assert_close(c.diagonal(), torch.ones(4, dtype=c.dtype), rtol=0, atol=TOL)
        assert (c.abs() <= 1 + TOL).all()
        assert (c - torch.eye(4, dtype=c.dtype)).abs().max() < 0.99   # random branches differ


@pytest.mark.parametrize("stage", ["batched", "reference"])
def test_identical_branches_have_cosine_one_and_opposite_ones_minus_one(stage):
    model, x = model_and_images(1, 3, stage=stage)
    ref = model.to_reference() if stage == "batched" else model
    blocks = ref.stages[0].blocks
    blocks[1].load_state_dict(blocks[0].state_dict())            # branch 1 = branch 0
    model = ref.to_batched() if stage == "batched" else ref
    c = inside.branch_cosine(model, x)[0]
    assert c[0, 1].item() == pytest.approx(1.0, abs=1e-12)
    assert c[0, 2].item() < 0.99
    # the mean of a cosine that is 1 for every example is 1: not a coincidence of averaging
    f = inside.branch_updates(model, x)[0]
    torch.testing.assert_close(f[0], f[1], rtol=0, atol=TOL)


def test_a_branch_with_zero_update_has_cosine_zero_not_nan():
    model, x = model_and_images(1, 2)
    model = inside.without_branch(model, 0, 1)
    c = inside.branch_cosine(model, x)[0]
    assert torch.isfinite(c).all()
    assert c[0, 0].item() == pytest.approx(1.0) and c[1, 1].item() == 0.0 and c[0, 1].item() == 0.0


@pytest.mark.parametrize("stage", ["batched", "reference"])
def test_without_branch_leaves_exactly_that_update_out(stage):
    model, x = model_and_images(2, 3, stage=stage)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dropped = inside.without_branch(model, 1, 2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    stream, updates = inside.stage_stream(model, x), inside.branch_updates(model, x)
    got = inside.stage_stream(dropped, x)
    torch.testing.assert_close(got[1], stream[1], rtol=0, atol=TOL)          # stage 1 unchanged
    want = stream[1] + updates[1][:2].sum(0)                                 # x + f_0 + f_1
    torch.testing.assert_close(got[2], want, rtol=0, atol=TOL)
    assert inside.branch_updates(dropped, x)[1][2].abs().max() == 0


def batches(x, y, size=4):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def test_leave_one_out_of_a_zero_branch_equals_the_full_model():
    model, _ = model_and_images(2, 2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(24, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (24,), generator=g)
    y[:12] = model(x[:12]).argmax(1)                       # half right, so accuracy is not 0
    zeroed = inside.without_branch(model, 1, 0)           # branch 0 of stage 2 contributes 0
    result = inside.leave_one_out(zeroed, batches(x, y))
    full = result["full"]
    assert full == evaluate(zeroed, batches(x, y))["accuracy"] and 0 < full <= 1
    assert result["without"][1][0] == full                 # leaving out a zero changes nothing
    assert len(result["without"]) == 2 and all(len(r) == 2 for r in result["without"])
    for s in range(2):
        for i in range(2):
            assert result["without"][s][i] == evaluate(inside.without_branch(zeroed, s, i), batches(x, y))["accuracy"]


def test_leave_one_out_counts_correct_labels_and_refuses_an_empty_loader():
    model, x = model_and_images(1, 2)
    pred = model(x).argmax(1)
    wrong = (pred + 1) % 10
    assert inside.leave_one_out(model, [(x, pred)])["full"] == 1.0
    assert inside.leave_one_out(model, [(x, wrong)])["full"] == 0.0
    with pytest.raises(ValueError, match="no examples"):
        inside.leave_one_out(model, [])


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_rows_are_distributions(pool):
    model, x = model_and_images(2, 3, pool=pool)
    maps = inside.attention_maps(model, x)
    c = model.config
    assert len(maps) == 2
    for a in maps:
        assert a.shape == (3, 5, c.heads, c.num_tokens, c.num_tokens)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype), rtol=0, atol=TOL)


def test_attention_maps_depend_on_the_image_and_reproduce_the_attention_output():
    """The maps are those the stage uses: maps @ V, projected, is the branch's attention a_i."""
    model, x = model_and_images(1, 2)
    maps = inside.attention_maps(model, x)[0]                                 # (n, B, h, T, T)
    assert (maps[:, 0] - maps[:, 1]).abs().max() > 1e-3
    tokens = model.forward_tokens(x)
    for i, block in enumerate(model.blocks()[0]):
        u = block.norm1(tokens)
        B, T, D = u.shape
        v = block.attn.qkv(u)[..., 2 * D:].view(B, T, block.attn.heads, -1).transpose(1, 2)
        o = (maps[i] @ v).transpose(1, 2).reshape(B, T, D)
        torch.testing.assert_close(block.attn.proj(o), block.attn(u), rtol=0, atol=1e-10)


@pytest.mark.parametrize("depth,width", [(1, 3), (2, 2), (3, 1)])
def test_per_branch_duat_terms_sum_to_the_forward_pass(depth, width):
    model, x = model_and_images(depth, width)
    tokens = model.forward_tokens(x)
    u = inside.unroll_paraformer(model, tokens)
    assert len(u.terms) == depth * width == len(inside.term_labels(model))
    assert u.max_error() < 1e-10
    # each term is its branch's update f_i(x_{s-1})
    updates = inside.branch_updates(model, x)
    for k, (s, i) in enumerate(inside.term_labels(model)):
        torch.testing.assert_close(u.terms[k].value(u.x0).view_as(tokens), updates[s - 1][i - 1],
                                   rtol=0, atol=1e-10)


def test_dynamic_spread_labels_rows_and_the_first_stage_bias_is_the_only_static_part():
    model, x = model_and_images(2, 2)
    rows = inside.dynamic_spread(model, x)
    assert [(r["stage"], r["branch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in rows:
        assert r["A_relative"] > 0 and r["attn_map_relative"] > 0 and r["relative"] > 0


def test_the_model_keeps_its_mode():
    model, x = model_and_images(1, 2)
    model.train()
    inside.branch_cosine(model, x), inside.attention_maps(model, x), inside.dynamic_spread(model, x)
    assert model.training


def test_not_a_paraformer_is_a_type_error():
    for fn in (inside.stage_stream, inside.branch_updates, inside.update_norms,
               inside.branch_cosine, inside.attention_maps, inside.dynamic_spread):
        with pytest.raises(TypeError, match=r"expected a duat.paraformer.ParaFormer .*, got ResidualMLP"):
            fn(ResidualMLP(4, 8, 2), torch.randn(2, 4))
    with pytest.raises(TypeError, match="got Linear"):
        inside.leave_one_out(torch.nn.Linear(4, 2), [])
    with pytest.raises(TypeError, match="got str"):
        inside.without_branch("pf-1-4", 0, 0)


def test_wrong_inputs_are_one_line_value_errors():
    model, x = model_and_images(1, 2)
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 1, 8, 8\)") as err:
        inside.branch_updates(model, x[:, 0])
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="expected 8x8 images"):
        inside.branch_cosine(model, torch.randn(2, 1, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"tokens of shape \(B, 5, 16\)"):
        inside.unroll_paraformer(model, torch.randn(2, 4, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point tokens"):
        inside.unroll_paraformer(model, torch.zeros(2, 5, 16, dtype=torch.long))
    for stage, branch in ((1, 0), (0, 2), (-1, 0), (0, 1.0)):
        with pytest.raises(ValueError, match=r"must be an int in \[0, .\) for Para-Former-1-2"):
            inside.without_branch(model, stage, branch)


def test_a_parallel_stage_alone_offers_branch_updates():
    model, x = model_and_images(1, 2)
    stage = model.stages[0]
    assert isinstance(stage, ParallelStage)
    tokens = model.forward_tokens(x)
    assert stage.branch_updates(tokens).shape == (2, *tokens.shape)
