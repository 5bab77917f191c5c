"""Wrong answers to the exercises of notebook 05."""

WRONG = {
    "5.1": [
        lambda B, T, D, H: B * T * (3 * D * D + D * D + 2 * D * H) + 2 * B * T * T * D,  # 1 FLOP per multiply-add
        lambda B, T, D, H: 2 * B * T * (3 * D * D + D * D + 2 * D * H),               # attention products left out
        lambda B, T, D, H: 2 * B * T * (D * D + D * D + 2 * D * H) + 4 * B * T * T * D,  # q, k, v as one D x D
    ],
    "5.2": [
        lambda flops, ms, peak: (flops / peak / 1e9, flops / ms / 1e6, flops / ms / 1e6 / peak),  # bound in s
        lambda flops, ms, peak: (flops / peak / 1e6, flops / ms / 1e9, flops / ms / 1e9 / peak),  # ms not converted
        lambda flops, ms, peak: (flops / peak / 1e6, flops / ms / 1e6, 100 * flops / ms / 1e6 / peak),  # a percentage
        lambda flops, ms, peak: (flops / peak / 1e6, flops / ms / 1e6, peak / (flops / ms / 1e6)),  # inverted
    ],
}
