"""Exercises of notebook 05 (FLOPs and the roofline, docs/method.md sections 4 and 5.2)."""
from __future__ import annotations

import torch

from duat.bench import add_roofline
from duat.counting import flops, flops_breakdown, layer_flops
from duat.exercises.core import as_numbers, call, cases, exercise, pick, same_number
from duat.paraformer import ParaFormerConfig


@exercise("5.1", "the FLOPs of one encoder layer",
          "a function encoder_layer_flops(B, T, D, H) returning the FLOPs (a number, 2 per "
          "multiply-add of the matrix products) of one encoder layer on B sequences of T tokens "
          "of width D, with MLP hidden width H")
def encoder_layer_flops(answer) -> str:
    for i, g in cases():
        heads = pick((1, 2, 3, 4, 6), g)
        patch = pick((2, 4, 8), g)
        c = ParaFormerConfig(image_size=patch * pick((1, 2, 3, 4), g), patch_size=patch,
                             dim=heads * pick((8, 16, 32), g), heads=heads,
                             mlp_ratio=pick((1.0, 2.0, 3.0, 4.0), g),
                             pool="cls" if i % 2 else "mean")
        B = pick((1, 2, 8, 64), g)
        T, D, H = c.num_tokens, c.dim, c.hidden_dim
        parts = flops_breakdown(c, B)            # depth = width = 1: one layer
        total = layer_flops(c, B)
        case = f"case {i}: B = {B}, T = {T}, D = {D}, H = {H}"
        got = call(answer, B, T, D, H, case=case)
        same_number(got, total, case=case, what="the FLOPs of one layer", mistakes=[
            (total / 2, "each multiply-add counts as 2 FLOPs (a multiply and an add); this "
             "counts it as 1."),
            (total - parts["attention"], "the two products inside attention, Q K^T and "
             "softmax(.) V, are missing: 2 B T^2 D FLOPs each (all heads together)."),
            (total - parts["attention"] / 2, "only one of attention's two products is counted: "
             "Q K^T and softmax(.) V both cost 2 B T^2 D."),
            (total - parts["qkv"] * 2 / 3, "the query, key and value projections are three "
             "D x D products (one 3D x D weight), not one."),
            (total - parts["mlp"] / 2, "the MLP has two products, D -> H and H -> D."),
            (total - parts["proj"], "the attention's output projection (D x D) is missing."),
            (float(flops(c, B)), "that is the whole model (with the patch embedding and the "
             "head); the exercise asks for one encoder layer."),
            (total * heads if heads > 1 else -1.0, "the attention products of all heads "
             "together cost 2 B T^2 D each: every head has width D / heads, so do not multiply "
             "by the number of heads."),
        ])
    return "5 unseen batch sizes, token counts and widths"


@exercise("5.2", "the roofline of one benchmark row",
          "a function roofline(flops, median_ms, peak_gflops) returning the tuple "
          "(flop_bound_ms, achieved_gflops, peak_fraction) of a forward pass of `flops` FLOPs "
          "that took median_ms milliseconds on a device of peak_gflops GFLOP/s")
def roofline(answer) -> str:
    for i, g in cases():
        u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        fl = int(10 ** (6 + 5 * u[0]))                 # 1e6 .. 1e11 FLOPs
        median_ms = 10 ** (-2 + 4 * u[1])               # 0.01 .. 100 ms
        peak = 10 ** (1 + 4 * u[2])                     # 10 .. 1e5 GFLOP/s
        ref = add_roofline({"flops": fl, "median_ms": median_ms}, peak)
        case = f"case {i}: {fl} FLOPs in {median_ms:.4g} ms, peak {peak:.4g} GFLOP/s"
        bound, achieved, frac = as_numbers(call(answer, fl, median_ms, peak, case=case), 3,
                                           f"the result on {case}")
        same_number(bound, ref["flop_bound_ms"], case=case, what="flop_bound_ms", rel=1e-6,
                    mistakes=[
            (ref["flop_bound_ms"] / 1e3, "that is the bound in seconds; the exercise asks for "
             "milliseconds (x 1000)."),
            (ref["flop_bound_ms"] * 1e3, "that is the bound in microseconds; milliseconds are "
             "FLOPs / (peak_gflops * 1e9) * 1e3."),
            (ref["flop_bound_ms"] * 1e6, "peak_gflops is in GFLOP/s: 1e9 FLOP per second."),
            (median_ms, "the bound is what the peak allows, FLOPs / peak, not the measured time."),
        ])
        same_number(achieved, ref["achieved_gflops"], case=case, what="achieved_gflops",
                    rel=1e-6, mistakes=[
            (ref["achieved_gflops"] / 1e3, "median_ms is in milliseconds: divide it by 1000 "
             "to get seconds first."),
            (ref["achieved_gflops"] * 1e9, "that is FLOP/s; the exercise asks for GFLOP/s "
             "(divide by 1e9)."),
            (peak, "achieved is the measured rate, FLOPs / measured time, not the peak."),
        ])
        same_number(frac, ref["peak_fraction"], case=case, what="peak_fraction", rel=1e-6,
                    mistakes=[
            (100 * ref["peak_fraction"], "a fraction, not a percentage: between 0 and 1 for a "
             "device working below its peak."),
            (1 / ref["peak_fraction"], "the fraction is achieved / peak, not peak / achieved."),
        ])
    return "5 unseen FLOP counts, latencies and peaks"
