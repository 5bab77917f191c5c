"""duat.tasks: every synthetic task is seeded, its targets follow from its inputs and exactly
the promised positions are scored; every pattern that does not fit is refused with the
minimum; the text corpus loads, round-trips, splits and windows honestly, and bad files are
refused in one line; SequenceLoader covers every example once, in an order of (seed, epoch)."""
import numpy as np
import pytest
import torch

from duat.tasks import (IGNORE, TASKS, SequenceLoader, SequenceTask, TextCorpus, copy_back,
                        induction, load_text, mqar)

N, T, V, K = 256, 24, 16, 4


@pytest.mark.parametrize("name", ["induction", "mqar", "copy"])
def test_seeded_shapes_and_dtypes(name):
    task = SequenceTask(name, length=T, vocab_size=V, pairs=K)
    x, y = task.generate(N, seed=3)
    assert x.shape == y.shape == (N, T) and x.dtype == y.dtype == torch.int64
    assert 0 <= x.min() and x.max() < V
    assert ((y == IGNORE) | ((0 <= y) & (y < V))).all()
    again = task.generate(N, seed=3)
    assert torch.equal(x, again[0]) and torch.equal(y, again[1])
    assert not torch.equal(x, task.generate(N, seed=4)[0])
    assert task.to_dict() == dict(name=name, length=T, vocab_size=V, pairs=K, offset=2)
    assert "\n" not in task.scored() and str(T) in task.scored()


@pytest.mark.parametrize("pairs", [1, K])
def test_induction_targets_are_the_tokens_after_the_earlier_copies(pairs):
    x, y = induction(N, T, V, pairs, torch.Generator().manual_seed(0))
    scored = y != IGNORE
    assert (scored.sum(1) == pairs).all()
    q = scored.int().argmax(1)                            # where the second copy starts
    for xs, ys, start in zip(x.tolist(), y.tolist(), q.tolist()):
        for t in range(start, start + pairs):             # at a = x[t]: [a][b] ... [a] -> b
            a = xs[t]
            assert xs.count(a) == 2                       # a occurs once before, nowhere else
            p = xs.index(a)
            assert p < start - 1 and ys[t] == xs[p + 1] and xs.count(ys[t]) == 2
            assert all(v == IGNORE for i, v in enumerate(ys) if not start <= i < start + pairs)
    gaps = {(q[i] - (x[i, :q[i]] == x[i, q[i]]).int().argmax()).item() for i in range(N)}
    assert len(gaps) > 4                                  # the copies lie at varying distances


def test_mqar_targets_are_the_values_of_the_pairs():
    x, y = mqar(N, T, V, K, torch.Generator().manual_seed(0))
    keys, values = x[:, 0:2 * K:2], x[:, 1:2 * K:2]       # (N, K)
    assert ((1 <= keys) & (keys < V // 2)).all() and ((V // 2 <= values) & (values < V)).all()
    for row_k, row_v in zip(keys.tolist(), values.tolist()):
        assert len(set(row_k)) == K and len(set(row_v)) == K
    assert (y[:, :2 * K] == IGNORE).all() and ((y != IGNORE).sum(1) == K).all()
    for xs, ys, ks, vs in zip(x.tolist(), y.tolist(), keys.tolist(), values.tolist()):
        value_of = dict(zip(ks, vs))
        rest = xs[2 * K:]
        assert sorted(t for t in rest if t) == sorted(ks)  # each key asked once, else filler
        for t in range(2 * K, T):
            assert ys[t] == (value_of[xs[t]] if xs[t] else IGNORE)
    orders = {tuple(int(k) for k in row[row > 0]) for row in x[:, 2 * K:]}
    assert len(orders) > N // 2                            # queries come in random orders


@pytest.mark.parametrize("offset", [1, 2, 5])
def test_copy_targets_look_offset_back_from_the_next_position(offset):
    x, y = copy_back(N, T, V, offset, torch.Generator().manual_seed(0))
    assert ((y != IGNORE).sum(1) == T - offset + 1).all()
    assert (y[:, :offset - 1] == IGNORE).all()
    for t in range(offset - 1, T):
        assert torch.equal(y[:, t], x[:, t + 1 - offset])


@pytest.mark.parametrize("kwargs, error", [
    (dict(name="sorting", length=8), "unknown task 'sorting'; tasks: induction, mqar, copy, text"),
    (dict(name="text", length=8), "load_text"),
    (dict(name="induction", length=10, pairs=4), r"below the pattern.*length >= 2K \+ 3 = 11"),
    (dict(name="induction", length=12, vocab_size=5, pairs=4), r"vocab_size >= K \+ 2 = 6"),
    (dict(name="mqar", length=12, vocab_size=9, pairs=4),
     "at least K keys and K values: vocab_size >= 10"),
    (dict(name="mqar", length=11, vocab_size=10, pairs=4), "below the pattern.*length >= 3K = 12"),
    (dict(name="copy", length=2, offset=2), r"length >= offset \+ 1 = 3"),
    (dict(name="copy", length=8, vocab_size=1), "vocab_size >= 2"),
    (dict(name="copy", length=8, offset=0), "offset must be a positive int"),
    (dict(name="mqar", length=8, pairs=True), "pairs must be a positive int"),
])
def test_patterns_that_do_not_fit_are_refused(kwargs, error):
    with pytest.raises(ValueError, match=error):
        SequenceTask(**kwargs)


def test_smallest_patterns_fit_and_bad_counts_are_refused():
    for task in (SequenceTask("induction", 5, 3, pairs=1), SequenceTask("mqar", 12, 10, pairs=4),
                 SequenceTask("copy", 3, 2, offset=2)):
        task.generate(8, seed=0)
    assert SequenceTask("copy", np.int64(8)).length.__class__ is int
    with pytest.raises(ValueError, match="count must be a positive int"):
        SequenceTask("copy", 8).generate(0, seed=0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        SequenceTask("copy", 8).generate(4, seed=-1)
    assert TASKS == ("induction", "mqar", "copy", "text")


# ----------------------------------------------------------------------------- text

@pytest.fixture(scope="module")
def corpus():
    return load_text()


def test_default_corpus_round_trips(corpus):
    assert corpus.name == "pydoc_data.topics" and len(corpus.text) > 400_000
    assert corpus.chars == sorted(set(corpus.text)) and corpus.vocab_size == len(corpus.chars)
    ids = corpus.encode(corpus.text[:5000])
    assert ids.dtype == torch.int64 and corpus.decode(ids) == corpus.text[:5000]
    assert corpus.decode(ids.tolist()[:10]) == corpus.text[:10]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        corpus.encode("\u2603")
    with pytest.raises(ValueError, match="ids must be in"):
        corpus.decode([IGNORE])


def test_split_is_contiguous_and_windows_shift_by_one(corpus):
    train, held = corpus.split()
    assert corpus.decode(torch.cat([train, held])) == corpus.text
    assert abs(len(held) / len(corpus.text) - 0.1) < 1e-4
    x, y = corpus.windows(held, 64)
    assert x.shape == y.shape == ((len(held) - 1) // 64, 64)
    n = x.numel()
    assert torch.equal(x.flatten(), held[:n]) and torch.equal(y.flatten(), held[1:n + 1])
    x, y = corpus.windows(train, 64, count=100, seed=1)
    assert x.shape == (100, 64) and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, corpus.windows(train, 64, count=100, seed=1)[0])
    assert not torch.equal(x, corpus.windows(train, 64, count=100, seed=2)[0])
    with pytest.raises(ValueError, match="fewer than length \\+ 1 = 65"):
        corpus.windows(held[:64], 64)


def test_bad_text_files_are_refused_in_one_line(tmp_path):
    def refused(error, path, match, **kw):
        with pytest.raises(error, match=match) as info:
            load_text(path, **kw)
        assert "\n" not in str(info.value)
    refused(FileNotFoundError, tmp_path / "missing.txt", "no file .*missing.txt")
    refused(IsADirectoryError, tmp_path, "--text needs a file, got the folder")
    (tmp_path / "empty.txt").write_bytes(b"")
    refused(ValueError, tmp_path / "empty.txt", "is empty")
    (tmp_path / "latin.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    refused(ValueError, tmp_path / "latin.txt", r"is not UTF-8 text \(byte 3: 0xe9\)")
    (tmp_path / "short.txt").write_text("hello", encoding="utf-8")
    refused(ValueError, tmp_path / "short.txt",
            r"the text has 5 characters, fewer than the context of 8 \+ 1", min_length=9)
    # relative paths are shown as given, not resolved
    with pytest.raises(FileNotFoundError) as info:
        load_text("no/such.txt")
    assert str(tmp_path) not in str(info.value) and "no/such.txt" in str(info.value)


def test_a_utf8_file_loads(tmp_path):
    (tmp_path / "t.txt").write_bytes("\ufeffh\u00e9llo world".encode("utf-8"))
    c = load_text(tmp_path / "t.txt", min_length=11)
    assert c.text == "h\u00e9llo world" and c.name == "t.txt" and c.vocab_size == 8
    assert isinstance(c, TextCorpus)


# ----------------------------------------------------------------------------- loader

def test_loader_covers_every_example_once_in_an_order_of_seed_and_epoch():
    x = torch.arange(50).repeat(3, 1).T                   # (50, 3), row i is i
    y = torch.arange(50)

    def epoch(seed, e):
        loader = SequenceLoader(x, y, 8, shuffle=True, seed=seed)
        loader.set_epoch(e)
        batches = list(loader)
        assert len(batches) == len(loader) == 7
        assert all(torch.equal(bx[:, 0], by) for bx, by in batches)
        return torch.cat([by for _, by in batches])

    order = epoch(0, 0)
    assert sorted(order.tolist()) == list(range(50))
    assert torch.equal(order, epoch(0, 0))
    assert not torch.equal(order, epoch(0, 1)) and not torch.equal(order, epoch(1, 0))
    plain = torch.cat([by for _, by in SequenceLoader(x, y, 8)])
    assert torch.equal(plain, y)
    with pytest.raises(ValueError, match="as many examples"):
        SequenceLoader(x, y[:-1], 8)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        SequenceLoader(x, y, 0)
