"""Word vocabularies and batches for sequence models, and a real translation pair online (`full` profile).

Batches are Hugging Face-style dicts, so :func:`kdedu.train.fit` and the methods read them as they read any
other (``labels`` equal to ``-100`` are ignored):

* encoder–decoder (``causal_lm=False``)::

      input_ids               (B, S)  source words + EOS, right-padded with PAD
      attention_mask          (B, S)  1 on the source tokens
      decoder_input_ids       (B, T)  BOS + target words (teacher forcing), PAD after
      decoder_attention_mask  (B, T)  1 on those
      labels                  (B, T)  target words + EOS, -100 after: position t predicts labels[t]

* decoder-only (``causal_lm=True``, a GPT): one sequence ``source + BOS + target + EOS``::

      input_ids, attention_mask (B, L);  labels (B, L) = input_ids with the source and the padding set to -100

  so with ``kdedu.methods.KD(causal_lm=True)`` position ``i`` predicts token ``i + 1``, scored on the target only.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
from torch.utils.data import DataLoader

from kdedu.data.text import _check_split_limit, _hub_reachable, _local_rows, batch_loader
from kdedu.data.translation import DOMAINS, LANGUAGES, TranslationSplit, _as_tuple

__all__ = ["SeqVocab", "translation_vocab", "translation_loader", "translation_pairs", "PAD", "BOS", "EOS", "UNK"]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
IGNORE_INDEX = -100


class SeqVocab:
    """A word-level vocabulary: ids 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>``, 3 ``<unk>``, then the words."""

    specials = ("<pad>", "<bos>", "<eos>", "<unk>")
    pad_id, bos_id, eos_id, unk_id = PAD, BOS, EOS, UNK

    def __init__(self, words):
        self.itos = list(self.specials)
        for w in words:
            if w not in self.itos:
                self.itos.append(w)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, SeqVocab) and other.itos == self.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

    def encode(self, sentence: str) -> list:
        """Word ids of ``sentence`` (no BOS/EOS); unknown words become ``<unk>``."""
        if not isinstance(sentence, str):
            raise TypeError(f"sentence must be a string, got {type(sentence).__name__}")
        return [self.stoi.get(w, UNK) for w in sentence.split()]

    def decode(self, ids) -> str:
        """The words of ``ids`` (a list or 1-D tensor), up to the first EOS, without PAD/BOS."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        words = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                words.append(self.itos[i])
        return " ".join(words)

    @classmethod
    def from_sentences(cls, sentences, max_size: int | None = None) -> SeqVocab:
        """A vocabulary of the most frequent words of ``sentences`` (for real data)."""
        counts = Counter(w for s in sentences for w in s.split())
        return cls(sorted(counts, key=lambda w: (-counts[w], w))[:max_size])


def translation_vocab(target="fr", tag: bool = False, domain=("animals", "office")) -> SeqVocab:
    """The vocabulary of every word the grammar can produce for these target languages and domains: the
    English sources, then each language's words, then the ``<2xx>`` tags if ``tag``. Deterministic, so a
    teacher and its students always agree on the ids (en->fr, animals: 75 ids with the 4 specials)."""
    languages = _as_tuple("target", target, LANGUAGES)
    domains = _as_tuple("domain", domain, DOMAINS)
    from kdedu.data.translation import ADVERBS, DETERMINERS

    sources = list(DETERMINERS) + list(ADVERBS)
    for d in domains:
        for key in ("agents", "things", "adjectives", "transitive", "intransitive"):
            sources += [w for w in DOMAINS[d][key] if w not in sources]
    words = list(sources)
    for lang in languages:
        L = LANGUAGES[lang]
        words += [w for src in sources for a, _ in L.lexicon[src] for w in a.split()] + [L.particle[0]]
    if tag:
        words += [f"<2{lang}>" for lang in languages]
    return SeqVocab(words)


def _pad(rows: list, value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.int64)


class _Collate:
    def __init__(self, split: TranslationSplit, vocab: SeqVocab, causal_lm: bool):
        self.split, self.vocab, self.causal_lm = split, vocab, causal_lm

    def __call__(self, idx: list) -> dict:
        src = [self.vocab.encode(self.split.sources[i]) for i in idx]
        tgt = [self.vocab.encode(self.split.targets[i]) for i in idx]
        if self.causal_lm:
            seqs = [s + [BOS] + t + [EOS] for s, t in zip(src, tgt, strict=True)]
            labels = [[IGNORE_INDEX] * (len(s) + 1) + t + [EOS] for s, t in zip(src, tgt, strict=True)]
            ids = _pad(seqs, PAD)
            return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "labels": _pad(labels, IGNORE_INDEX)}
        input_ids = _pad([s + [EOS] for s in src], PAD)
        decoder_input_ids = _pad([[BOS] + t for t in tgt], PAD)
        return {"input_ids": input_ids, "attention_mask": (input_ids != PAD).long(),
                "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": (decoder_input_ids != PAD).long(),
                "labels": _pad([t + [EOS] for t in tgt], IGNORE_INDEX)}


class _Indices(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def translation_loader(split: TranslationSplit, vocab: SeqVocab, batch_size: int = 64, shuffle: bool = False,
                       seed: int | None = 0, causal_lm: bool = False, group_by_length: bool = False) -> DataLoader:
    """Dict batches of ``split`` for :func:`kdedu.train.fit` (the keys are in the module docstring).

    ``shuffle`` is seeded by ``seed`` (``None``: torch's global RNG, which ``fit(seed=...)`` sets, so every
    training seed gets its own order). ``group_by_length`` batches sources of similar length together.
    """
    if not isinstance(split, TranslationSplit):
        raise TypeError(f"split must be a TranslationSplit (kdedu.data.translation(...)), got {type(split).__name__}")
    if not isinstance(vocab, SeqVocab):
        raise TypeError(f"vocab must be a SeqVocab (kdedu.data.translation_vocab(...)), got {type(vocab).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = torch.tensor([len(s.split()) for s in split.sources])
    return batch_loader(_Indices(len(split)), lengths, batch_size, shuffle, seed, group_by_length,
                        _Collate(split, vocab, bool(causal_lm)))


# --------------------------------------------------------------------------------------------
# a real language pair through Hugging Face `datasets`: the `full` profile
# --------------------------------------------------------------------------------------------
def translation_pairs(name: str = "wmt16", config: str = "ro-en", split: str = "train", source_lang: str = "en",
                      target_lang: str = "ro", data_files: str | os.PathLike | None = None, limit: int | None = None,
                      lowercase: bool = True, timeout_s: float = 5.0) -> TranslationSplit:
    """A real translation corpus as a :class:`TranslationSplit` (no grammar: no true distribution).

    Args:
        name, config: a ``datasets`` corpus with a ``translation`` column of ``{lang: sentence}`` dicts,
            e.g. ``("wmt16", "ro-en")`` or ``("iwslt2017", "iwslt2017-de-en")``.
        split: ``"train"``, ``"validation"`` (or ``"val"``) or ``"test"``.
        source_lang, target_lang: the keys of the pair, e.g. ``"en"`` -> ``"ro"``.
        data_files: a local JSON Lines/JSON/parquet file with the same ``translation`` column (or ``source`` and
            ``target`` columns); then nothing is downloaded.
        limit: keep the first ``limit`` pairs. ``lowercase``: lower-case both sides (word vocabularies).

    Needs the ``datasets`` package; without a network it fails at once and says what to do.
    """
    split, limit = _check_split_limit(split, limit)
    try:
        import datasets
    except ImportError:
        raise ImportError("translation_pairs() needs the Hugging Face `datasets` package: `pip install datasets`. "
                          "Offline, use the grammar corpora of kdedu.data.translation().") from None
    if data_files is not None:
        ds = _local_rows(datasets, data_files, ("jsonl", "json", "parquet"))
    elif not _hub_reachable(timeout_s):
        raise RuntimeError(f"{name}/{config} cannot be downloaded: the Hugging Face hub cannot be reached (no network, "
                           f"or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Use the offline grammar corpora "
                           f"kdedu.data.translation(), or pass data_files= a local copy.")
    else:
        ds = datasets.load_dataset(name, config, split=split)
    n = len(ds) if limit is None else min(limit, len(ds))
    rows = ds.select(range(n)) if n < len(ds) else ds
    if "translation" in rows.column_names:
        pairs = [(t[source_lang], t[target_lang]) for t in rows["translation"]]
    elif {"source", "target"} <= set(rows.column_names):
        pairs = list(zip(rows["source"], rows["target"], strict=True))
    else:
        raise ValueError(f"the data must have a 'translation' column ({{lang: sentence}} dicts) or 'source' and "
                         f"'target' columns; it has {rows.column_names}")
    fix = str.lower if lowercase else str
    return TranslationSplit([fix(str(s)) for s, _ in pairs], [fix(str(t)) for _, t in pairs],
                            languages=[target_lang] * len(pairs))
