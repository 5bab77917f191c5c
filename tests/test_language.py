"""The causal Para-Former language model (duat.language): cached decoding equals one full
causal forward, the mask is causal and really used, the two stage implementations agree,
generation is seeded and greedy is argmax, every bad input has one clear error, and the
registry builds every named language model."""
import pytest
import torch

from duat.language import KVCache, ParaFormerLM, generate
from duat.paraformer import ParallelStage, ReferenceStage
from duat.registry import NAMED_LANGUAGE, create_model

from conftest import randomize

TOL = 1e-5
VOCAB, POSITIONS = 50, 32


def lm(depth=1, width=1, seed=0, **kw) -> ParaFormerLM:
    """A tiny causal Para-Former-m-n, weights randomized (no term trivially zero), in eval mode."""
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, positions=POSITIONS, dim=16, heads=2, mlp_ratio=2.0)
    fields.update(kw)
    return randomize(ParaFormerLM(depth=depth, width=width, **fields), seed=seed).eval()


def tokens(batch=2, T=12, seed=0, vocab=VOCAB):
    return torch.randint(0, vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


# (depth m, width n, branches k): GPT-3, causal Para-Former-1-4, Para-Former-2-3, its prefix k=2
LAYOUTS = [(3, 1, None), (1, 4, None), (2, 3, None), (2, 3, 2)]


# ----------------------------------------------------------------------------- KV cache

@pytest.mark.parametrize("depth, width, k", LAYOUTS)
def test_cached_decoding_gives_the_full_forward_logits(depth, width, k):
    model = lm(depth, width)
    x = tokens(2, 14)
    with torch.no_grad():
        full = model(x, k)                                                 # (B, T, V)
        cache = KVCache(model, 2)
        steps = [model(x[:, :5], k, cache)]                                # prefill
        steps += [model(x[:, t:t + 1], k, cache) for t in range(5, 14)]    # one token a call
    assert cache.length == 14
    assert full.abs().max() > 0.5
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOL


@pytest.mark.parametrize("depth, width, k", LAYOUTS)
def test_prefill_in_chunks_of_different_lengths(depth, width, k):
    model = lm(depth, width, seed=1)
    x = tokens(3, 17, seed=1)
    with torch.no_grad():
        full = model(x, k)
        cache = KVCache(model, 3)
        parts, start = [], 0
        for size in (4, 1, 7, 2, 3):
            parts.append(model(x[:, start:start + size], k, cache))
            start += size
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= TOL


def test_cached_decoding_with_the_branches_cut_into_chunks(monkeypatch):
    """On a CPU the branch axis is cut into chunks past a row budget: each chunk writes its
    own branches' slice of the cache."""
    model = lm(2, 3, seed=2)
    x = tokens(2, 9, seed=2)
    with torch.no_grad():
        full = model(x)
        monkeypatch.setattr(ParallelStage, "cpu_row_budget", 2)           # one branch a chunk
        assert len(model.stages[0].chunks(3, 2, x.device)) == 3
        cache = KVCache(model, 2)
        steps = [model(x[:, :4], None, cache)] + [model(x[:, t:t + 1], None, cache)
                                                  for t in range(4, 9)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOL


def test_decode_step_and_reset_give_the_same_logits():
    model = lm(2, 2, seed=3)
    x = tokens(1, 8, seed=3)
    with torch.no_grad():
        full = model(x)
        cache = KVCache(model, 1, positions=8)
        model(x[:, :7], None, cache)
        last = model.decode_step(x[:, 7:], torch.tensor([7]), cache)       # (1, 1, V)
        assert (last[:, 0] - full[:, 7]).abs().max().item() <= TOL
        cache.reset()                                                      # start again at 0
        other = tokens(1, 8, seed=4)
        again = torch.cat([model(other[:, :3], None, cache), model(other[:, 3:], None, cache)], 1)
        assert (again - model(other)).abs().max().item() <= TOL
    assert cache.nbytes() == 2 * 2 * (2 * 1 * 2 * 8 * 8) * 4             # k, v x m x (n,B,h,S,hd) x 4 B


# ----------------------------------------------------------------------------- causality

@pytest.mark.parametrize("stage", ["batched", "reference"])
@pytest.mark.parametrize("depth, width", [(2, 1), (2, 3)])
def test_later_tokens_never_change_earlier_logits(stage, depth, width):
    model = lm(depth, width, seed=5, stage=stage)
    x = tokens(2, 12, seed=5)
    with torch.no_grad():
        base = model(x)
        for t in (0, 5, 11):
            y = x.clone()
            y[:, t] = (y[:, t] + 1 + torch.arange(2)) % VOCAB                 # another token at t
            changed = model(y)
            assert torch.equal(changed[:, :t], base[:, :t])                  # exactly
            assert (changed[:, t:] - base[:, t:]).abs().amax(dim=-1).min() > 1e-4  # every later one


# ----------------------------------------------------------------------------- two stages

@pytest.mark.parametrize("depth, width, k", LAYOUTS)
def test_reference_stage_equals_batched_stage(depth, width, k):
    model = lm(depth, width, seed=6)
    x = tokens(2, 10, seed=6)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    with torch.no_grad():
        batched = model(x, k)
        model.to_reference()
        assert all(isinstance(s, ReferenceStage) for s in model.stages)
        assert model.config.stage == "reference"
        reference = model(x, k)
        blocks = model.blocks()
        model.to_batched()
    assert (reference - batched).abs().max().item() <= TOL
    after = model.state_dict()                                     # the round trip is exact
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert model.config.stage == "batched" and not model.training
    assert torch.equal(blocks[1 % depth][width - 1].attn.qkv.weight,
                       before[f"stages.{1 % depth}.qkv_weight"][width - 1])


# ----------------------------------------------------------------------------- generate

def test_generate_is_seeded_and_reproducible():
    model = lm(2, 2, seed=7)
    prompt = tokens(2, 4, seed=7)
    a = generate(model, prompt, 12, temperature=1.0, seed=1)
    assert a.shape == (2, 16) and torch.equal(a[:, :4], prompt)
    assert torch.equal(a, generate(model, prompt, 12, temperature=1.0, seed=1))
    assert not torch.equal(a, generate(model, prompt, 12, temperature=1.0, seed=2))
    assert torch.equal(generate(model, prompt, 12, top_k=1, seed=3),
                       generate(model, prompt, 12, temperature=0))     # top-1 sampling is greedy
    top = generate(model, prompt, 12, temperature=2.0, top_k=3, seed=4)
    with torch.no_grad():
        logits = model(top[:, :-1])[:, 3:]                                 # at each new token
    allowed = logits.topk(3, dim=-1).indices                               # (B, 12, 3)
    assert (allowed == top[:, 4:, None]).any(-1).all()


@pytest.mark.parametrize("temperature", [0, 0.8])
@pytest.mark.parametrize("width, k", [(1, None), (3, None), (3, 2)])
def test_cache_and_no_cache_generate_the_same(width, k, temperature):
    model = lm(2, width, seed=8)
    prompt = tokens(2, 5, seed=8)
    with_cache = generate(model, prompt, 10, temperature, seed=5, branches=k)
    without = generate(model, prompt, 10, temperature, seed=5, branches=k, use_cache=False)
    assert torch.equal(with_cache, without)


def test_greedy_is_argmax_decoding_by_hand_and_keeps_the_mode():
    model = lm(2, 3, seed=9).train()
    prompt = tokens(1, 3, seed=9)[0]                                       # (T,) is one sequence
    got = generate(model, prompt, 8, temperature=0, branches=2)
    assert model.training                                                  # restored
    seq = prompt[None]
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, model(seq, 2)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, seq) and got.shape == (1, 11)
    assert torch.equal(generate(model, prompt.tolist(), 8, temperature=0, branches=2), got)
    full = generate(model, prompt, 8, temperature=0)
    assert not torch.equal(full, got)                    # the prefix model is another model


# ----------------------------------------------------------------------------- bad input

def test_every_bad_input_has_one_clear_error():
    model = lm(2, 3, seed=10)
    with pytest.raises(ValueError, match="33 tokens do not fit the model's 32 positions"):
        model(tokens(1, 33))
    with pytest.raises(ValueError, match="a prompt of 30 tokens and 5 new ones do not fit"):
        generate(model, tokens(1, 30), 5)
    with pytest.raises(ValueError, match="token id 50 is outside the vocabulary 0..49"):
        model(torch.tensor([[1, 50, 2]]))
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary 0..49"):
        generate(model, torch.tensor([[3, -1]]), 2)
    with pytest.raises(TypeError, match="expected integer token ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(TypeError, match="prompt must be"):
        generate(model, "hello", 2)
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
            generate(model, tokens(1, 3), bad)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a number >= 0"):
            generate(model, tokens(1, 3), 2, temperature=bad)
    for bad in (0, 51):
        with pytest.raises(ValueError, match=r"top_k must be an int in 1..50"):
            generate(model, tokens(1, 3), 2, top_k=bad)
    for bad in (0, 4, True, 1.0):
        with pytest.raises(ValueError, match="branches must be an int k with 1 <= k <= n = 3"):
            model(tokens(1, 3), branches=bad)
    with pytest.raises(ValueError, match="branches must be an int k"):
        generate(model, tokens(1, 3), 2, branches=4)


def test_every_bad_cache_has_one_clear_error():
    model = lm(2, 3, seed=11)
    cache = KVCache(model, 2, positions=8)
    model(tokens(2, 6), cache=cache)
    with pytest.raises(ValueError, match="cache overflow: 6 positions filled, 3 more do not fit its 8"):
        model(tokens(2, 3), cache=cache)
    assert cache.length == 6                                               # nothing written
    with pytest.raises(ValueError, match="this cache holds a batch of 2, got 3 sequences"):
        model(tokens(3, 1), cache=cache)
    with pytest.raises(ValueError, match="made for another model"):
        lm(2, 2)(tokens(2, 1), cache=cache)
    with pytest.raises(ValueError, match="longer than the model's 32"):
        KVCache(model, 1, positions=33)
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        model(tokens(2, 1), cache={})
    model.to_reference()
    with pytest.raises(ValueError, match=r"needs the batched stage; call model.to_batched\(\)"):
        KVCache(model, 1)
    with pytest.raises(ValueError, match=r"needs the batched stage"):   # made before the switch
        model(tokens(2, 1), cache=cache)


# ----------------------------------------------------------------------------- registry

def test_registry_builds_language_models_of_the_named_layout():
    gpt = create_model("gpt-3", vocab_size=VOCAB, positions=16)
    assert isinstance(gpt, ParaFormerLM) and (gpt.config.depth, gpt.config.width) == (3, 1)
    pf = create_model("pf-2-3", language=True, vocab_size=VOCAB)
    assert isinstance(pf, ParaFormerLM) and (pf.config.depth, pf.config.width) == (2, 3)
    assert not isinstance(create_model("pf-2-3"), ParaFormerLM)            # images without it
    with pytest.raises(ValueError, match="'vit-2' is an image model"):
        create_model("vit-2", language=True)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['image_size'\] for 'gpt-2'"):
        create_model("gpt-2", image_size=8)
    with pytest.raises(ValueError, match="width=2 contradicts the model name 'gpt-2'"):
        create_model("gpt-2", width=2)


@pytest.mark.parametrize("name", NAMED_LANGUAGE)
def test_every_named_language_model_builds_and_runs(name):
    model = create_model(name, language=True, dim=8, heads=2, mlp_ratio=1.0, vocab_size=11,
                         positions=6).eval()
    depth, width = (int(name.split("-")[1]), 1) if name.startswith("gpt") else map(
        int, name.split("-")[1:])
    assert (model.config.depth, model.config.width) == (depth, width)
    with torch.no_grad():
        logits = model(tokens(2, 6, vocab=11))
    assert logits.shape == (2, 6, 11) and torch.isfinite(logits).all()
