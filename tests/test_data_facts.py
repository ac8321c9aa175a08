"""The generated facts corpus: determinism, splits, tokenizer, arrays and masks, clear errors."""

import numpy as np
import pytest

from jaxunlearn.data import facts


@pytest.fixture(scope="module")
def corpus():
    return facts.make_facts(100, seed=0)


def test_deterministic_and_seeded(corpus):
    again = facts.make_facts(100, seed=0)
    assert again.texts == corpus.texts and again.names == corpus.names
    assert facts.make_facts(100, seed=1).texts != corpus.texts
    assert len(set(corpus.names)) == 100  # distinct people
    assert sum(p.heldout for p in corpus.people) == 10


def test_paraphrases_and_questions(corpus):
    p = corpus.people[0]
    mine = [t for t, pid in zip(corpus.texts, corpus.person) if pid == 0]
    assert len(mine) == 4 * (3 + 1)
    year = str(p.facts["birth_year"])
    year_texts = [t for t in mine if year in t]
    assert len(year_texts) == 4 and sum(t.startswith("question :") for t in year_texts) == 1
    assert all(p.name in t for t in mine)


def test_tokenizer_round_trip(corpus):
    tok = corpus.tokenizer
    for text in corpus.texts[:50]:
        ids = tok.encode(text)
        assert ids[0] == facts.BOS and ids[-1] == facts.EOS
        assert tok.decode(ids) == text
    assert tok.decode([tok.index["chess"], facts.PAD]) == "chess"
    assert tok.encode("zzz-unknown", bos=False, eos=False) == [facts.UNK]


def test_arrays_and_masks(corpus):
    a = corpus.arrays(context=20)
    n = len(corpus)
    assert a["x"].shape == a["y"].shape == a["mask"].shape == (n, 20)
    np.testing.assert_array_equal(a["x"][:, 1:][a["x"][:, 1:] > 0], a["y"][:, :-1][a["x"][:, 1:] > 0])  # shifted
    tok = corpus.tokenizer
    for i in range(8):
        ys = a["y"][i][a["emask"][i] > 0].tolist()
        value = str(corpus.people[corpus.person[i]].facts[facts.ATTRIBUTES[corpus.attr[i]]])
        assert tok.vocab[ys[0]] == value and ys[-1] == facts.EOS
        if corpus.kind[i] == 1:  # a question scores only its answer and <eos>
            np.testing.assert_array_equal(a["mask"][i], a["emask"][i])
            assert a["mask"][i].sum() == 2
        else:  # a sentence scores every token
            assert a["mask"][i].sum() == (a["y"][i] > 0).sum()


def test_splits(corpus):
    n_train = 90
    for frac, want in ((0.01, 1), (0.05, 5), (0.1, 9)):
        s = corpus.split(frac, seed=0)
        assert len(s.forget_people) == want and len(s.retain_people) == n_train - want
        assert len(s.forget_idx) == 16 * want and not set(s.forget_idx) & set(s.retain_idx)
        assert not set(s.heldout_idx) & (set(s.forget_idx) | set(s.retain_idx))
    assert corpus.split(0.05, seed=0).forget_people == corpus.split(0.05, seed=0).forget_people
    assert corpus.split(0.05, seed=0).forget_people != corpus.split(0.05, seed=1).forget_people
    assert corpus.split([corpus.names[3], 7]).forget_people == [3, 7]


def test_errors(corpus):
    with pytest.raises(ValueError, match="unknown people: \\['Nobody Here'\\]"):
        corpus.split(["Nobody Here"])
    with pytest.raises(ValueError, match="unknown people"):  # held-out people are not training people
        corpus.split([corpus.names[-1]])
    with pytest.raises(ValueError, match="retain split is empty"):
        corpus.split(1.0)
    with pytest.raises(ValueError, match="longer than the context of 5"):
        corpus.arrays(context=5)
    with pytest.raises(ValueError, match="forget fraction"):
        corpus.split(0.0)
    with pytest.raises(ValueError, match="templates"):
        facts.make_facts(10, templates=9)
