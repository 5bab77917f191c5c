"""Wrong answers to the exercises of notebook 13."""
import torch


def _mask(last, S):                                   # row r sees s <= last[r]
    return torch.arange(S)[None, :] <= torch.as_tensor(last)[:, None]


def _no_offset(p, T, S):                              # queries at 0..T-1, the cache forgotten
    return _mask(torch.arange(T), S)


def _strict(p, T, S):                                 # a token not seeing itself
    return _mask(torch.arange(p, p + T) - 1, S)


def _inverted(p, T, S):                               # masked_fill's convention: True = hidden
    return ~_mask(torch.arange(p, p + T), S)


def _float(p, T, S):                                  # 0 / 1 floats: an additive mask to SDPA
    return _mask(torch.arange(p, p + T), S).float()


def _transposed(p, T, S):                             # (S, T)
    return _mask(torch.arange(p, p + T), S).T


def _block_sees_block(p, T, S):                       # not causal inside the new block
    return _mask(torch.full((T,), p + T - 1), S)


def _parts(c, t, batch, size, *, tied=True, width=True, values=True, positions=None,
           weights_per_sequence=False, position_rows=1):
    D, H, V = c.dim, c.hidden_dim, c.vocab_size
    layers = c.depth * (c.width if width else 1)
    layer = 2 * D + 3 * D * D + 3 * D + D * D + D + 2 * D + H * D + H + D * H + D
    weights = layers * layer + V * D * (1 if tied else 2) + position_rows * D + 2 * D
    if weights_per_sequence:
        weights *= batch
    cached = t if positions is None else positions
    cache = (2 if values else 1) * layers * batch * cached * D
    return weights * size, cache * size


WRONG = {
    "13.1": [_no_offset, _strict, _inverted, _float, _transposed, _block_sees_block],
    "13.2": [
        lambda c, t, b, s: (_parts(c, t, b, s)[0], 0),                          # no cache
        lambda c, t, b, s: _parts(c, t, b, s, values=False),                     # keys only
        lambda c, t, b, s: _parts(c, t, b, s, positions=c.positions),            # the whole S_max
        lambda c, t, b, s: _parts(c, t, b, s, tied=False),                       # an untied head
        lambda c, t, b, s: _parts(c, t, b, s, position_rows=c.positions),        # the whole position table
        lambda c, t, b, s: _parts(c, t, b, s, weights_per_sequence=True),        # weights x batch
        lambda c, t, b, s: _parts(c, t, b, s, width=False),                      # depth layers only
        lambda c, t, b, s: tuple(x // s for x in _parts(c, t, b, s)),            # numbers, not bytes
    ],
}
