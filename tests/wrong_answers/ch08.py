"""Wrong answers to the exercises of notebook 08."""


def _stage_major_always(L, m, n, assignment):          # ignores the assignment
    return [[s * n + i for i in range(n)] for s in range(m)]


def _rules_swapped(L, m, n, assignment):               # strided for stage-major and back
    if assignment == "strided":
        return [[s * n + i for i in range(n)] for s in range(m)]
    return [[s + i * m for i in range(n)] for s in range(m)]


def _transposed(L, m, n, assignment):                  # n rows of m: branches as rows
    return [[s * n + i for s in range(m)] for i in range(n)]


def _one_based(L, m, n, assignment):
    k = (lambda s, i: s * n + i) if assignment == "stage-major" else (lambda s, i: s + i * m)
    return [[k(s, i) + 1 for i in range(n)] for s in range(m)]


def _spread_floor(L, count, rule):                     # int() instead of round()
    if rule == "first":
        return list(range(count))
    if rule == "last":
        return list(range(L - count, L))
    return [0] if count == 1 else [int(k * (L - 1) / (count - 1)) for k in range(count)]


def _last_off_by_one(L, count, rule):
    if rule == "last":
        return list(range(L - count - 1, L - 1))
    if rule == "first":
        return list(range(count))
    return [0] if count == 1 else [round(k * (L - 1) / (count - 1)) for k in range(count)]


def _spread_step(L, count, rule):                      # step L / count: never the last block
    if rule == "spread":
        return [k * L // count for k in range(count)]
    return list(range(count)) if rule == "first" else list(range(L - count, L))


def _part(name):
    root = name.split(".")[0]
    return {"patch_embed": "embed", "cls_token": "embed", "pos_embed": "embed",
            "stages": "blocks"}.get(root, root)


def _frozen_set(parts, norm_with_body=True, embed=("patch_embed", "cls_token", "pos_embed")):
    parts = [parts] if isinstance(parts, str) else parts
    out = set()
    for p in parts:
        if p == "all-but-head":
            out |= {"embed", "blocks"} | ({"norm"} if norm_with_body else set())
        elif p != "none":
            out.add(p)
    return out


def _norm_stays(names, parts):                         # all-but-head leaves norm trainable
    frozen = _frozen_set(parts, norm_with_body=False)
    return [n for n in names if _part(n) not in frozen]


def _returns_frozen(names, parts):                     # the frozen names, not the trainable
    frozen = _frozen_set(parts)
    return [n for n in names if _part(n) in frozen]


def _embed_is_patch_only(names, parts):                # cls_token, pos_embed forgotten
    frozen = _frozen_set(parts)
    return [n for n in names if not (_part(n) in frozen and
                                     (_part(n) != "embed" or n.startswith("patch_embed")))]


WRONG = {
    "8.1": [_stage_major_always, _rules_swapped, _transposed, _one_based],
    "8.2": [_spread_floor, _last_off_by_one, _spread_step],
    "8.3": [_norm_stays, _returns_frozen, _embed_is_patch_only],
}
