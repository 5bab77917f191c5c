"""Conversion from torchvision's Vision Transformer (random weights, never a download): the
serial ViT-L loads into ParaFormer(depth=L, width=1) with the same logits (duat.convert's
tables, built by duat.transfer.from_torchvision); block placement over Para-Former-m-n
layouts (duat.transfer); clear refusals; the way back (to_torchvision)."""
import copy

import pytest
import torch

from duat.convert import ASSIGNMENTS, compare_models, reference_view, to_torchvision, vit_config
from duat.counting import count_parameters
from duat.paraformer import ParaFormer
from duat.storage import load_state_dict_checked
from duat.transfer import from_torchvision, place_blocks, plan, transfer

from conftest import randomize, torchvision_vit

TOL = 1e-5


def images(vit, batch=3, seed=0):
    return torch.randn(batch, 3, vit.image_size, vit.image_size,
                       generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- exact conversion

@pytest.mark.parametrize("sizes", [
    dict(layers=1, heads=1, dim=8, mlp_dim=8, image=8, patch=4, classes=3),
    dict(layers=3, heads=2, dim=16, mlp_dim=37, image=16, patch=4, classes=5),
    dict(layers=4, heads=4, dim=32, mlp_dim=128, image=12, patch=3, classes=10),
    dict(layers=2, heads=3, dim=33, mlp_dim=61, image=14, patch=7, classes=2),
])
@pytest.mark.parametrize("stage", ["batched", "reference"])
def test_converted_vit_gives_the_same_logits(sizes, stage):
    vit = torchvision_vit(**sizes)
    model = from_torchvision(vit, stage=stage)
    c = model.config
    assert (c.depth, c.width, c.dim, c.heads, c.hidden_dim, c.pool) == (
        sizes["layers"], 1, sizes["dim"], sizes["heads"], sizes["mlp_dim"], "cls")
    assert c.stage == stage and not model.training
    assert count_parameters(model) == count_parameters(vit)
    x = images(vit)
    with torch.no_grad():
        expected = vit(x)          # eval + no_grad: torchvision's fused attention fast path
        got = model(x)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max().item() <= TOL
    # train mode (dropout 0) and with autograd: torchvision's ordinary attention path
    vit.train(), model.train()
    assert (model(x) - vit(x)).abs().max().item() <= TOL


@pytest.mark.slow
def test_vit_b_16_converts_exactly():
    from torchvision.models import vit_b_16

    torch.manual_seed(0)
    vit = vit_b_16(weights=None, image_size=64).eval()  # ViT-B/16's 86M weights; 4x4 patches
    with torch.no_grad():
        vit.heads.head.weight.normal_(std=0.02)         # torchvision starts its head at zero
        model = from_torchvision(vit)
        x = torch.randn(2, 3, 64, 64)
        expected, got = vit(x), model(x)
    assert (model.config.depth, model.config.dim, model.config.heads) == (12, 768, 12)
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max().item() <= TOL


def test_dtype_device_and_independence():
    vit = torchvision_vit().double()
    model = from_torchvision(vit)
    assert all(p.dtype == torch.float64 and p.requires_grad for p in model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert vit.encoder.layers[0].self_attention.in_proj_weight.abs().sum() > 0  # not shared


def test_round_trip_through_torchvision():
    torch.manual_seed(1)
    model = ParaFormer(image_size=12, patch_size=4, in_channels=3, num_classes=4, dim=12,
                       heads=3, mlp_ratio=2.5, depth=3, width=1, norm_eps=1e-5)
    randomize(model, seed=1).eval()
    vit = to_torchvision(model)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert (vit(x) - model(x)).abs().max().item() <= TOL
    again = from_torchvision(vit)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_to_torchvision_refuses_what_it_cannot_express():
    with pytest.raises(ValueError, match=r"width n = 2.*pool = 'mean'.*in_channels = 1"):
        to_torchvision(ParaFormer(width=2, pool="mean", in_channels=1, dim=8, heads=2))
    with pytest.raises(TypeError, match="expected a ParaFormer"):
        to_torchvision(torchvision_vit())


# ----------------------------------------------------------------------------- placement

def test_stage_major_and_strided_placements():
    assert place_blocks(6, 2, 3, "stage-major") == [[0, 1, 2], [3, 4, 5]]
    assert place_blocks(6, 2, 3, "strided") == [[0, 2, 4], [1, 3, 5]]
    assert place_blocks(6, 3, 2, "stage-major") == [[0, 1], [2, 3], [4, 5]]
    assert place_blocks(6, 3, 2, "strided") == [[0, 3], [1, 4], [2, 5]]
    assert place_blocks(4, 4, 1) == [[0], [1], [2], [3]]          # the serial ViT
    assert place_blocks(4, 1, 4, "strided") == [[0, 1, 2, 3]]
    assert place_blocks(12, 2, 2, blocks=[0, 1, 2, 3]) == [[0, 1], [2, 3]]
    assert place_blocks(2, 2, 2, blocks=[0, 0, 1, 1]) == [[0, 0], [1, 1]]  # repeats allowed


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("m, n", [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)])
def test_every_block_is_placed_once(assignment, m, n):
    placement = place_blocks(12, m, n, assignment)
    assert len(placement) == m and all(len(row) == n for row in placement)
    assert sorted(b for row in placement for b in row) == list(range(12))
    if assignment == "stage-major":   # blocks keep their order along the depth
        assert [row[0] for row in placement] == sorted(row[0] for row in placement)


@pytest.mark.parametrize("args, kwargs, words", [
    ((12, 5, 2), {}, r"m\*n = 10 blocks but the source has 12"),
    ((12, 2, 6), dict(assignment="random"), "assignment must be one of"),
    ((12, 2, 2), dict(blocks=[0, 1, 2]), r"blocks has 3 indices.*needs m\*n = 4"),
    ((12, 1, 2), dict(blocks=[0, 12]), r"block index 12 is not an int in \[0, 12\)"),
    ((12, 1, 2), dict(blocks=[0, True]), "block index True"),
    ((12, 0, 12), {}, r"depth \(m\) must be an int >= 1"),
    ((12, 12, 0), {}, r"width \(n\) must be an int >= 1"),
])
def test_placement_refusals(args, kwargs, words):
    with pytest.raises(ValueError, match=words):
        place_blocks(*args, **kwargs)


def layout_of(placement):
    return len(placement), len(placement[0])


def test_plan_fills_in_the_layout():
    assert layout_of(plan(12)) == (12, 1)
    assert layout_of(plan(12, depth=3)) == (3, 4)
    assert layout_of(plan(12, width=6)) == (2, 6)
    assert layout_of(plan(12, 2, 2, blocks=[0, 1, 2, 3])) == (2, 2)
    with pytest.raises(ValueError, match=r"width \(n\)=5 does not divide the 12 blocks"):
        plan(12, width=5)


# ----------------------------------------------------------------------------- m x n layouts

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_m_by_n_layout_carries_the_placed_blocks(assignment):
    vit = torchvision_vit(layers=6)
    model = from_torchvision(vit, depth=3, width=2, assignment=assignment)
    assert (model.config.depth, model.config.width) == (3, 2)
    placement = place_blocks(6, 3, 2, assignment)
    layers = list(vit.encoder.layers)
    for s, row in enumerate(model.blocks()):
        for i, block in enumerate(row):
            src = layers[placement[s][i]]
            assert torch.equal(block.attn.qkv.weight, src.self_attention.in_proj_weight)
            assert torch.equal(block.mlp.fc2.bias, src.mlp[3].bias)
            assert torch.equal(block.norm2.weight, src.ln_2.weight)
    assert torch.equal(model.pos_embed, vit.encoder.pos_embedding)
    assert torch.equal(model.head.weight, vit.heads.head.weight)


def test_one_stage_of_all_layers_sums_torchvisions_updates():
    vit = torchvision_vit(layers=3)
    model = from_torchvision(vit, depth=1)                  # Para-Former-1-3
    x = images(vit)
    with torch.no_grad():
        t = vit._process_input(x)
        t = torch.cat([vit.class_token.expand(len(x), -1, -1), t], dim=1) + vit.encoder.pos_embedding
        y = t + sum(layer(t) - t for layer in vit.encoder.layers)   # y = x0 + sum_i f_i(x0)
        expected = vit.heads(vit.encoder.ln(y)[:, 0])
        assert (model(x) - expected).abs().max().item() <= TOL
        assert (model(x) - vit(x)).abs().max().item() > 1e-3  # not the serial ViT


def test_selected_blocks_and_repeats():
    vit = torchvision_vit(layers=4)
    model = from_torchvision(vit, depth=1, width=2, blocks=[3, 3])
    for block in model.blocks()[0]:
        assert torch.equal(block.attn.proj.weight, vit.encoder.layers[3].self_attention.out_proj.weight)
    with pytest.raises(ValueError, match=r"m\*n = 6 blocks but the source has 4"):
        from_torchvision(vit, depth=2, width=3)
    with pytest.raises(ValueError, match=r"depth \(m\)=3 does not divide the 4 blocks"):
        from_torchvision(vit, depth=3)


def test_redistribute_and_back_is_exact():
    vit = torchvision_vit(layers=4)
    serial = from_torchvision(vit)
    para = transfer(serial, depth=2, width=2, assignment="strided")
    assert (para.config.depth, para.config.width) == (2, 2)
    back = transfer(para, width=1)   # para's blocks stage-major: 0, 2, 1, 3
    order = [0, 2, 1, 3]
    src = serial.blocks()
    for l, (block,) in enumerate(back.blocks()):
        assert torch.equal(block.mlp.fc1.weight, src[order[l]][0].mlp.fc1.weight)
    reference = transfer(copy.deepcopy(serial).to_reference(), depth=4)
    x = images(vit)
    with torch.no_grad():
        assert (reference(x) - serial(x)).abs().max().item() <= TOL
    with pytest.raises(TypeError, match="expected a ParaFormer"):
        transfer(torch.nn.Linear(2, 2))   # (a torchvision ViT is a source too)


# ----------------------------------------------------------------------------- fine-tuning options

def test_new_head_keeps_the_features():
    vit = torchvision_vit()
    model = from_torchvision(vit, num_classes=3)
    assert model.head.weight.shape == (3, 16)
    x = images(vit)
    with torch.no_grad():
        features = vit.encoder(torch.cat([vit.class_token.expand(3, -1, -1), vit._process_input(x)], 1))
        assert (model.forward_features(x) - features).abs().max().item() <= TOL


def test_grey_images_through_summed_rgb_filters():
    vit = torchvision_vit()
    model = from_torchvision(vit, in_channels=1)
    grey = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert (model(grey) - vit(grey.expand(-1, 3, -1, -1))).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="in_channels must be 3"):
        from_torchvision(vit, in_channels=2)


def test_new_image_size_resamples_positions():
    vit = torchvision_vit(image=16, patch=4)                       # 4 x 4 patch grid
    model = from_torchvision(vit, image_size=24)             # 6 x 6
    assert model.pos_embed.shape == (1, 37, 16)
    assert torch.equal(model.pos_embed[:, 0], vit.encoder.pos_embedding[:, 0])
    assert model(torch.randn(2, 3, 24, 24)).shape == (2, 5)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        from_torchvision(vit, image_size=18)


# ----------------------------------------------------------------------------- refusals

def test_unsupported_vits_are_refused():
    with pytest.raises(ValueError, match="pre-logits"):
        from_torchvision(torchvision_vit(representation_size=8))
    from torchvision.models.vision_transformer import ConvStemConfig

    stem = torchvision_vit(conv_stem_configs=[ConvStemConfig(out_channels=8, kernel_size=3, stride=4)])
    with pytest.raises(ValueError, match="convolutional stem"):
        from_torchvision(stem)
    with pytest.raises(TypeError, match="torchvision.models.VisionTransformer"):
        from_torchvision(ParaFormer())
    with pytest.raises(ValueError, match=r"\['dim'\] cannot be changed"):
        vit_config(torchvision_vit(), dim=32)
    with pytest.raises(ValueError, match="assignment must be one of"):
        from_torchvision(torchvision_vit(), depth=2, assignment="diagonal")


def test_load_state_dict_checked_names_every_problem():
    model = ParaFormer(dim=8, heads=2)
    sd = model.state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    bad = {k: torch.ones_like(v) for k, v in sd.items() if k != "norm.bias"}
    bad["extra.weight"] = torch.zeros(1)
    bad["head.weight"] = torch.zeros(3, 8)
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(model, bad)
    message = str(info.value)
    assert "missing keys ['norm.bias']" in message
    assert "unexpected keys ['extra.weight']" in message
    assert "head.weight: expected (10, 8), got (3, 8)" in message
    for k, v in model.state_dict().items():                  # nothing was loaded
        assert torch.equal(v, before[k]), k


def test_compare_models_and_reference_view():
    torch.manual_seed(2)
    batched = randomize(ParaFormer(dim=8, heads=2, depth=2, width=3), seed=2)
    reference = copy.deepcopy(batched).to_reference()
    view = reference_view(batched)
    assert view.keys() == dict(reference.named_parameters()).keys()
    assert torch.equal(view["stages.1.blocks.2.mlp.fc1.weight"], batched.stages[1].fc1_weight[2])
    x = torch.randn(2, 1, 8, 8)
    errors = compare_models(batched, reference, x)
    assert errors["forward"] <= TOL and errors["grad"] <= TOL and errors["grad_rel"] <= TOL
    with torch.no_grad():
        reference.stages[1].blocks[2].mlp.fc1.bias.add_(0.1)   # a real difference shows
    assert compare_models(batched, reference, x)["grad"] > 1e-4
    assert all(p.grad is None for p in batched.parameters())
    with pytest.raises(ValueError, match="do not correspond"):
        compare_models(batched, ParaFormer(dim=8, heads=2, depth=1, width=3), x)
    with pytest.raises(ValueError, match="no gradient"):
        reference_view(batched, grads=True)
