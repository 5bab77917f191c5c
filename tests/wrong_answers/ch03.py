"""Wrong answers to the exercises of notebook 03."""
import torch


def _b_tildes(net, x0, after=False, subtract=True):
    out, x = [], x0
    for block in net.blocks:
        nxt = block(x)
        seen = nxt if after else x
        out.append(block.fc1.bias + (seen - x0 if subtract else seen) @ block.fc1.weight.T)
        x = nxt
    return torch.stack(out)


WRONG = {
    "3.1": [
        lambda net, x0: torch.stack([b.fc1.bias.expand(x0.shape[0], -1) for b in net.blocks]),  # static
        lambda net, x0: _b_tildes(net, x0, subtract=False),    # the whole pre-activation
        lambda net, x0: _b_tildes(net, x0, after=True),        # off by one layer
        lambda net, x0: _b_tildes(net, x0).transpose(0, 1),    # (B, L, hidden)
    ],
    "3.2": [
        lambda b: (b.std(dim=0).mean() / b.abs().mean()).item(),                 # sample std
        lambda b: b.std(dim=0, unbiased=False).mean().item(),                    # not relative
        lambda b: (b.std(dim=1, unbiased=False).mean() / b.abs().mean()).item(),  # wrong axis
    ],
    "3.3": [
        lambda d, N, k, dynamic: (N * (d + 2) + k * (d + 1) + k * N * len(dynamic)) // (d + 2),  # floor
        lambda d, N, k, dynamic: round((N * (d + 2) + k * d + k * N * len(dynamic)) / (d + 2)),  # no P bias
        lambda d, N, k, dynamic: round((k * (d + 1) + k * N * len(dynamic)) / (d + 2)),  # no base UAT
        lambda d, N, k, dynamic: round((N * (d + 2) + k * (d + 1) + 2 * k * N) / (d + 2)),  # 2 always
    ],
}
