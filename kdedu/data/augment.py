"""Heuristic text augmentation for distillation: TinyBERT's word replacement and noise injection.

Both functions are **pure and seeded**: the same sentences, arguments and ``seed`` always give the same output, and
each sentence's augmentation depends only on that sentence and the seed (not on the other sentences of the list), so
augmenting a list in pieces gives the same result as augmenting it whole. Both return new strings; they split and
join on single spaces (the synthetic corpus' words; real text keeps its punctuation attached to the words).

**Word replacement** (TinyBERT, Jiao et al. 2020, Algorithm 1). For every word ``w`` of a sentence:

* if ``w`` is a single word piece, mask it and take the ``k`` most likely words of a **masked LM** at that position
  (``mlm=``: any masked LM whose logits :mod:`kdedu.outputs` can read: a tensor (B, L, V), a Hugging Face
  ``ModelOutput``, or ``kdedu.zoo.masked_lm``);
* otherwise (a word of several pieces, or no masked LM given) take the ``k`` words whose **embeddings** are closest
  (cosine). TinyBERT uses GloVe vectors there; GloVe is not available offline, so we use the input word-piece
  embeddings of MiniLM (a word's vector is the mean of its pieces' vectors), the table of the book's teacher;
* then replace ``w`` with probability ``p`` by one of its candidates, drawn uniformly (TinyBERT: ``p = 0.4``,
  ``k = 15``, ``n_aug = 20`` copies per sentence).

Candidates are whole words of the tokenizer's vocabulary (``[a-z]{2,}``, no ``##`` piece), plus the lexicon's words.

**Noise injection** (seed deck 003, "add_noise"): each word is replaced by a noise token with probability ``p``.

**Label semantics** (``keep_labels=True``, the default). The grammar of :mod:`kdedu.data.text` says which words carry
a sentence's sentiment: the adjectives (a polarity each), the intensifiers (a positive factor), and the operators
``not``, ``but``, ``and``. With ``keep_labels``:

* the operators, and other English words that negate or join clauses (:data:`FUNCTION_WORDS`), are never replaced;
* an adjective is replaced only by a lexicon adjective of the **same sign**, an intensifier only by an intensifier;
* any other word (subject, verb, article) is replaced only by a word that is none of the above, so it cannot add
  sentiment or structure that the grammar would read;
* if the new sentence is in the grammar and its score (:func:`kdedu.data.text.sentence_score`) has another sign than
  the original's (two clauses can trade places in strength), its adjective and intensifier replacements are undone;
* noise injection never touches the sentiment words or the operators, so a grammar sentence keeps its exact score.

``keep_labels=False`` replaces any word, as TinyBERT and the deck do.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from kdedu.data.text import ADJECTIVES, INTENSIFIERS, sentence_score

__all__ = ["replace_words", "inject_noise", "word_candidates", "word_vectors", "word_class", "OPERATORS",
           "FUNCTION_WORDS"]

OPERATORS = frozenset({"not", "but", "and"})
"""The grammar's operators: negation, contrast, mixture."""
FUNCTION_WORDS = OPERATORS | frozenset({"no", "never", "nor", "none", "nothing", "neither", "without", "however",
                                        "although", "though", "yet", "or", "whereas", "while"})
"""Words that negate or join clauses: with ``keep_labels`` never replaced and never proposed."""
SENTIMENT_CLASSES = ("adjective+", "adjective-", "intensifier")
_WORD = re.compile(r"[a-z]{2,}")  # a candidate: a whole lower-case word (no '##' piece, no symbol, no number)


def word_class(word: str) -> str:
    """``"operator"`` (one of :data:`FUNCTION_WORDS`), ``"adjective+"``/``"adjective-"`` (a lexicon adjective and its
    sign), ``"intensifier"`` or ``"other"``."""
    if word in FUNCTION_WORDS:
        return "operator"
    if word in ADJECTIVES:
        return "adjective+" if ADJECTIVES[word] > 0 else "adjective-"
    return "intensifier" if word in INTENSIFIERS else "other"


def _check_sentences(sentences) -> list[str]:
    if isinstance(sentences, str) or not isinstance(sentences, Sequence) or \
            not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a list of strings (e.g. kdedu.data.sentiment('train').sentences)")
    return list(sentences)


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def _check_positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def _rng(seed: int, sentence: str) -> np.random.Generator:
    """A generator fixed by the seed and the sentence alone (not by its position in the list)."""
    digest = int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


# --------------------------------------------------------------------------------------------
# noise injection
# --------------------------------------------------------------------------------------------
def inject_noise(sentences, p: float, seed: int = 0, noise_token: str = "[UNK]", keep_labels: bool = True) -> list[str]:
    """Replace each word by ``noise_token`` with probability ``p`` (seed deck 003's ``add_noise``).

    ``noise_token`` defaults to BERT's ``[UNK]``: one token id that means nothing (the deck's ``noise_word`` would be
    read by a WordPiece tokenizer as the real word "noise"). With ``keep_labels`` the grammar's sentiment words and
    operators are never replaced (module docstring). Pure and seeded; one noisy copy per sentence.
    """
    sentences, p, seed = _check_sentences(sentences), _check_p(p), _check_seed(seed)
    if not isinstance(noise_token, str) or not noise_token or " " in noise_token:
        raise ValueError(f"noise_token must be one non-empty word without spaces, got {noise_token!r}")
    out = []
    for s in sentences:
        words = s.split(" ")
        u = _rng(seed, s).random(len(words))             # one draw per word, replaced or not
        out.append(" ".join(noise_token if u[i] < p and not (keep_labels and word_class(w.lower()) != "other")
                            else w for i, w in enumerate(words)))
    return out


# --------------------------------------------------------------------------------------------
# word replacement: the candidates
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _minilm_tables():
    """MiniLM's tokenizer and its input word-piece embedding table (30,522 x 384), loaded once."""
    from kdedu.models import load_minilm

    model, tokenizer = load_minilm()
    return tokenizer, model.embeddings.word_embeddings.weight.detach().clone()


def _pieces(tokenizer, word: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))


def word_vectors(words: Sequence[str], tokenizer, embeddings: torch.Tensor) -> torch.Tensor:
    """(N, H): each word's vector, the mean of its word pieces' rows of ``embeddings`` (V, H)."""
    rows = []
    for w in words:
        ids = _pieces(tokenizer, w)
        if not ids:
            raise ValueError(f"the tokenizer turns {w!r} into no word piece")
        rows.append(embeddings[ids].float().mean(0))
    return torch.stack(rows)


@functools.lru_cache(maxsize=8)
def _vocabulary(tokenizer) -> tuple[list[str], torch.Tensor, dict]:
    """The tokenizer's whole words (in id order), their ids, and per word class the pool it may be replaced from:
    ``(columns of that list, lexicon words of several pieces, which are not in it)``."""
    vocab = sorted((i, t) for t, i in tokenizer.get_vocab().items() if _WORD.fullmatch(t))
    words, ids = [t for _, t in vocab], torch.tensor([i for i, _ in vocab])
    column = {w: j for j, w in enumerate(words)}
    pools = {"any": (torch.arange(len(words)), []),
             "other": (torch.tensor([j for j, w in enumerate(words) if word_class(w) == "other"]), [])}
    for cls in SENTIMENT_CLASSES:
        members = [w for w in (*ADJECTIVES, *INTENSIFIERS) if word_class(w) == cls]
        pools[cls] = (torch.tensor([column[m] for m in members if m in column], dtype=torch.long),
                      [m for m in members if m not in column])
    return words, ids, pools


def _tables(mlm, tokenizer, embeddings):
    if tokenizer is None and mlm is not None:
        tokenizer = getattr(mlm, "tokenizer", None)
    if tokenizer is None or embeddings is None:
        t, e = _minilm_tables()
        tokenizer = t if tokenizer is None else tokenizer
        embeddings = e if embeddings is None else embeddings
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2:
        raise TypeError("embeddings must be a (vocab_size, H) tensor (a model's input word embeddings)")
    if embeddings.shape[0] < len(tokenizer):
        raise ValueError(f"embeddings has {embeddings.shape[0]} rows, fewer than the tokenizer's vocabulary "
                         f"({len(tokenizer)}): they must belong to the tokenizer's model")
    return tokenizer, embeddings


def _nearest(word: str, pool, k: int, tokenizer, embeddings, unit, words_v) -> list[str]:
    """The ``k`` words of ``pool`` nearest to ``word`` by cosine similarity of :func:`word_vectors`."""
    cols, extra = pool
    query = F.normalize(word_vectors([word], tokenizer, embeddings), dim=-1)[0]   # (H,)
    sims = unit[cols] @ query                                                     # (n,)
    if extra:
        sims = torch.cat([sims, F.normalize(word_vectors(extra, tokenizer, embeddings), dim=-1) @ query])
    out = []
    for j in torch.sort(-sims, stable=True).indices[:k + 1].tolist():            # ties keep token-id order
        name = words_v[int(cols[j])] if j < len(cols) else extra[j - len(cols)]
        if name != word.lower():                                                  # never the word itself
            out.append(name)
    return out[:k]


@torch.no_grad()
def _mlm_scores(mlm, tokenizer, masked: list[str], batch_size: int = 128) -> torch.Tensor:
    """(N, V): the masked LM's logits at the one ``[MASK]`` of each sentence."""
    from kdedu.outputs import run

    first = next(mlm.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = mlm.training
    mlm.eval()
    rows = []
    for i in range(0, len(masked), batch_size):
        enc = tokenizer(masked[i:i + batch_size], padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        logits = run(mlm, {"input_ids": ids, "attention_mask": mask}).require_logits("the masked LM")  # (B, L, V)
        if logits.dim() != 3 or logits.shape[:2] != ids.shape or logits.shape[-1] < len(tokenizer):
            raise ValueError(f"the masked LM must return (B, L, V) logits over the tokenizer's {len(tokenizer)} "
                             f"tokens, got {tuple(logits.shape)} for input {tuple(ids.shape)}")
        at = ids == tokenizer.mask_token_id                                           # (B, L), one True per row
        rows.append(logits[at].float().cpu())                                         # (B, V)
    mlm.train(was_training)
    return torch.cat(rows)


def _candidates(sentences, k, mlm, tokenizer, embeddings, keep_labels) -> list[list[list[str]]]:
    """Per sentence, per word: the candidate list of :func:`word_candidates`."""
    k = _check_positive("k", k)
    tokenizer, embeddings = _tables(mlm, tokenizer, embeddings)
    words_v, ids_v, pools = _vocabulary(tokenizer)
    unit = F.normalize(embeddings[ids_v].float(), dim=-1)                         # (W, H) whole-word vectors
    out = [[[] for _ in s.split(" ")] for s in sentences]
    nearest, by_mlm = {}, []                                                      # by_mlm: (sentence, word, pool)
    for si, s in enumerate(sentences):
        for wi, w in enumerate(s.split(" ")):
            cls = word_class(w.lower()) if keep_labels else "any"
            if cls == "operator":
                continue                                                          # never replaced
            if mlm is not None and len(_pieces(tokenizer, w)) == 1:
                by_mlm.append((si, wi, cls))
                continue
            if (w.lower(), cls) not in nearest:                                   # depends on the word alone
                nearest[w.lower(), cls] = _nearest(w, pools[cls], k, tokenizer, embeddings, unit, words_v)
            out[si][wi] = nearest[w.lower(), cls]
    if by_mlm:
        masked = []
        for si, wi, _ in by_mlm:
            words = sentences[si].split(" ")
            words[wi] = tokenizer.mask_token
            masked.append(" ".join(words))
        scores = _mlm_scores(mlm, tokenizer, masked)                              # (N, V)
        for (si, wi, cls), row in zip(by_mlm, scores, strict=True):
            word = sentences[si].split(" ")[wi].lower()
            cols = pools[cls][0]                                                  # single pieces only
            order = torch.sort(-row[ids_v[cols]], stable=True).indices[:k + 1]    # best first; ties: token id
            out[si][wi] = [w for w in (words_v[int(cols[j])] for j in order) if w != word][:k]
    return out


def word_candidates(sentence: str, k: int = 15, mlm=None, tokenizer=None, embeddings: torch.Tensor | None = None,
                    keep_labels: bool = True) -> list[list[str]]:
    """TinyBERT's candidates for every word of ``sentence``: one list per word, up to ``k`` words, best first.

    A single-piece word gets the masked LM's ``k`` most likely allowed words at its (masked) position when ``mlm`` is
    given; any other word gets the ``k`` allowed words nearest to it by cosine similarity of :func:`word_vectors`
    (ties: lower token id first). Which words are allowed: the module docstring. A word that may not be replaced
    gets ``[]``. The default ``tokenizer``/``embeddings`` are MiniLM's (``mlm.tokenizer`` if the MLM has one).
    """
    if not isinstance(sentence, str):
        raise TypeError(f"sentence must be a string, got {type(sentence).__name__}")
    return _candidates([sentence], k, mlm, tokenizer, embeddings, keep_labels)[0]


# --------------------------------------------------------------------------------------------
# word replacement
# --------------------------------------------------------------------------------------------
def _grammar_sign(sentence: str) -> int | None:
    try:
        score = sentence_score(sentence)
    except ValueError:
        return None  # not a sentence of the grammar: the grammar does not define its sentiment
    return 0 if score == 0 else int(math.copysign(1, score))


def replace_words(sentences, p: float = 0.4, seed: int = 0, n_aug: int = 1, k: int = 15, mlm=None, tokenizer=None,
                  embeddings: torch.Tensor | None = None, keep_labels: bool = True) -> list[str]:
    """TinyBERT's word replacement: ``n_aug`` augmented copies of every sentence (module docstring).

    Returns ``len(sentences) * n_aug`` strings, sentence-major: copies ``i * n_aug`` to ``(i + 1) * n_aug - 1`` belong
    to sentence ``i``. Each word is replaced with probability ``p`` by one of its :func:`word_candidates`, drawn
    uniformly; a word that is not replaced stays exactly as it was. A copy may equal its original.

    Args:
        p: the replacement probability per word (TinyBERT's threshold ``p_t = 0.4``).
        seed: fixes every draw; a sentence's draws depend only on the seed and the sentence.
        n_aug: copies per sentence (TinyBERT: 20).
        k: candidates per word (TinyBERT: 15).
        mlm: a masked LM over ``tokenizer``'s vocabulary (e.g. ``kdedu.zoo.masked_lm()``), or None for the embedding
            neighbours alone. Its ``.tokenizer`` is used when ``tokenizer`` is not given.
        tokenizer, embeddings: default MiniLM's tokenizer and input word-piece embeddings.
        keep_labels: keep the grammar's label semantics (module docstring).
    """
    sentences, p, seed = _check_sentences(sentences), _check_p(p), _check_seed(seed)
    n_aug = _check_positive("n_aug", n_aug)
    if mlm is not None and not isinstance(mlm, torch.nn.Module):
        raise TypeError(f"mlm must be a torch.nn.Module returning (B, L, V) logits, or None; got {type(mlm).__name__}")
    distinct = list(dict.fromkeys(sentences))
    table = dict(zip(distinct, _candidates(distinct, k, mlm, tokenizer, embeddings, keep_labels), strict=True))
    out = []
    for s in sentences:
        rng, words, cands = _rng(seed, s), s.split(" "), table[s]
        sign = _grammar_sign(s) if keep_labels else None
        for _ in range(n_aug):
            u, pick = rng.random(len(words)), rng.random(len(words))  # replaced or not; which candidate
            new = [c[int(pick[i] * len(c))] if c and u[i] < p else w
                   for i, (w, c) in enumerate(zip(words, cands, strict=True))]
            if sign is not None and _grammar_sign(" ".join(new)) not in (sign, None):
                new = [w if word_class(w.lower()) in SENTIMENT_CLASSES else n for w, n in zip(words, new, strict=True)]
            out.append(" ".join(new))
    return out
