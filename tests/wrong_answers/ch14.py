"""Wrong answers to the exercises of notebook 14."""
import math

import torch

IGNORE = -100


def _targets(x, *, first=False, self_match=False, shift=1, missing=IGNORE):
    """The induction rule written as a loop, with one mistake switched on."""
    N, T = x.shape
    y = torch.full_like(x, missing)
    for n in range(N):
        for t in range(T):
            seen = [j for j in range(t + (1 if self_match else 0)) if x[n, j] == x[n, t]]
            if seen:
                j = (seen[0] if first else seen[-1]) + shift
                y[n, t] = x[n, j] if 0 <= j < T else IGNORE
    return y


def _self_as_missing(x):                               # x[t] where there is no earlier match
    y = _targets(x)
    return torch.where(y == IGNORE, x, y)


def _pattern(x, shift, *, causal=True, strict=False, roll=False):
    T = x.shape[0]
    before = torch.roll(x, shift)
    out = torch.zeros(T, T, dtype=torch.bool)
    for t in range(T):
        for s in range(T):
            if causal and (s >= t if strict else s > t):
                continue
            if roll:
                out[t, s] = before[s] == x[t]
            elif 0 <= s - shift < T:
                out[t, s] = x[s - shift] == x[t]
    return out


WRONG = {
    "14.1": [
        lambda x: _targets(x, first=True),             # the first earlier occurrence, not the last
        lambda x: _targets(x, shift=0),                # a = x[j] itself, not the token after it
        lambda x: _targets(x, shift=-1),               # the token before the earlier occurrence
        lambda x: _targets(x, self_match=True),        # j <= t: a token matches itself
        lambda x: _targets(x, missing=0),              # 0 where nothing matched
        lambda x: _targets(x, missing=-1),             # -1 where nothing matched
        _self_as_missing,                              # x[t] where nothing matched
        lambda x: _targets(x).T,                       # (T, N)
    ],
    "14.2": [
        lambda x, d: _pattern(x, 0),                   # the key's own token: one layer's pattern
        lambda x, d: _pattern(x, -d),                  # the token d after the key
        lambda x, d: _pattern(x, d - 1),               # off by one
        lambda x, d: _pattern(x, 1),                   # d ignored: always the previous token
        lambda x, d: _pattern(x, d, roll=True),        # torch.roll: s < d sees the last tokens
        lambda x, d: _pattern(x, d, causal=False),     # keys after the query too
        lambda x, d: _pattern(x, d, strict=True),      # s < t: the query's own position left out
        lambda x, d: _pattern(x, d).T,                 # rows = keys
        lambda x, d: _pattern(x, d)[1:],               # (T - 1, T): the first query dropped
    ],
    "14.3": [
        lambda m, n: [n ** k for k in range(m + 1)],                        # no C(m, k)
        lambda m, n: [math.comb(m, k) for k in range(m + 1)],               # no n ** k
        lambda m, n: [math.comb(m * n, k) for k in range(m + 1)],           # GPT-(m n)'s paths
        lambda m, n: [math.comb(m * n, k) for k in range(m * n + 1)],       # ... up to k = m n
        lambda m, n: [math.comb(m, k) * n ** k for k in range(m, -1, -1)],  # reversed
        lambda m, n: [math.comb(m, k) * n ** k for k in range(1, m + 1)],   # k = 0 left out
        lambda m, n: [0] + [math.comb(m, k) * n ** k for k in range(1, m + 1)],
    ],
}
