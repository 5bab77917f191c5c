"""Hugging Face GPT-2 (random weights, never a download) and the kit's GPT-L: the same
logits both ways (duat.gpt2), the same greedy continuation as HF's own `generate` with its
own cache, and one clear refusal for every setting the kit cannot match."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from duat.gpt2 import (GPT2_ACTIVATIONS, check_gpt2, from_gpt2, gpt2_config,  # noqa: E402
                       to_gpt2)
from duat.language import ParaFormerLM, generate  # noqa: E402

from conftest import randomize  # noqa: E402

TOL = 1e-5
VOCAB, POSITIONS = 100, 64


def hf_gpt2(n_layer=2, n_embd=32, n_head=4, seed=0, **kw):
    """A small GPT2LMHeadModel in eval mode, its weights randomized (biases and norms too)."""
    fields = dict(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=n_embd, n_layer=n_layer,
                  n_head=n_head, bos_token_id=None, eos_token_id=None)
    fields.update(kw)
    torch.manual_seed(seed)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields))
    return randomize(hf, seed=seed).eval()


def tokens(batch=2, T=20, seed=0):
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf, x):
    with torch.no_grad():
        return hf(x).logits


# ----------------------------------------------------------------------------- exact conversion

@pytest.mark.parametrize("sizes", [(1, 32, 4), (3, 64, 8), (6, 48, 3)])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new"])
def test_gpt2_converts_to_the_same_logits_and_back(sizes, activation):
    n_layer, n_embd, n_head = sizes
    hf = hf_gpt2(n_layer, n_embd, n_head, activation_function=activation)
    model = from_gpt2(hf)
    c = model.config
    assert (c.depth, c.width, c.dim, c.heads, c.hidden_dim, c.vocab_size, c.positions) == (
        n_layer, 1, n_embd, n_head, 4 * n_embd, VOCAB, POSITIONS)
    assert c.activation == GPT2_ACTIVATIONS[activation] and c.stage == "batched"
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters())
    x = tokens()
    expected = hf_logits(hf, x)
    assert expected.abs().max() > 1.0                # random weights: no term is trivially zero
    with torch.no_grad():
        assert (model(x) - expected).abs().max().item() <= TOL
        assert (from_gpt2(hf, stage="reference")(x) - expected).abs().max().item() <= TOL
    back = to_gpt2(model)
    assert not back.training and back.config.n_inner == 4 * n_embd
    own, theirs = hf.state_dict(), back.state_dict()
    assert own.keys() == theirs.keys()
    assert all(torch.equal(own[k], theirs[k]) for k in own)   # the round trip is exact
    assert back.lm_head.weight.data_ptr() == back.transformer.wte.weight.data_ptr()  # still tied
    assert (hf_logits(back, x) - expected).abs().max().item() <= TOL


def test_kit_model_goes_to_gpt2_with_its_device_dtype_mode_and_inner_width():
    torch.manual_seed(0)
    model = randomize(ParaFormerLM(vocab_size=VOCAB, positions=32, dim=24, heads=3, depth=2,
                                   mlp_ratio=1.5, activation="gelu_tanh", stage="reference"),
                      seed=1).double()
    hf = to_gpt2(model)
    assert hf.training and hf.lm_head.weight.dtype == torch.float64
    assert hf.config.n_inner == 36 and hf.config.activation_function == "gelu_new"
    x = tokens(3, 11, seed=2)
    hf.eval(), model.eval()
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-10
    again = from_gpt2(hf, stage="reference")
    assert again.config.hidden_dim == 36 and again.pos_embed.dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(),
                                                 model.state_dict().values()))


def test_train_mode_and_dropout_rates_carry_over():
    hf = hf_gpt2(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.2).train()
    model = from_gpt2(hf)
    assert model.training and (model.config.dropout, model.config.attn_dropout) == (0.1, 0.2)
    back = to_gpt2(model)
    assert (back.config.resid_pdrop, back.config.embd_pdrop, back.config.attn_pdrop) == (0.1, 0.1, 0.2)
    with pytest.raises(ValueError, match="embd_pdrop=0.2 differs from resid_pdrop=0.1"):
        gpt2_config(hf_gpt2(resid_pdrop=0.1, embd_pdrop=0.2))
    assert gpt2_config(hf_gpt2(resid_pdrop=0.1, embd_pdrop=0.2), dropout=0.0).dropout == 0.0


# ----------------------------------------------------------------------------- generation

@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_generation_matches_hf_generate(batch):
    hf = hf_gpt2(3, 48, 4, seed=3, activation_function="gelu_new")
    model = from_gpt2(hf)
    prompt = tokens(batch, 7, seed=batch)
    with torch.no_grad():
        expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16,
                               do_sample=False, pad_token_id=0, use_cache=True)
    got = generate(model, prompt, 16, temperature=0)
    assert got.shape == expected.shape == (batch, 7 + 16)
    assert torch.equal(got, expected)
    assert len(set(got[0, 7:].tolist())) > 1          # not one token repeated: a real continuation


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("setting, words", [
    (dict(activation_function="relu"), "activation_function='relu'"),
    (dict(activation_function="silu"), "activation_function='silu'"),
    (dict(scale_attn_weights=False), "scale_attn_weights=False"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
    (dict(add_cross_attention=True), "add_cross_attention=True"),
    (dict(tie_word_embeddings=False), "tie_word_embeddings=False"),
])
def test_each_unsupported_setting_is_named(setting, words):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2, bos_token_id=None, eos_token_id=None, **setting)
    with pytest.raises(ValueError, match=f"no exact kit equivalent: {words}"):
        gpt2_config(config)
    with pytest.raises(ValueError, match=words):
        from_gpt2(transformers.GPT2LMHeadModel(config))


def test_every_unsupported_setting_is_named_in_one_error():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2, activation_function="relu",
                                     scale_attn_weights=False, add_cross_attention=True)
    with pytest.raises(ValueError) as info:
        check_gpt2(config)
    message = str(info.value)
    assert "\n" not in message
    for words in ("activation_function='relu'", "scale_attn_weights=False", "add_cross_attention"):
        assert words in message


def test_an_untied_head_in_a_tied_config_is_refused():
    hf = hf_gpt2()
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1.0)
    with pytest.raises(ValueError, match="lm_head.weight differs from transformer.wte.weight"):
        from_gpt2(hf)


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="expected a transformers GPT2LMHeadModel"):
        from_gpt2(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected a transformers GPT2LMHeadModel or GPT2Config"):
        gpt2_config("gpt2")
    with pytest.raises(ValueError, match=r"option\(s\) \['dim'\] cannot be changed"):
        gpt2_config(hf_gpt2(), dim=64)
    with pytest.raises(ValueError, match="stage must be one of"):
        from_gpt2(hf_gpt2(), stage="looped")
    with pytest.raises(TypeError, match="expected a ParaFormerLM"):
        to_gpt2(hf_gpt2())


@pytest.mark.parametrize("options, words", [
    (dict(width=2), "width n = 2"),
    (dict(qkv_bias=False), "qkv_bias = False"),
])
def test_models_gpt2_cannot_express_are_refused(options, words):
    with pytest.raises(ValueError, match=f"no GPT-2 equivalent: {words}"):
        to_gpt2(ParaFormerLM(vocab_size=VOCAB, positions=16, dim=16, heads=2, **options))


def test_the_kit_runs_without_transformers():
    """`import duat` never imports duat.gpt2, and without transformers importing duat.gpt2
    says what to install."""
    code = ("import sys\nimport duat, duat.language, duat.registry\n"
            "assert 'duat.gpt2' not in sys.modules and 'transformers' not in sys.modules\n"
            "sys.modules['transformers'] = None\n"
            "try:\n    import duat.gpt2\nexcept ImportError as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert "pip install transformers" in run.stdout and 'pip install -e ".[test]"' in run.stdout


def test_hf_eager_attention_with_reordered_upcast_converts_too():
    """reorder_and_upcast_attn only changes the precision of HF's eager attention."""
    hf = hf_gpt2(2, 32, 4, seed=4, reorder_and_upcast_attn=True, attn_implementation="eager")
    assert hf.config._attn_implementation == "eager"
    x = tokens(2, 9, seed=4)
    with torch.no_grad():
        assert (from_gpt2(hf)(x) - hf_logits(hf, x)).abs().max().item() <= TOL
