"""Hugging Face GPT-2 and the kit's GPT-L, exactly, both ways (docs/method.md section 9).

The serial GPT-L is the causal Para-Former-L-1 (duat.language), so the weights of a
`transformers` GPT2LMHeadModel (the released checkpoints' family, or one built from any
GPT2Config) load one to one into `ParaFormerLM(depth=L, width=1)` and the logits are the
same; and back. One GPT-2 block is one causal Block:

    h = x + c_proj(Attn(ln_1(x)))           a = Attn(LN1(x))
    y = h + mlp(ln_2(h))                    y = x + a + MLP(LN2(x + a))   the same sum

    check_gpt2(hf_model_or_config)               -> None, or one ValueError naming every mismatch
    gpt2_config(hf_model_or_config, **overrides) -> the ParaFormerLMConfig of GPT-L
    gpt2_parts(hf)                               -> (outer tensors, one Block-named dict per layer)
    from_gpt2(hf, stage="batched")               -> ParaFormerLM (width 1)
    to_gpt2(model)                               -> GPT2LMHeadModel (serial models only)
    GPT2_LAYER_KEYS, GPT2_OUTER_KEYS             the name tables between the two
    GPT2_ACTIVATIONS                             HF activation name -> the kit's

GPT-2's Conv1D stores a weight as (in, out), the transpose of nn.Linear's (out, in); its
c_attn columns are q, k, v with the heads contiguous, the order of our qkv rows. Settings
the kit cannot compute (another activation, unscaled or layer-scaled attention, cross
attention, an untied head) are refused, all named in one ValueError. Dropout sits in the
same places in both (embeddings, attention weights, after each projection), with one rate
for the embeddings and the residual branches here; outputs agree in eval mode (or with
dropout 0). reorder_and_upcast_attn changes only the precision of HF's eager attention and
is accepted; bos / eos / pad token ids and the summary_* fields (GPT2DoubleHeadsModel's) play
no part in the logits.
"""
from __future__ import annotations

import torch

from duat.language import ParaFormerLM, ParaFormerLMConfig
from duat.paraformer import STACKED
from duat.storage import load_state_dict_checked

try:
    from transformers import GPT2Config, GPT2LMHeadModel
except ImportError as error:  # the kit itself runs without transformers
    raise ImportError("duat.gpt2 needs Hugging Face transformers: pip install transformers "
                      "(or the kit's test extra: pip install -e \".[test]\")") from error

# one HF GPT2Block -> one Block (names inside Block); True: a Conv1D weight, transposed
GPT2_LAYER_KEYS = {
    "ln_1.weight": ("norm1.weight", False), "ln_1.bias": ("norm1.bias", False),
    "attn.c_attn.weight": ("attn.qkv.weight", True),   # columns q, k, v; heads contiguous
    "attn.c_attn.bias": ("attn.qkv.bias", False),
    "attn.c_proj.weight": ("attn.proj.weight", True), "attn.c_proj.bias": ("attn.proj.bias", False),
    "ln_2.weight": ("norm2.weight", False), "ln_2.bias": ("norm2.bias", False),
    "mlp.c_fc.weight": ("mlp.fc1.weight", True), "mlp.c_fc.bias": ("mlp.fc1.bias", False),
    "mlp.c_proj.weight": ("mlp.fc2.weight", True), "mlp.c_proj.bias": ("mlp.fc2.bias", False),
}
# front end and final norm: HF name -> ParaFormerLM name (the head is tied to wte in both)
GPT2_OUTER_KEYS = {
    "transformer.wte.weight": "tok_embed.weight",   # (V, D)
    "transformer.wpe.weight": "pos_embed",          # (S_max, D) there, (1, S_max, D) here
    "transformer.ln_f.weight": "norm.weight", "transformer.ln_f.bias": "norm.bias",
}
# HF activation_function -> the kit's; each pair agrees to float rounding (1e-6)
GPT2_ACTIVATIONS = {
    "gelu": "gelu", "gelu_python": "gelu",                        # 0.5 x (1 + erf(x / sqrt 2))
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",    # the tanh approximation
    "gelu_python_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu_accurate": "gelu_tanh",
}
# the kit's activation -> the HF name to_gpt2 writes (GPT-2's own for the tanh form)
TO_GPT2_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
OVERRIDABLE = ("dropout", "attn_dropout", "stage")


# ----------------------------------------------------------------------------- checks

def _hf_config(hf) -> GPT2Config:
    if isinstance(hf, GPT2Config):
        return hf
    if isinstance(hf, GPT2LMHeadModel):
        return hf.config
    raise TypeError(f"expected a transformers GPT2LMHeadModel or GPT2Config, got {type(hf).__name__}")


def check_gpt2(hf) -> None:
    """One ValueError naming every setting of this GPT-2 the kit's GPT-L cannot match."""
    c = _hf_config(hf)
    problems = []
    if c.activation_function not in GPT2_ACTIVATIONS:
        problems.append(f"activation_function={c.activation_function!r} (the kit's MLP has GELU: "
                        f"one of {sorted(GPT2_ACTIVATIONS)})")
    if not c.scale_attn_weights:
        problems.append("scale_attn_weights=False (the kit scales attention by 1/sqrt(head_dim))")
    if c.scale_attn_by_inverse_layer_idx:
        problems.append("scale_attn_by_inverse_layer_idx=True (the kit scales every layer alike)")
    if c.add_cross_attention:
        problems.append("add_cross_attention=True (the kit's model is a decoder only)")
    if not c.tie_word_embeddings:
        problems.append("tie_word_embeddings=False (the kit's head is the token embedding)")
    elif isinstance(hf, GPT2LMHeadModel) and not torch.equal(hf.lm_head.weight,
                                                            hf.transformer.wte.weight):
        problems.append("lm_head.weight differs from transformer.wte.weight (an untied head)")
    if problems:
        raise ValueError("this GPT-2 has no exact kit equivalent: " + "; ".join(problems))


def gpt2_config(hf, **overrides) -> ParaFormerLMConfig:
    """The ParaFormerLMConfig matching a GPT2LMHeadModel (or GPT2Config): GPT-L, width 1.

    `overrides` may change dropout (GPT-2's resid_pdrop and embd_pdrop, which must then agree),
    attn_dropout (attn_pdrop) and stage ("batched" or "reference")."""
    check_gpt2(hf)
    c = _hf_config(hf)
    unknown = set(overrides) - set(OVERRIDABLE)
    if unknown:
        raise ValueError(f"option(s) {sorted(unknown)} cannot be changed when converting a GPT-2; "
                         f"allowed: {list(OVERRIDABLE)}")
    if "dropout" not in overrides and c.embd_pdrop != c.resid_pdrop:
        raise ValueError(f"embd_pdrop={c.embd_pdrop} differs from resid_pdrop={c.resid_pdrop}: the "
                         f"kit has one dropout rate for both; pass dropout=... to choose it")
    D = c.n_embd
    H = c.n_inner if c.n_inner is not None else 4 * D
    mlp_ratio = H / D
    if int(D * mlp_ratio) != H:   # float rounding: nudge so that int(D * ratio) == H
        mlp_ratio = (H + 0.5) / D
    fields = dict(vocab_size=c.vocab_size, positions=c.n_positions, dim=D, heads=c.n_head,
                  mlp_ratio=mlp_ratio, depth=c.n_layer, width=1, dropout=float(c.resid_pdrop),
                  attn_dropout=float(c.attn_pdrop), norm_eps=c.layer_norm_epsilon, qkv_bias=True,
                  activation=GPT2_ACTIVATIONS[c.activation_function])
    fields.update(overrides)
    return ParaFormerLMConfig(**fields)


# ----------------------------------------------------------------------------- HF -> kit

def gpt2_parts(hf) -> tuple[dict, list[dict]]:
    """(outer tensors in ParaFormerLM's names, one Block-named dict per GPT-2 layer)."""
    if not isinstance(hf, GPT2LMHeadModel):
        raise TypeError(f"expected a transformers GPT2LMHeadModel, got {type(hf).__name__}")
    check_gpt2(hf)
    sd = hf.state_dict()
    outer = {new: sd[old].detach() for old, new in GPT2_OUTER_KEYS.items()}
    outer["pos_embed"] = outer["pos_embed"][None]                         # (1, S_max, D)
    blocks = []
    for l in range(hf.config.n_layer):
        prefix = f"transformer.h.{l}."
        blocks.append({new: (sd[prefix + old].detach().t() if conv else sd[prefix + old].detach())
                       for old, (new, conv) in GPT2_LAYER_KEYS.items()})
    return outer, blocks


def from_gpt2(hf, stage: str = "batched", **overrides) -> ParaFormerLM:
    """The GPT2LMHeadModel as the kit's GPT-L, ParaFormerLM(depth=L, width=1): the same
    logits, on the same device and dtype, in the same train / eval mode. `overrides`: as
    gpt2_config's (dropout, attn_dropout)."""
    outer, blocks = gpt2_parts(hf)
    config = gpt2_config(hf, stage=stage, **overrides)
    like = hf.transformer.wte.weight
    model = ParaFormerLM(config).to(device=like.device, dtype=like.dtype)
    sd = dict(outer)
    for l, block in enumerate(blocks):
        if stage == "reference":
            sd.update({f"stages.{l}.blocks.0.{path}": t for path, t in block.items()})
        else:   # a batched stage of one branch: every tensor gains a branch axis of 1
            sd.update({f"stages.{l}.{name}": block[path][None] for name, path in STACKED})
    load_state_dict_checked(model, {k: v.contiguous() for k, v in sd.items()})
    return model.train(hf.training)


# ----------------------------------------------------------------------------- kit -> HF

def to_gpt2(model: ParaFormerLM) -> GPT2LMHeadModel:
    """The serial ParaFormerLM(depth=L, width=1) as a GPT2LMHeadModel (the same logits), on
    the model's device and dtype, in its train / eval mode. Its bos / eos / pad token ids are
    left unset (None): the kit's vocabulary has no special tokens."""
    if not isinstance(model, ParaFormerLM):
        raise TypeError(f"expected a ParaFormerLM, got {type(model).__name__}")
    c = model.config
    problems = []
    if c.width != 1:
        problems.append(f"width n = {c.width} (GPT-2 is the causal Para-Former-L-1: n must be 1)")
    if not c.qkv_bias:
        problems.append("qkv_bias = False (GPT-2's c_attn has a bias)")
    if c.activation not in TO_GPT2_ACTIVATION:
        problems.append(f"activation = {c.activation!r} (GPT-2's: one of {list(TO_GPT2_ACTIVATION)})")
    if problems:
        raise ValueError("no GPT-2 equivalent: " + "; ".join(problems))
    hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.positions, n_embd=c.dim,
                           n_layer=c.depth, n_head=c.heads, n_inner=c.hidden_dim,
                           activation_function=TO_GPT2_ACTIVATION[c.activation],
                           resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.attn_dropout,
                           layer_norm_epsilon=c.norm_eps, tie_word_embeddings=True,
                           bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf = GPT2LMHeadModel(hf_config)
    own = model.state_dict()
    sd = {old: own[new].detach() for old, new in GPT2_OUTER_KEYS.items()}
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"][0]        # (S_max, D)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]                   # tied
    for l, row in enumerate(model.blocks()):
        block = row[0].state_dict()
        for old, (new, conv) in GPT2_LAYER_KEYS.items():
            sd[f"transformer.h.{l}.{old}"] = block[new].t() if conv else block[new]
    like = model.pos_embed
    hf = hf.to(device=like.device, dtype=like.dtype)
    load_state_dict_checked(hf, {k: v.contiguous() for k, v in sd.items()})
    return hf.train(model.training)
