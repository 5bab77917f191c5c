"""Starting Para-Former from a trained serial ViT (duat.transfer): the serial layout gives the
same function, m x n layouts hold exactly the source blocks where the docs say, position
embeddings keep the class token and the grid, freezing is bit-exact, bad input is refused.
Everything is built locally: no download is ever attempted (the offline case is simulated)."""
import urllib.error
from functools import partial

import pytest
import torch
from torchvision.models import VisionTransformer

from duat.convert import resample_pos_embed
from duat.registry import create_model
from duat.training import TrainConfig, fit
from duat.training.tuning import (fine_tune, freeze, frozen_parameters, part_of, steps_to_epochs,
                                  train_head, unfreeze)
from duat.transfer import (ResizeInput, WeightsUnavailableError, from_torchvision, load_source, plan,
                           select_blocks, transfer)

from conftest import randomize, torchvision_vit

TOL = 1e-5


def kit_vit(layers=4, seed=0, **kw):
    torch.manual_seed(seed)
    return randomize(create_model(f"vit-{layers}", dim=32, heads=2, **kw), seed=seed).eval()


small_tv_vit = partial(torchvision_vit, mlp_dim=32)  # the sizes test_a_state_dict_file_is_way_two rebuilds


def images(c, batch=3, seed=0):
    return torch.randn(batch, c.in_channels, c.image_size, c.image_size,
                       generator=torch.Generator().manual_seed(seed))


def block_state(block):
    return {k: v.detach().clone() for k, v in block.state_dict().items()}


# ----------------------------------------------------------------------------- same function

def test_serial_transfer_of_a_kit_vit_is_the_same_model():
    source = kit_vit(4)
    model = transfer(source)                                # Para-Former-L-1
    assert (model.config.depth, model.config.width) == (4, 1)
    x = images(source.config)
    assert torch.equal(model(x), source(x))                 # same weights, same ops: bit-equal
    assert not model.training                               # the source's mode
    own = {p.data_ptr() for p in source.parameters()}
    assert all(p.data_ptr() not in own for p in model.parameters())   # copies, never aliases


@pytest.mark.parametrize("stage", ["batched", "reference"])
def test_serial_transfer_of_a_torchvision_vit_gives_its_logits(stage):
    vit = small_tv_vit(layers=3)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model = transfer(vit, stage=stage)
    assert (model.config.depth, model.config.width) == (3, 1)
    with torch.no_grad():
        assert (model(x) - vit(x)).abs().max().item() < TOL
        assert (load_source(vit)(x) - vit(x)).abs().max().item() < TOL      # a model in memory


def test_block_count_and_layout_by_depth_or_width():
    source = kit_vit(4)
    assert transfer(source, depth=2).config.width == 2
    assert transfer(source, width=4).config.depth == 1
    assert (transfer(source, (2, 2)).config.depth, transfer(source, "pf-2-2").config.width) == (2, 2)


# ----------------------------------------------------------------------------- placement

def expected_block(assignment, s, i, m, n, chosen):
    """The documented rule, written out independently of duat.transfer.place_blocks."""
    k = s * n + i if assignment == "stage-major" else s + i * m
    return chosen[k]


@pytest.mark.parametrize("assignment", ["stage-major", "strided"])
@pytest.mark.parametrize("m,n,L,select", [(2, 2, 4, None), (1, 4, 4, None), (4, 1, 4, None),
                                          (2, 3, 6, None), (2, 2, 6, "first"),
                                          (2, 2, 6, "last"), (1, 3, 6, "spread")])
def test_m_by_n_holds_exactly_the_source_blocks(assignment, m, n, L, select):
    source = kit_vit(L)
    src_blocks = [block_state(b) for row in source.blocks() for b in row]     # L blocks
    model = transfer(source, (m, n), assignment=assignment, select=select)
    chosen = (list(range(L)) if select is None else
              {"first": list(range(m * n)), "last": list(range(L - m * n, L)),
               "spread": [0, 2, 5] if m * n == 3 else None}[select])
    blocks = model.blocks()
    assert len(blocks) == m and all(len(row) == n for row in blocks)
    for s in range(m):
        for i in range(n):
            want = src_blocks[expected_block(assignment, s, i, m, n, chosen)]
            got = block_state(blocks[s][i])
            assert got.keys() == want.keys()
            assert all(torch.equal(got[k], want[k]) for k in want), (s, i)
    for name in ("patch_embed.weight", "patch_embed.bias", "cls_token", "pos_embed",
                 "norm.weight", "norm.bias", "head.weight", "head.bias"):
        assert torch.equal(model.state_dict()[name], source.state_dict()[name])


def test_torchvision_blocks_land_in_the_documented_places():
    vit = small_tv_vit(layers=4)
    model = transfer(vit, "pf-2-2", stage="reference")
    for s in range(2):
        for i in range(2):
            layer = vit.encoder.layers[s * 2 + i]
            block = model.stages[s].blocks[i]
            assert torch.equal(block.attn.qkv.weight, layer.self_attention.in_proj_weight)
            assert torch.equal(block.mlp.fc2.bias, layer.mlp[3].bias)
            assert torch.equal(block.norm1.weight, layer.ln_1.weight)


def test_selection_rules_and_explicit_blocks():
    assert select_blocks(12, 4, "first") == [0, 1, 2, 3]
    assert select_blocks(12, 4, "last") == [8, 9, 10, 11]
    assert select_blocks(12, 4, "spread") == [0, 4, 7, 11]         # round(k * 11 / 3)
    assert select_blocks(5, 5, "spread") == [0, 1, 2, 3, 4]
    assert plan(6, 2, 2, "strided", blocks=[5, 0, 5, 1]) == [[5, 5], [0, 1]]
    source = kit_vit(4)
    model = transfer(source, (1, 2), blocks=[3, 3])                 # repeats allowed
    b = [block_state(x) for x in model.blocks()[0]]
    assert all(torch.equal(b[0][k], b[1][k]) for k in b[0])


# ----------------------------------------------------------------------------- new input, new task

def test_same_size_resample_is_the_identity():
    pos = torch.randn(1, 1 + 16, 8)
    assert torch.equal(resample_pos_embed(pos, 4), pos)
    source = kit_vit(2)
    model = transfer(source, image_size=source.config.image_size)
    assert torch.equal(model.pos_embed, source.pos_embed)


def test_new_image_size_keeps_the_class_token_and_the_grid():
    source = kit_vit(2)                                     # 8x8 images, 2x2 patches: 4x4 grid
    D = source.config.dim
    with torch.no_grad():                                   # a smooth field on the grid
        yy, xx = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        field = torch.stack([torch.full_like(xx, 0.5), xx, yy] + [xx * 0 + c for c in range(D - 3)], -1)
        source.pos_embed[0, 1:] = field.reshape(16, D)
    model = transfer(source, image_size=16)                 # an 8x8 grid of 2x2 patches
    assert model.config.num_tokens == 1 + 64
    assert model.pos_embed.shape == (1, 65, D)
    assert torch.equal(model.pos_embed[:, 0], source.pos_embed[:, 0])       # class token kept
    grid = model.pos_embed[0, 1:].reshape(8, 8, D)
    assert torch.allclose(grid[..., 0], torch.full((8, 8), 0.5), atol=1e-6)   # constants stay
    assert torch.allclose(grid[..., 3:], field[0, 0, 3:].expand(8, 8, D - 3), atol=1e-5)
    # rows follow y and columns follow x, as in the source (not transposed)
    assert (grid[:, -1, 1] > grid[:, 0, 1]).all() and (grid[-1, :, 2] > grid[0, :, 2]).all()
    assert torch.allclose(grid[..., 1], grid[..., 1][0].expand(8, 8))     # x does not vary with y
    # everything else is the source's
    for name in ("patch_embed.weight", "cls_token", "head.weight"):
        assert torch.equal(model.state_dict()[name], source.state_dict()[name])
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_new_head_new_channels_and_resized_inputs():
    source = kit_vit(2)                                     # grey, 10 classes
    torch.manual_seed(0)
    model = transfer(source, "pf-1-2", num_classes=3, in_channels=3, image_size=16)
    assert model.head.weight.shape == (3, source.config.dim)
    assert torch.equal(model.head.bias, torch.zeros(3))
    # a grey image given as (x, x, x) meets the same patch filters: w / 3 summed three times
    x = torch.randn(2, 1, 16, 16)
    grey = transfer(source, "pf-1-2", num_classes=3, image_size=16)
    with torch.no_grad():
        grey.head.load_state_dict(model.head.state_dict())
        assert torch.allclose(model(x.expand(-1, 3, -1, -1)), grey(x), atol=TOL)
    wrapped = ResizeInput(model)                           # 32x32 colour images into a 16x16 model
    assert wrapped(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    same = transfer(source, num_classes=10, new_head=True)
    assert not torch.equal(same.head.weight, source.head.weight)


def test_one_builder_for_both_entry_points():
    # from_torchvision and transfer build alike: the same seed gives the same new head
    vit = small_tv_vit(layers=4)
    for kwargs in (dict(num_classes=3), dict(num_classes=3, in_channels=1, image_size=24)):
        torch.manual_seed(7)
        a = from_torchvision(vit, depth=2, width=2, **kwargs)
        torch.manual_seed(7)
        b = transfer(vit, "pf-2-2", **kwargs)
        assert a.config == b.config
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
        assert torch.equal(a.head.bias, torch.zeros(3)) and a.head.weight.std() > 0.01


# ----------------------------------------------------------------------------- freezing

def snapshot(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def toy_loader(c, batches=2, batch=8, classes=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = classes or c.num_classes
    return [(torch.randn(batch, c.in_channels, c.image_size, c.image_size, generator=g),
             torch.randint(0, k, (batch,), generator=g)) for _ in range(batches)]


@pytest.mark.parametrize("parts", ["embed", "blocks", "all-but-head", ["embed", "blocks"]])
def test_frozen_parameters_stay_bit_identical_after_training_steps(parts):
    model = transfer(kit_vit(4), "pf-2-2", num_classes=3).train()
    frozen = freeze(model, parts)
    assert frozen and sorted(frozen) == sorted(frozen_parameters(model))
    chosen = {parts} if isinstance(parts, str) else set(parts)
    expect = {"embed", "blocks", "norm"} if "all-but-head" in chosen else chosen
    assert {part_of(n) for n in frozen} == expect
    before = snapshot(model)
    # a plain optimizer over every parameter, weight decay included ...
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = toy_loader(model.config, classes=3)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    # ... and the training loop
    fit(model, toy_loader(model.config, classes=3), None,
        TrainConfig(epochs=1, lr=1e-2, warmup_epochs=0, device="cpu"), progress=False)
    after = snapshot(model)
    for name in before:
        if name in frozen:
            assert torch.equal(after[name], before[name]), name
    assert any(not torch.equal(after[n], before[n]) for n in before if n not in frozen)
    unfreeze(model)
    assert frozen_parameters(model) == []


def test_head_first_then_everything():
    model = transfer(kit_vit(2), "pf-1-2", num_classes=3)
    loader = toy_loader(model.config, classes=3)
    config = TrainConfig(epochs=1, lr=1e-2, warmup_epochs=0, device="cpu")
    before = snapshot(model)
    train_head(model, loader, None, config)
    mid = snapshot(model)
    assert all(torch.equal(mid[n], before[n]) for n in before if not n.startswith("head."))
    assert not torch.equal(mid["head.weight"], before["head.weight"])
    out = fine_tune(ResizeInput(model), loader, None, config, head_epochs=1,
                    freeze_parts="embed")
    assert out["head"].step == 2 and out["body"].step == 2
    end = snapshot(model)
    assert torch.equal(end["pos_embed"], mid["pos_embed"])             # kept frozen
    assert not torch.equal(end["stages.0.qkv_weight"], mid["stages.0.qkv_weight"])
    assert steps_to_epochs(80, 7) == 12 and steps_to_epochs(0, 3) == 1


def test_transfer_can_freeze_at_once():
    model = transfer(kit_vit(2))
    freeze(model, "all-but-head")
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="freeze takes parts"):
        freeze(model, "heads")


# ----------------------------------------------------------------------------- weight sources

def test_a_kit_checkpoint_is_way_three(tmp_path):
    torch.manual_seed(0)
    model = create_model("vit-2", dim=32, heads=2)
    path = tmp_path / "checkpoint.pt"
    fit(model, toy_loader(model.config), None, TrainConfig(epochs=1, device="cpu"),
        checkpoint=path, progress=False)
    source = load_source(path)
    x = images(model.config)
    model.eval()
    assert torch.equal(source(x), model(x))
    assert not source.training


def test_a_state_dict_file_is_way_two(tmp_path):
    vit = small_tv_vit(layers=2)
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    fresh = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                              hidden_dim=16, mlp_dim=32, num_classes=5)
    source = load_source(path, arch=fresh)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (source(x) - vit(x)).abs().max().item() < TOL
    kit = kit_vit(2)
    torch.save({"state_dict": kit.state_dict()}, tmp_path / "kit.pt")      # a common wrapper
    again = load_source(tmp_path / "kit.pt", arch="vit-2", dim=32, heads=2)
    assert torch.equal(again(images(kit.config)), kit(images(kit.config)))


# ----------------------------------------------------------------------------- bad input

def test_layout_that_does_not_hold_all_blocks_needs_a_rule():
    source = kit_vit(6)
    with pytest.raises(ValueError, match=r"m\*n = 4 blocks but the source has L = 6.*select="):
        transfer(source, "pf-2-2")
    with pytest.raises(ValueError, match="m\\*n <= 4"):
        transfer(kit_vit(4), "pf-2-3", select="first")
    with pytest.raises(ValueError, match="select must be one of"):
        transfer(source, "pf-2-2", select="middle")
    with pytest.raises(ValueError, match="not both"):
        transfer(source, "pf-2-2", select="first", blocks=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="block index 9"):
        transfer(source, "pf-1-2", blocks=[0, 9])


def test_image_size_not_divisible_by_the_patch_is_refused():
    with pytest.raises(ValueError, match="not divisible by the source's patch size 2"):
        transfer(kit_vit(2), image_size=9)
    with pytest.raises(ValueError, match="not divisible by the source's patch size 4"):
        transfer(small_tv_vit(layers=2), "pf-1-2", image_size=18)


def test_wrong_architecture_state_dict_reports_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "vit.pth"
    torch.save(small_tv_vit(layers=2).state_dict(), path)
    with pytest.raises(ValueError) as err:
        load_source(path, arch="vit-2")                      # torchvision keys, kit model
    text = str(err.value)
    assert "missing keys" in text and "'patch_embed.weight'" in text
    assert "unexpected keys" in text and "'conv_proj.weight'" in text
    assert "torchvision arch" in text                        # the hint
    kit = tmp_path / "kit.pt"
    torch.save(kit_vit(2).state_dict(), kit)
    with pytest.raises(ValueError, match=r"missing keys \['stages\.2\.") as err:
        load_source(kit, arch="vit-4", dim=32, heads=2)      # two layers into four
    with pytest.raises(ValueError, match="shape mismatches"):
        load_source(kit, arch="vit-2")                       # dim 32 into dim 64
    with pytest.raises(ValueError, match="does not record its architecture"):
        load_source(kit)
    with pytest.raises(ValueError, match="unknown arch 'vit_z_99'"):
        load_source(kit, arch="vit_z_99")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable state dict"):
        load_source(junk)


def test_wrong_kinds_of_source():
    with pytest.raises(TypeError, match="ParaFormer or a torchvision VisionTransformer"):
        transfer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="VisionTransformer"):
        load_source(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="weights name, a file path or a model"):
        load_source(3.5)
    with pytest.raises(ValueError, match="unknown torchvision weights"):
        load_source("ViT_Q_99_Weights.IMAGENET1K_V1")


THREE_WAYS = ("torchvision's named weights", "a local state-dict file",
              "a checkpoint of the kit's own training")


def test_offline_without_weights_names_the_three_ways(monkeypatch, tmp_path):
    calls = []

    def offline(url, *args, **kwargs):                      # what urllib says with no network
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))   # nothing cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        load_source("ViT_B_16_Weights.IMAGENET1K_V1", progress=False)
    assert calls and calls[0].startswith("https://")
    text = str(err.value)
    assert "could not get torchvision's ViT_B_16_Weights.IMAGENET1K_V1" in text
    assert "name resolution" in text
    assert all(way in text for way in THREE_WAYS)
    for missing in (None, "", tmp_path / "nowhere.pt"):
        with pytest.raises(WeightsUnavailableError) as err:
            load_source(missing)
        assert all(way in str(err.value) for way in THREE_WAYS)
    assert issubclass(WeightsUnavailableError, FileNotFoundError)
