"""A Para-Former's branches one by one (docs/method.md section 7): the prefix model y_k is
the model of the first k branches, kept, expanded and removed branches behave as documented,
frozen rows stay bit for bit, the training schedules train and record every prefix, and a
compressed model saves, loads and converts like any other."""
import copy
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from duat import inside
from duat.surgery import FRONT, branch_rows, expand, keep_branches
from duat.paraformer import STACKED, ParaFormer, ParallelStage, ReferenceStage
from duat.training import TrainConfig, evaluate, fit, load_checkpoint
from duat.training.schedules import SCHEDULES, Schedule

from conftest import TINY_MODEL, randomize

STAGES = ("batched", "reference")
TOL = 1e-6
CPU = dict(device="cpu", warmup_epochs=0.0)


def model_of(depth, width, stage="batched", seed=0, **overrides):
    """A tiny Para-Former-m-n in eval mode with seeded, randomized weights (no term ~ 0)."""
    torch.manual_seed(seed)
    model = ParaFormer(**{**TINY_MODEL, **overrides}, depth=depth, width=width, stage=stage)
    return randomize(model, scale=0.2, seed=seed).eval()


def images(batch=3, seed=1):
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def batches(count=1, size=16, seed=2):
    """`count` fixed (x, y) batches in a list: a loader fit() can take (it has len())."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 10, (size,), generator=g))
            for _ in range(count)]


def stacked(model):
    """{(stage, name): tensor} of every stacked parameter of a batched model."""
    return {(s, name): getattr(stage, name) for s, stage in enumerate(model.stages)
            for name, _ in STACKED if getattr(stage, name) is not None}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_quietly(model, loader, **kwargs):
    config = kwargs.pop("config", None) or TrainConfig(epochs=1, **CPU)
    return fit(model, loader, config=config, progress=False, **kwargs)


# ----------------------------------------------------------------------------- the prefix y_n

@pytest.mark.parametrize("budget", [None, 16, 32])
@pytest.mark.parametrize("width", [1, 3, 4])
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("stage", STAGES)
def test_all_branches_is_exactly_the_full_model(stage, depth, width, budget):
    model = model_of(depth, width, stage)
    x = images(3)  # 3 images x 5 tokens = 15 rows a branch: budget 16 -> chunks of 1, 32 -> of 2
    chunked = [s for s in model.stages if isinstance(s, ParallelStage)]
    try:
        for s in chunked:
            s.cpu_row_budget = budget
        if budget is not None and chunked:
            assert chunked[0].chunks(width, 15, x.device)[0].stop == min(width, budget // 15)
        with torch.no_grad():
            assert torch.equal(model(x, branches=width), model(x))
    finally:
        for s in chunked:
            del s.cpu_row_budget  # back to the class default
    assert all(s.cpu_row_budget == ParallelStage.cpu_row_budget for s in chunked)


@pytest.mark.parametrize("stage", STAGES)
def test_prefix_equals_the_kept_model_for_every_k(stage):
    model = model_of(2, 4, stage)
    x = images(3)
    with torch.no_grad():
        for k in range(1, 5):
            small = keep_branches(model, k)
            assert small.config.width == k and small.config.stage == stage
            assert torch.equal(model(x, branches=k), small(x)), k


@pytest.mark.parametrize("stage", STAGES)
def test_kept_lists_equal_a_model_built_by_hand(stage):
    model = model_of(2, 3, stage)
    keep = [[2, 0], [1, 2]]
    small = keep_branches(model, keep)

    blocks = model.blocks()
    by_hand = copy.deepcopy(model)
    by_hand.stages = nn.ModuleList(ReferenceStage([copy.deepcopy(blocks[s][i]) for i in idx])
                                   for s, idx in enumerate(keep))
    by_hand.config = replace(model.config, width=2, stage="reference")

    x = images(3)
    assert small.config.width == 2 and small.config.stage == stage
    assert all(type(s) is type(model.stages[0]) for s in small.stages)
    assert not small.training
    with torch.no_grad():
        torch.testing.assert_close(small(x), by_hand(x), atol=TOL, rtol=0)
        assert (small(x) - model(x)).abs().max() > 1e-3  # a model of its own, not the full one


def test_keep_branches_leaves_the_model_unchanged_and_copies():
    model = model_of(1, 3, "reference")
    before = snapshot(model)
    small = keep_branches(model, [[1]])
    with torch.no_grad():
        for p in small.parameters():
            p.add_(1.0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.width == 3


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("bad", [0, 4, True, 1.5, -1, "2"])
def test_bad_branches_are_refused(bad):
    model = model_of(1, 3)
    with pytest.raises(ValueError, match=r"branches must be an int k with 1 <= k <= n = 3"):
        model(images(2), branches=bad)


@pytest.mark.parametrize("keep, words", [
    (4, "cannot keep 4 branches"),
    (0, "cannot keep 0 branches"),
    ([[0, 1], [0]], "same number"),
    ([[0, 3], [0, 1]], r"distinct, in 0\.\.2"),
    ([[0, -1], [0, 1]], r"distinct, in 0\.\.2"),
    ([[1, 1], [0, 1]], r"distinct, in 0\.\.2"),
    ([[0, 1]], r"1 list\(s\).*2 stage\(s\)"),
    ([[0], [1], [2]], r"3 list\(s\).*2 stage\(s\)"),
    ([[], []], "same number"),
    ([0, 1], "one list of branch indices per stage"),
])
def test_bad_keep_is_refused(keep, words):
    model = model_of(2, 3)
    with pytest.raises(ValueError, match=words):
        keep_branches(model, keep)


def test_expand_refuses_another_shape_and_no_branches():
    model = model_of(2, 2)
    with pytest.raises(ValueError, match=r"token width.*dim 16 here, 32 in the added model"):
        expand(model, model_of(2, 1, dim=32, heads=2))
    with pytest.raises(ValueError, match=r"depth 2 here, 1 in the added model"):
        expand(model, model_of(1, 2))
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="extra must be a number of branches >= 1"):
            expand(model, bad)
    with pytest.raises(TypeError, match="expected a ParaFormer"):
        expand(nn.Linear(2, 2), 1)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="schedule must be one of 'joint', 'progressive', 'branchwise'"):
        Schedule("nope")
    model, loader = model_of(1, 3), batches(1)
    with pytest.raises(ValueError, match="one of 'joint', 'progressive', 'branchwise'; got 'nope'"):
        fit_quietly(model, loader, schedule="nope")
    with pytest.raises(ValueError, match=r"epochs >= n = 3, got epochs = 2"):
        fit_quietly(model, loader, schedule="branchwise", config=TrainConfig(epochs=2, **CPU))

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model_of(1, 2)

        def forward(self, x):
            return self.inner(x)

    with pytest.raises(TypeError, match="needs a ParaFormer"):
        fit_quietly(Wrapper(), loader, schedule="joint")
    assert set(SCHEDULES) == {"joint", "progressive", "branchwise"}


# ----------------------------------------------------------------------------- expand

@pytest.mark.parametrize("width, extra", [(1, 1), (2, 3)])
@pytest.mark.parametrize("stage", STAGES)
def test_expanded_prefix_is_the_original_model(stage, width, extra):
    model = model_of(2, width, stage)
    before = snapshot(model)
    big = expand(model, extra, seed=0)
    assert big.config.width == width + extra and model.config.width == width
    assert big.config.stage == stage and not big.training
    assert all(s.width == width + extra for s in big.stages)
    x = images(3)
    with torch.no_grad():
        # bit for bit so far; the slice of a wider stack need not be, hence the tolerance
        torch.testing.assert_close(big(x, branches=width), model(x), atol=TOL, rtol=0)
        assert (big(x) - model(x)).abs().max() > 0          # the new branches add something
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("stage", STAGES)
def test_expand_with_a_seed_is_repeatable(stage):
    model = model_of(2, 2, stage)
    a, b = expand(model, 2, seed=3), expand(model, 2, seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    new = lambda big: big.blocks()[0][2].attn.qkv.weight
    assert not torch.equal(new(expand(model, 2, seed=4)), new(a))
    # the two fresh branches of one call differ from each other
    assert not torch.equal(a.blocks()[0][2].attn.qkv.weight, a.blocks()[0][3].attn.qkv.weight)


@pytest.mark.parametrize("stage", STAGES)
def test_expand_with_a_seed_leaves_the_global_rng_alone(stage):
    model = model_of(2, 2, stage)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    expand(model, 2, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("stage", STAGES)
def test_expand_without_a_seed_draws_new_branches_each_call(stage):
    model = model_of(1, 1, stage)
    torch.manual_seed(0)
    a = expand(model, 1).blocks()[0][1]
    b = expand(model, 1).blocks()[0][1]
    assert not torch.equal(a.attn.qkv.weight, b.attn.qkv.weight)


@pytest.mark.parametrize("stage", STAGES)
def test_expand_with_a_model_appends_exactly_its_branches(stage):
    model, other = model_of(2, 2, stage, seed=0), model_of(2, 3, "batched", seed=5)
    big = expand(model, other)
    assert big.config.width == 5
    tokens = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(7))
    added = keep_branches(big, [[2, 3, 4], [2, 3, 4]]).blocks()
    kept = keep_branches(big, [[0, 1], [0, 1]]).blocks()
    with torch.no_grad():
        for s in range(2):
            for got, want in zip(added[s], other.blocks()[s]):
                torch.testing.assert_close(got.residual(tokens), want.residual(tokens), atol=TOL, rtol=0)
            for got, want in zip(kept[s], model.blocks()[s]):
                torch.testing.assert_close(got.residual(tokens), want.residual(tokens), atol=TOL, rtol=0)
    # the front end and head are the expanded model's, not the added one's
    assert torch.equal(big.head.weight, model.head.weight)
    assert not torch.equal(big.head.weight, other.head.weight)


# ----------------------------------------------------------------------------- frozen rows

def trainer(epochs=1, **kw):
    return TrainConfig(epochs=epochs, lr=1e-2, weight_decay=0.1, grad_clip=0.5, **{**CPU, **kw})


def test_frozen_rows_of_a_batched_model_stay_bit_for_bit():
    model = model_of(2, 3, "batched")
    before = {k: v.detach().clone() for k, v in stacked(model).items()}
    head = model.head.weight.detach().clone()
    fit_quietly(model, batches(3), config=trainer(2), freeze_rows=branch_rows(model, [0, 1]))
    after = stacked(model)
    for key, old in before.items():
        assert torch.equal(after[key][:2], old[:2]), key            # rows 0, 1 frozen
        assert not torch.equal(after[key][2], old[2]), key          # row 2 trained
    assert not torch.equal(model.head.weight, head)


def test_frozen_branches_of_a_reference_model_stay_bit_for_bit():
    model = model_of(2, 3, "reference")
    before = [[copy.deepcopy(b) for b in stage] for stage in model.blocks()]
    fit_quietly(model, batches(3), config=trainer(2), freeze_rows=branch_rows(model, [0, 1]))
    for s, stage in enumerate(model.stages):
        for i, block in enumerate(stage.blocks):
            old = dict(before[s][i].named_parameters())
            for name, p in block.named_parameters():
                if i < 2:
                    assert torch.equal(p, old[name]), (s, i, name)
                else:
                    assert not torch.equal(p, old[name]), (s, i, name)


def test_branch_rows_names_the_rows_or_blocks():
    batched, reference = model_of(2, 3, "batched"), model_of(2, 3, "reference")
    pairs = branch_rows(batched, [1, 0, 1])
    assert len(pairs) == 2 * len(STACKED) and all(idx == [0, 1] for _, idx in pairs)
    pairs = branch_rows(reference, [2])
    assert len(pairs) == 2 * len(list(reference.stages[0].blocks[2].parameters()))
    assert all(idx is Ellipsis for _, idx in pairs)
    assert branch_rows(batched, []) == []
    with pytest.raises(ValueError, match=r"branch indices must be in 0\.\.2"):
        branch_rows(batched, [3])


@pytest.mark.parametrize("stage", STAGES)
def test_branchwise_freezes_branch_0_and_the_front_end_in_phase_2(stage):
    model = model_of(2, 2, stage)
    front = lambda: {n: p.detach().clone() for n, p in model.named_parameters()
                     if n.split(".")[0] in FRONT}
    seen = {}

    def after_epoch(event):
        if event.kind == "epoch" and event.epoch == 1:
            seen["front"] = front()
            seen["blocks"] = [[copy.deepcopy(b) for b in s] for s in model.blocks()]
            seen["head"] = model.head.weight.detach().clone()

    result = fit_quietly(model, batches(2), schedule="branchwise", callbacks=[after_epoch],
                         config=trainer(2))
    assert [r["phase"] for r in result.history] == [1, 2]
    assert seen, "no epoch event after epoch 1"
    assert front().keys() == seen["front"].keys() and len(seen["front"]) == 4  # conv weight, bias, class token, positions
    for name, p in front().items():
        assert torch.equal(p, seen["front"][name]), name
    assert not torch.equal(model.head.weight, seen["head"])        # the head trains in phase 2
    blocks = model.blocks()
    for s in range(2):
        old0, new0 = dict(seen["blocks"][s][0].named_parameters()), blocks[s][0].named_parameters()
        old1, new1 = dict(seen["blocks"][s][1].named_parameters()), blocks[s][1].named_parameters()
        for name, p in new0:
            assert torch.equal(p, old0[name]), (s, 0, name)        # branch 0: frozen in phase 2
        assert any(not torch.equal(p, old1[name]) for name, p in new1)  # branch 1: trained


@pytest.mark.parametrize("stage", STAGES)
def test_branchwise_phase_1_leaves_the_later_branches_alone(stage):
    model = model_of(1, 2, stage)
    before = copy.deepcopy(model.blocks()[0][1])
    stop = lambda event: "stop" if event.kind == "epoch" else None   # after phase 1
    fit_quietly(model, batches(1), schedule="branchwise", callbacks=[stop], config=trainer(2))
    after = dict(model.blocks()[0][1].named_parameters())
    for name, p in before.named_parameters():
        assert torch.equal(after[name], p), name


# ----------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_lowers_the_loss_and_records_every_prefix(schedule):
    model = model_of(1, 2, "batched", seed=3)
    loader = batches(2, size=16, seed=4)
    start = evaluate(model, loader)["loss"]
    result = fit_quietly(model, loader, schedule=schedule,
                         config=TrainConfig(epochs=6, lr=1e-2, weight_decay=0.0, **CPU))
    end = evaluate(model, loader)["loss"]
    assert result.status == "completed" and len(result.history) == 6
    assert end < 0.8 * start, (start, end)
    for record in result.history:
        assert record["schedule"] == schedule
        for k in (1, 2):
            assert 0 <= record[f"prefix_acc_{k}"] <= 1
            assert record[f"prefix_loss_{k}"] > 0
        assert "prefix_loss_3" not in record
        assert record["updates"] == {"joint": 2, "progressive": 3 * 2, "branchwise": 2}[schedule]
    last = result.history[-1]
    assert last["prefix_loss_2"] == pytest.approx(evaluate(model, loader)["loss"], rel=1e-6)
    assert last["prefix_loss_1"] == pytest.approx(evaluate(model, loader, branches=1)["loss"], rel=1e-6)


def test_the_plain_loop_records_no_prefixes():
    model = model_of(1, 2)
    record = fit_quietly(model, batches(1)).history[0]
    assert "schedule" not in record and not any(k.startswith("prefix_") for k in record)


def test_branchwise_shares_the_epochs_out_over_the_phases():
    assert Schedule("branchwise").phases(5, 2) == [(0, 3), (3, 5)]
    assert Schedule("branchwise").phases(3, 3) == [(0, 1), (1, 2), (2, 3)]
    assert Schedule("joint").phases(5, 2) == [(0, 5)]
    plan = Schedule("branchwise").plan(4, 5, 2)
    assert (plan.phase, plan.frozen_branches, plan.freeze_front, plan.passes) == (2, (0,), True, ((2,),))
    assert Schedule("branchwise").plan(0, 3, 3).frozen_branches == (1, 2)  # later ones wait too
    assert Schedule("progressive").plan(0, 3, 3).passes == ((1, 2, 3), (None,))


# ----------------------------------------------------------------------------- compressed models

def test_a_compressed_model_saves_loads_and_converts(tmp_path):
    model = model_of(1, 3, "batched")
    compressed = keep_branches(model, [[2, 0]])
    assert compressed.config.width == 2
    path = tmp_path / "c.pt"
    result = fit_quietly(compressed, batches(1), checkpoint=path)
    assert result.checkpoint == path and path.exists()

    fresh = ParaFormer(compressed.config).eval()
    state = load_checkpoint(path, fresh)
    assert state["model_config"]["width"] == 2
    compressed.eval()
    x = images(4)
    with torch.no_grad():
        out = compressed(x)
        assert torch.equal(fresh(x), out)
        ref = copy.deepcopy(compressed).to_reference()
        assert ref.config.stage == "reference" and ref.config.width == 2
        assert all(isinstance(s, ReferenceStage) for s in ref.stages)
        torch.testing.assert_close(ref(x), out, atol=TOL, rtol=0)
        back = ref.to_batched()
        assert all(isinstance(s, ParallelStage) for s in back.stages)
        assert torch.equal(back(x), out)


# ----------------------------------------------------------------------------- removing a branch

# duat.inside.without_branch (a copy with f_i zeroed) is the model of the other branches
# (duat.surgery.keep_branches), and update_norms sees the removed branch as 0.


@pytest.mark.parametrize("stage", STAGES)
def test_without_a_branch_is_the_model_of_the_others(stage):
    model = model_of(1, 3, stage)
    before = snapshot(model)
    x = images(3)
    with torch.no_grad():
        full = model(x)
        for b in range(3):
            dropped = inside.without_branch(model, 0, b)
            others = keep_branches(model, [[i for i in range(3) if i != b]])
            torch.testing.assert_close(dropped(x), others(x), atol=1e-5, rtol=0)
            assert (dropped(x) - full).abs().max() > 1e-4
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for stage_, branch in [(1, 0), (0, 3), (-1, 0), (0, True)]:
        with pytest.raises(ValueError, match="must be an int in"):
            inside.without_branch(model, stage_, branch)


@pytest.mark.parametrize("stage", STAGES)
def test_update_norms_are_positive_and_zero_for_a_removed_branch(stage):
    model = model_of(2, 3, stage).train()
    x = images(4)
    norms = inside.update_norms(model, x)
    assert [tuple(n.shape) for n in norms] == [(3, 4), (3, 4)]
    assert all((n > 0).all() for n in norms)
    assert model.training                                    # the mode is restored
    gone = inside.update_norms(inside.without_branch(model, 1, 2), x)
    assert torch.equal(gone[1][2], torch.zeros(4))
    assert torch.equal(gone[0], norms[0])                    # stage 0 does not see it
    with torch.no_grad():  # by hand: |f_i(x)| per image, each stage fed by the ones before
        model.eval()
        h = model.forward_tokens(x)
        for s, blocks in enumerate(model.blocks()):
            want = torch.stack([b.residual(h).flatten(1).norm(dim=1) for b in blocks])
            torch.testing.assert_close(norms[s], want, atol=1e-5, rtol=1e-5)
            h = model.stages[s](h)
