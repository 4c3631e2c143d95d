"""Greedy search, beam search and sampling, checked against brute-force enumeration on tiny vocabularies."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from kdedu.models import GPT, Seq2Seq, beam_search, greedy, sample, translate

PAD, BOS, EOS = 0, 1, 2
V = 5  # PAD, BOS, EOS and two words (3, 4)


def make_step(seed: int, vocab: int = V, num_sources: int = 1):
    """A tiny 'model': next-token log-probs that depend on the source row and the whole prefix, from a fixed
    random table (any prefix hashes to its own logits), so search is not trivial."""
    g = torch.Generator().manual_seed(seed)
    table = {}

    def logits_of(row: int, prefix: tuple) -> torch.Tensor:
        key = (row, prefix)
        if key not in table:
            table[key] = torch.randn(vocab, generator=g) * 1.5
        return table[key]

    def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        z = torch.stack([logits_of(r, tuple(p)) for r, p in zip(rows.tolist(), prefixes.tolist(), strict=True)])
        return torch.log_softmax(z, -1)

    return step


def brute_force(step, row: int, max_length: int, length_penalty: float, words=(EOS, 3, 4)):
    """Every output (ends with EOS, or has max_length tokens), scored by sum of log-probs over the allowed
    tokens (PAD/BOS banned: renormalised as the decoder's -inf does)."""
    out = []
    for n in range(1, max_length + 1):
        for seq in itertools.product(words, repeat=n):
            if EOS in seq[:-1]:
                continue
            lp, prefix = 0.0, [BOS]
            for tok in seq:
                logp = step(torch.tensor([prefix]), torch.tensor([row]))[0].clone()
                logp[[PAD, BOS]] = -math.inf
                lp += float(logp[tok])   # the decoder does not renormalise after banning; neither do we
                prefix.append(tok)
            ended = seq[-1] == EOS
            if not ended and n < max_length:
                continue
            tokens = seq[:-1] if ended else seq
            out.append((tokens, lp, lp / n ** length_penalty))
    return sorted(out, key=lambda h: -h[2])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 0.6])
def test_beam_search_with_a_full_beam_equals_brute_force(length_penalty):
    max_length, sources = 4, 3
    step = make_step(0, num_sources=sources)
    beam = 3 ** max_length  # >= every prefix: nothing is ever pruned
    found = beam_search(step, sources, beam_size=beam, max_length=max_length, n_best=beam,
                        length_penalty=length_penalty)
    for row in range(sources):
        expected = brute_force(step, row, max_length, length_penalty)
        got = found[row]
        assert len(got) == len(expected)
        assert got[0].tokens == expected[0][0]                    # the argmax
        assert got[0].score == pytest.approx(expected[0][2], abs=1e-5)
        assert sorted((h.tokens, round(h.logprob, 4)) for h in got) == sorted(
            (t, round(lp, 4)) for t, lp, _ in expected)         # the same set of outputs and log-probs


def test_beam_results_are_sorted_and_scores_are_normalised():
    step = make_step(1, num_sources=4)
    for lp in (0.0, 1.0):
        for hyps in beam_search(step, 4, beam_size=4, max_length=6, n_best=4, length_penalty=lp):
            scores = [h.score for h in hyps]
            assert scores == sorted(scores, reverse=True) and len(hyps) >= 1
            for h in hyps:
                n = len(h.tokens) + h.finished
                assert h.score == pytest.approx(h.logprob / n ** lp)


def test_greedy_equals_beam_of_one_and_sample_at_low_temperature():
    step = make_step(2, num_sources=5)
    g = greedy(step, 5, max_length=6)
    b = [hs[0].tokens for hs in beam_search(step, 5, beam_size=1, max_length=6)]
    assert [tuple(x) for x in g] == b
    cold, _ = sample(step, 5, temperature=1e-4, max_length=6, generator=torch.Generator().manual_seed(0))
    assert cold == g


def test_sampling_follows_the_model_distribution():
    """One step to EOS or a word: frequencies of the first token match p(first token) (tolerance: 5 sigma)."""
    step = make_step(3, num_sources=1)
    p = step(torch.tensor([[BOS]]), torch.tensor([0]))[0].exp()
    p[[PAD, BOS]] = 0
    p = p / p.sum()
    n = 4000

    def batch_step(prefixes, rows):                         # the same model for n identical sources
        return step(prefixes, torch.zeros_like(rows))

    out, logp = sample(batch_step, n, temperature=1.0, max_length=1, generator=torch.Generator().manual_seed(0))
    first = torch.tensor([seq[0] if seq else EOS for seq in out])
    for tok in (EOS, 3, 4):
        freq = (first == tok).float().mean().item()
        sigma = math.sqrt(p[tok] * (1 - p[tok]) / n)
        assert abs(freq - p[tok].item()) < 5 * sigma + 1e-9
    assert logp.shape == (n,)
    with pytest.raises(ValueError, match="temperature"):
        sample(batch_step, 2, temperature=0.0, max_length=2)


def test_batched_decoding_equals_one_source_at_a_time():
    torch.manual_seed(0)
    model = Seq2Seq(12, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32)
    src = torch.tensor([[5, 6, 7, EOS], [8, 9, EOS, PAD], [10, EOS, PAD, PAD]])
    batched = beam_search(model, src, beam_size=3, max_length=5, n_best=2)
    greedy_all = greedy(model, src, max_length=5)
    for i in range(3):
        one = src[i:i + 1, :int((src[i] != PAD).sum())]
        single = beam_search(model, one, beam_size=3, max_length=5, n_best=2)[0]
        assert [h.tokens for h in single] == [h.tokens for h in batched[i]]
        assert [h.score for h in single] == pytest.approx([h.score for h in batched[i]], abs=1e-5)
        assert greedy(model, one, max_length=5)[0] == greedy_all[i]


def test_gpt_decoding_reads_the_prompt():
    """The GPT step function on right-padded prompts gives the same log-probs as the model on the unpadded
    sequence prompt + prefix."""
    torch.manual_seed(0)
    gpt = GPT(12, d_model=16, num_heads=2, num_layers=1, dim_feedforward=32).eval()
    prompts = torch.tensor([[5, 6, 7], [8, PAD, PAD]])
    step = gpt.prefix_scorer(prompts)
    prefixes = torch.tensor([[BOS, 9], [BOS, 10]])
    got = step(prefixes, torch.tensor([0, 1]))
    for i, seq in enumerate(([5, 6, 7, BOS, 9], [8, BOS, 10])):
        with torch.no_grad():
            want = torch.log_softmax(gpt(torch.tensor([seq]))[0, -1], -1)
        assert torch.allclose(got[i], want, atol=1e-5)
    assert len(beam_search(gpt, prompts, beam_size=2, max_length=4)) == 2


def test_bad_arguments_are_named():
    step = make_step(0)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(step, 1, beam_size=2, n_best=3, max_length=3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(step, 1, beam_size=0, max_length=3)
    with pytest.raises(ValueError, match="max_length"):
        greedy(step, 1)
    with pytest.raises(TypeError, match="number of sources"):
        greedy(step, torch.zeros(1, 2, dtype=torch.long), max_length=2)
    with pytest.raises(TypeError, match="list of strings"):
        translate(Seq2Seq(8, d_model=8, num_heads=2), "a string", None)


def test_hugging_face_encoder_decoder_decodes_through_the_same_protocol():
    """A tiny random Marian model stands in for a real `full`-profile teacher: the step function gives the
    model's own teacher-forced log-probs, and greedy search equals a beam of one."""
    transformers = pytest.importorskip("transformers")
    from kdedu.models.decoding import HFSeq2Seq

    config = transformers.MarianConfig(vocab_size=20, d_model=16, encoder_layers=1, decoder_layers=1,
                                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                       decoder_ffn_dim=32, max_position_embeddings=32, pad_token_id=0, eos_token_id=2,
                                       decoder_start_token_id=0)
    torch.manual_seed(0)
    marian = transformers.MarianMTModel(config).eval()
    wrapped = HFSeq2Seq(marian)
    src = torch.tensor([[5, 6, 7, 2], [8, 9, 2, 0]])
    mask = (src != 0).long()
    dec = torch.tensor([[0, 11, 12], [0, 13, 14]])
    with torch.no_grad():
        full = torch.log_softmax(marian(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits, -1)
        step = wrapped.prefix_scorer(src, mask)
        for t in range(1, 4):
            assert torch.allclose(step(dec[:, :t], torch.tensor([0, 1])), full[:, t - 1], atol=1e-5)
    ids = wrapped.ids()
    g = greedy(wrapped, src, mask, max_length=6, **ids)
    b = beam_search(wrapped, src, mask, beam_size=1, max_length=6, **ids)
    assert [tuple(x) for x in g] == [h[0].tokens for h in b]
    with pytest.raises(TypeError, match="encoder-decoder"):
        HFSeq2Seq(torch.nn.Linear(2, 2))
