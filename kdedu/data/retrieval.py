"""Retrieval augmentation: an unlabelled pool of sentences, sentence embeddings, and nearest neighbours.

kNN augmentation (Du et al. 2021, "Self-training improves pre-training for natural language understanding",
SentAugment) embeds every sentence of a large unlabelled pool once, and gives each training sentence its ``K``
nearest pool sentences as extra (teacher-labelled) data. Minimax-kNN (Kamalloo et al. 2021) keeps only the few of
those neighbours on which teacher and student disagree most (:mod:`kdedu.methods.minimax_knn`).

* :func:`sentiment_pool` generates the pool from the grammar of :mod:`kdedu.data.text`: distinct sentences that are
  in none of the corpus' splits, a share of them **off-topic** (from a second grammar of the same shape about other
  things: "the train was not very late"), as a web crawl is mostly about something else than the task.
* :func:`embed` is the sentence encoder: MiniLM-L6 (``all-MiniLM-L6-v2``, the package's own
  :func:`kdedu.models.load_minilm`) with **mean pooling** over the real tokens and L2 normalisation, exactly how that
  model was trained to embed sentences. The default model's embeddings are cached under ``$KDEDU_CACHE/embeddings``
  (atomic writes), keyed by the sentences.
* :func:`knn` finds the ``k`` most similar keys of each query by cosine similarity (exact, brute force).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random

import torch
import torch.nn.functional as F

from kdedu.data.text import SHARPNESS, TextSplit, _sentence, sentiment

__all__ = ["sentiment_pool", "embed", "knn", "OFF_TOPIC_SUBJECTS", "OFF_TOPIC_ADJECTIVES"]

OFF_TOPIC_SUBJECTS = ("the weather", "the train", "the kitchen", "the meeting", "the road", "the coffee",
                      "the office", "the garden", "the bus", "the hotel room", "the printer", "the lecture")
OFF_TOPIC_VERBS = ("is", "was", "felt", "seemed", "looked")
OFF_TOPIC_ADJECTIVES = ("cold", "late", "wet", "crowded", "quiet", "loud", "long", "empty", "warm", "small", "busy",
                        "dark", "early", "narrow", "heavy", "old")
OFF_TOPIC_INTENSIFIERS = ("very", "extremely", "really", "somewhat", "slightly", "rather")
EMBEDDING_MODEL = "all-MiniLM-L6-v2 (kdedu.models.load_minilm), mean pooling, L2-normalised"


# --------------------------------------------------------------------------------------------
# the pool
# --------------------------------------------------------------------------------------------
def _off_topic_clause(rng: random.Random) -> str:
    words = [rng.choice(OFF_TOPIC_SUBJECTS), rng.choice(OFF_TOPIC_VERBS)]
    if rng.random() < 0.3:
        words.append("not")
    if rng.random() < 0.3:
        words.append(rng.choice(OFF_TOPIC_INTENSIFIERS))
    return " ".join(words + [rng.choice(OFF_TOPIC_ADJECTIVES)])


def _off_topic_sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        return _off_topic_clause(rng)
    return f"{_off_topic_clause(rng)} {'but' if kind < 0.8 else 'and'} {_off_topic_clause(rng)}"


def sentiment_pool(n: int, seed: int = 1, out_of_distribution: float = 0.5, corpus_seed: int = 0) -> TextSplit:
    """An unlabelled pool of ``n`` distinct sentences for retrieval augmentation, none of them in the corpus.

    A share ``out_of_distribution`` of them is **off-topic**: drawn from a second grammar of the same shape
    (``SUBJECT VERB [not] [INTENSIFIER] ADJECTIVE``, joined by "but"/"and") with other subjects ("the train", "the
    weather") and adjectives that are not in the sentiment lexicon ("late", "cold"). The rest are drawn from the
    sentiment grammar itself, like the corpus, but are in none of its splits (``kdedu.data.sentiment(...,
    seed=corpus_seed)``), so retrieval never finds a test sentence.

    Returns a :class:`~kdedu.data.text.TextSplit` in a seeded random order. Sentiment sentences carry their grammar
    ``scores``, true ``probs`` and sampled labels ``y``, for analysis only (augmentation uses the sentences alone);
    off-topic ones have ``constructions == "off-topic"``, NaN score and probability, and ``y = -100`` (no label).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(out_of_distribution, bool) or not isinstance(out_of_distribution, (int, float)) \
            or not 0 <= out_of_distribution <= 1:
        raise ValueError(f"out_of_distribution must be a share in [0, 1], got {out_of_distribution!r}")
    for name, v in (("seed", seed), ("corpus_seed", corpus_seed)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    rng = random.Random(f"kdedu-pool-{seed}")
    taken = {s for split in ("train", "val", "test") for s in sentiment(split, seed=corpus_seed).sentences}
    n_off = round(n * out_of_distribution)
    items: dict[str, tuple[float, str]] = {}
    tries = 0
    while len(items) < n - n_off:  # sentiment sentences outside the corpus
        text, score, kind = _sentence(rng)
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"cannot draw {n - n_off} distinct new sentences from the grammar; ask for fewer")
        if text not in taken:
            items.setdefault(text, (score, kind))
    off: set[str] = set()
    while len(off) < n_off:
        off.add(_off_topic_sentence(rng))
        tries += 1
        if tries > 200 * n:
            raise ValueError(f"cannot draw {n_off} distinct off-topic sentences; ask for fewer")
    rows = [(t, s, k) for t, (s, k) in items.items()] + [(t, math.nan, "off-topic") for t in sorted(off)]
    rng.shuffle(rows)
    probs = [1.0 / (1.0 + math.exp(-SHARPNESS * s)) if not math.isnan(s) else math.nan for _, s, _ in rows]
    labels = [int(rng.random() < p) if not math.isnan(p) else -100 for p in probs]
    return TextSplit(sentences=[t for t, _, _ in rows], y=torch.tensor(labels, dtype=torch.int64),
                     scores=torch.tensor([s for _, s, _ in rows], dtype=torch.float32),
                     probs=torch.tensor(probs, dtype=torch.float32), constructions=[k for _, _, k in rows])


# --------------------------------------------------------------------------------------------
# sentence embeddings
# --------------------------------------------------------------------------------------------
def _cache_path(sentences: list[str]) -> str:
    from kdedu._io import cache_dir

    blob = json.dumps({"model": EMBEDDING_MODEL, "sentences": sentences}).encode()
    return os.fspath(cache_dir() / "embeddings" / f"minilm-mean-{hashlib.sha256(blob).hexdigest()[:20]}.pt")


@torch.no_grad()
def embed(sentences, model=None, tokenizer=None, batch_size: int = 128, max_length: int = 64, cache: bool = True,
          progress: bool | None = None) -> torch.Tensor:
    """(N, H) sentence embeddings: the mean of the encoder's last hidden states over the real tokens, L2-normalised.

    ``model``/``tokenizer`` default to MiniLM-L6 (``all-MiniLM-L6-v2``, :func:`kdedu.models.load_minilm`), which was
    trained to embed sentences this way; any ``transformers`` encoder works. Sentences are batched by length (the
    result is in the input order and does not depend on the batching). With the default model and ``cache=True`` the
    result is stored under ``$KDEDU_CACHE/embeddings`` (atomic write), keyed by the list of sentences, and read back
    the next time. ``progress`` shows a ``tqdm`` bar (default: on unless ``$KDEDU_PROGRESS=0``).
    """
    if isinstance(sentences, TextSplit):
        sentences = sentences.sentences
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences) or len(sentences) == 0:
        raise TypeError("sentences must be a non-empty list of strings (or a TextSplit)")
    if (model is None) != (tokenizer is None):
        raise ValueError("give both model and tokenizer, or neither (then MiniLM is used)")
    sentences = list(sentences)
    path = _cache_path(sentences) if cache and model is None else None
    if path is not None and os.path.exists(path):
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.shape[0] == len(sentences):
                return stored
        except Exception:  # corrupt file: recompute and overwrite
            pass
    if model is None:
        from kdedu.models import load_minilm

        model, tokenizer = load_minilm(attn_implementation="sdpa")  # no attention maps needed: the faster kernel
    device = next(model.parameters()).device
    lengths = torch.tensor([len(tokenizer.tokenize(s)) for s in sentences])
    order = torch.argsort(lengths, descending=True, stable=True)    # similar lengths together: little padding
    if progress is None:
        progress = os.environ.get("KDEDU_PROGRESS", "1") != "0"
    starts = range(0, len(sentences), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="embedding sentences", leave=False)
    out = torch.empty(len(sentences), model.config.hidden_size)
    was_training = model.training
    model.eval()
    for i in starts:
        idx = order[i:i + batch_size]
        enc = tokenizer([sentences[j] for j in idx], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        h = model(**enc).last_hidden_state                                  # (B, L, H)
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)                 # (B, L, 1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)                  # (B, H): mean over real tokens
        out[idx] = F.normalize(pooled.float(), dim=-1).cpu()
    model.train(was_training)
    if path is not None:
        from kdedu._io import atomic_write

        buf = io.BytesIO()
        torch.save(out, buf)
        atomic_write(path, buf.getvalue())
    return out


def knn(queries: torch.Tensor, keys: torch.Tensor, k: int, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest keys of every query by cosine similarity: ``(indices (Nq, k), similarities (Nq, k))``.

    Exact brute force, most similar first; equal similarities keep the lower key index first. ``queries`` (Nq, H)
    and ``keys`` (Nk, H) need not be normalised.
    """
    for name, t in (("queries", queries), ("keys", keys)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise TypeError(f"{name} must be a 2-D floating-point tensor (N, H)")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries have width {queries.shape[1]} and keys {keys.shape[1]}: they must match")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k must be an integer in [1, {keys.shape[0]}] (the number of keys), got {k!r}")
    q, kk = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    idx, sim = [], []
    for i in range(0, q.shape[0], batch_size):
        s = q[i:i + batch_size] @ kk.T                                    # (b, Nk) cosine similarities
        values, order = torch.sort(s, dim=1, descending=True, stable=True)
        idx.append(order[:, :k])
        sim.append(values[:, :k])
    return torch.cat(idx), torch.cat(sim)
