"""Token selection for `lia run`: greedy, temperature and top-p (hand-derived numbers and transformers' warpers)."""

from __future__ import annotations

import math

import pytest
import torch

from lia_model.errors import LiaInputError
from runtime.generate import Sampler, Sampling, Stream, parse_ids, top_p_filter


def test_hand_derived_temperature_and_top_p():
    """p = (0.5, 0.3, 0.15, 0.05). T = 2 flattens it to sqrt(p) / sum sqrt(p) = (0.3790, 0.2936, 0.2076, 0.1199);
    top-p 0.7 keeps the tokens whose more probable mass is below 0.7 (0, 0.3790, 0.6726 -> three of them) and
    renormalises over 0.8801: (0.4306, 0.3336, 0.2358, 0)."""
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    roots = [math.sqrt(x) for x in (0.5, 0.3, 0.15, 0.05)]
    flat = [r / sum(roots) for r in roots]
    kept = sum(flat[:3])
    want = [flat[0] / kept, flat[1] / kept, flat[2] / kept, 0.0]
    got = Sampler(Sampling(temperature=2.0, top_p=0.7)).probabilities(logits)[0]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert want[:3] == pytest.approx([0.4306, 0.3336, 0.2358], abs=1e-4)
    # T = 1, top-p 0.7: 0.5 + 0.3 reaches it, so two tokens: (0.625, 0.375)
    got = Sampler(Sampling(temperature=1.0, top_p=0.7)).probabilities(logits)[0]
    assert got.tolist() == pytest.approx([0.625, 0.375, 0, 0], abs=1e-6)
    # a tiny top-p keeps the most probable token only
    assert top_p_filter(torch.tensor([[0.2, 0.5, 0.3]]), 0.01).tolist() == [[0.0, 1.0, 0.0]]


def test_top_p_keeps_the_same_tokens_as_transformers():
    transformers = pytest.importorskip("transformers")
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 50, generator=gen) * 3
    for top_p in (0.3, 0.8, 0.95):
        theirs = transformers.TopPLogitsWarper(top_p)(torch.zeros(64, 1, dtype=torch.long), logits.clone())
        ours = top_p_filter(torch.softmax(logits, -1), top_p)
        assert torch.equal(ours > 0, torch.isfinite(theirs)), top_p
        assert torch.allclose(ours, torch.softmax(theirs, -1), atol=1e-6)


def test_samples_follow_the_distribution_and_the_seed():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(20000, 1)
    sampler = Sampler(Sampling(temperature=1.0, top_p=0.9, seed=7))
    ids = sampler(0, logits)
    freq = torch.bincount(ids, minlength=4).float() / len(ids)
    want = torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95
    # 20000 draws: standard error <= 0.0036; 5 of them
    assert torch.allclose(freq, want, atol=0.018), freq
    assert freq[3] == 0
    again = Sampler(Sampling(temperature=1.0, top_p=0.9, seed=7))(0, logits)
    other = Sampler(Sampling(temperature=1.0, top_p=0.9, seed=8))(0, logits)
    assert torch.equal(ids, again) and not torch.equal(ids, other)


def test_greedy_is_argmax():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(1))
    assert torch.equal(Sampler(Sampling())(0, logits), logits.argmax(-1))


def test_bad_sampling_settings():
    with pytest.raises(LiaInputError, match="--temperature"):
        Sampling(temperature=-1)
    with pytest.raises(LiaInputError, match="--top-p"):
        Sampling(temperature=1, top_p=0)


def test_token_ids_parsing():
    assert parse_ids("1, 2 3", 10, "prompt 1") == [1, 2, 3]
    with pytest.raises(LiaInputError, match="prompt 1: token id 10 is outside the vocabulary"):
        parse_ids("1 10", 10, "prompt 1")
    with pytest.raises(LiaInputError, match="empty"):
        parse_ids(" ", 10, "prompt 1")


class _Bytes:
    """A codec whose tokens are bytes: a multi-byte character is incomplete until its last byte."""

    name = "bytes"

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_stream_holds_back_incomplete_characters():
    import io

    out = io.StringIO()
    stream = Stream(_Bytes(), out)
    for b in "a\u00e9b".encode():
        stream.push(b)
        assert "\ufffd" not in out.getvalue()
    stream.close()
    assert out.getvalue() == "a\u00e9b\n"
    ids = io.StringIO()
    s = Stream(None, ids)
    for t in (5, 6):
        s.push(t)
    s.close()
    assert ids.getvalue() == "5 6\n"
