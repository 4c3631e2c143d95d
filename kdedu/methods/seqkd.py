"""Knowledge distillation for sequence models: word-level KD, Seq-KD, Seq-Inter (Kim & Rush 2016).

An autoregressive model's distribution over whole outputs is a product of per-token distributions,
``p(y | x) = prod_t p(y_t | y_<t, x)``. Maximum likelihood factors over tokens (one classification per
position), but KD's sequence-level objective ``KL(p_teacher(. | x) || p_student(. | x))`` sums over every
possible output, exponentially many. Kim & Rush (2016) give three practical answers:

* **word-level KD** (:class:`WordKD`): per-token KD on the reference prefixes (teacher forcing),
  ``(1 - alpha) CE(y_t) + alpha T^2 KL(p_t(. | y_<t, x) || p_s(. | y_<t, x))`` at every target position, padding
  (labels ``-100``) masked. It matches the teacher's next-token distributions, but only on the data's
  prefixes, which is not the sequence-level KL (:func:`sequence_kl` computes both on a tiny model);
* **Seq-KD** (:class:`SeqKD`): approximate the teacher's distribution by its mode, found by beam search,
  and train the student on it with plain cross-entropy: a new transfer set, ``(x, beam(teacher, x))``.
  ``alpha > 0`` adds word-level KD on those targets ("Seq-KD + Word-KD", one of Kim & Rush's combinations).
  Kim & Rush's beam ranks its candidates by log p: pass ``length_penalty=0`` for that (the default, 1, divides
  by the length, fairseq's convention, and favours longer outputs);
* **Seq-Inter** (:class:`SeqInter`): train on the candidate of the teacher's beam that is closest to the
  reference (highest sentence-level BLEU): the teacher's mode, pulled towards the data.

The teacher's beams are computed once per (teacher, transfer set, decoding configuration) and cached
atomically under ``$KDEDU_CACHE/seqkd`` (:func:`teacher_beams`), keyed by a checksum of the teacher's weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from kdedu import losses
from kdedu._io import atomic_write
from kdedu._validate import check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy
from kdedu.outputs import run
from kdedu.train import IGNORE_INDEX, Distiller

__all__ = ["WordKD", "SeqKD", "SeqInter", "seq_kd_dataset", "teacher_beams", "seq_inter_choice", "model_checksum",
           "sequence_kl"]


class WordKD(Distiller):
    """Word-level KD (Kim & Rush 2016, eq. 4 with the NLL term): per target token,
    ``(1 - alpha) CE(z_s, y) + alpha T^2 KL(p_t(T) || p_s(T))``, teacher-forced on the batch's
    ``decoder_input_ids``, rows labelled ``-100`` (padding) skipped; returns ``{"ce", "kd"}``.

    ``alpha=0`` with ``teacher=None`` is the baseline: cross-entropy on the references alone. Use it (rather
    than :class:`~kdedu.methods.Supervised`) for encoder–decoder batches: here only the labels say which rows
    count, never the source's ``attention_mask``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, alpha: float = 0.5,
                 temperature: float = 1.0):
        alpha = check_unit_interval("alpha", alpha)
        if teacher is None and alpha > 0:
            raise TypeError(f"teacher must be a torch.nn.Module when alpha={alpha} > 0 (alpha=0 needs none)")
        super().__init__(student, teacher)
        self.alpha, self.temperature = alpha, check_temperature(temperature)

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the batch's labels (B, T) (-100 on padding)")
        z_s = run(self.student, x).require_logits("the student")                 # (B, L, V)
        if z_s.shape[:-1] != y.shape:
            raise ValueError(f"the student's logits {tuple(z_s.shape)} do not line up with the labels "
                             f"{tuple(y.shape)}: pass decoder_input_ids of the labels' length")
        keep = y != IGNORE_INDEX                                                  # (B, L)
        terms = {}
        if self.alpha < 1:
            terms["ce"] = (1 - self.alpha) * cross_entropy(z_s, y, keep)
        if self.alpha > 0:
            z_t = self.teacher_logits(x)                                          # (B, L, V)
            if z_t.shape != z_s.shape:
                raise ValueError(f"the teacher's logits {tuple(z_t.shape)} and the student's {tuple(z_s.shape)} "
                                 f"differ (different vocabularies?)")
            terms["kd"] = self.alpha * losses.kd_loss(z_s, z_t, self.temperature, mask=keep)
        return terms


# --------------------------------------------------------------------------------------------
# the teacher's beams, once per transfer set
# --------------------------------------------------------------------------------------------
def model_checksum(model: nn.Module) -> str:
    """SHA-256 of a model's class, parameter names, shapes and values (a cache key for its outputs)."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _cache_root(root) -> Path:
    from kdedu._io import cache_dir

    return Path(root) if root is not None else cache_dir() / "seqkd"


def teacher_beams(teacher: nn.Module, sources, vocab, beam_size: int = 5, length_penalty: float = 1.0,
                  max_length: int | None = None, batch_size: int = 256, cache: bool = True, root=None) -> list:
    """The teacher's ``beam_size`` best translations of each source: per source a list of
    ``(text, score)``, best first, the score ``log p / |y| ** length_penalty`` (``length_penalty=0``: log p, the
    ranking of Kim & Rush's beam search; the candidates are the same for every ``length_penalty``, only their
    order differs). Computed once and cached (atomic write) under
    ``$KDEDU_CACHE/seqkd``, keyed by the teacher's weights (:func:`model_checksum`), the sources, the
    vocabulary and the decoding configuration; ``cache=False`` recomputes and stores nothing.
    ``sources`` is a list of strings or a :class:`~kdedu.data.TranslationSplit`."""
    from kdedu.models.decoding import beam_search

    sources = list(getattr(sources, "sources", sources))
    if not sources or not all(isinstance(s, str) for s in sources):
        raise TypeError("sources must be a non-empty list of strings or a TranslationSplit")
    config = {"teacher": model_checksum(teacher), "beam_size": beam_size, "length_penalty": length_penalty,
              "max_length": max_length, "vocab": hashlib.sha256("\n".join(vocab.itos).encode()).hexdigest(),
              "sources": hashlib.sha256("\n".join(sources).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]
    path = _cache_root(root) / f"beams-{key}.json"
    if cache and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("config") == config:
            return [[(t, s) for t, s in c] for c in stored["beams"]]
    device = next(teacher.parameters()).device
    batches = range(0, len(sources), batch_size)
    if os.environ.get("KDEDU_PROGRESS", "1") != "0":
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="teacher beams", leave=False)
    out = []
    for start in batches:
        ids = [vocab.encode(s) + [vocab.eos_id] for s in sources[start:start + batch_size]]
        width = max(len(x) for x in ids)
        input_ids = torch.tensor([x + [vocab.pad_id] * (width - len(x)) for x in ids], device=device)
        hyps = beam_search(teacher, input_ids, (input_ids != vocab.pad_id).long(), beam_size, max_length,
                           n_best=beam_size, length_penalty=length_penalty)
        out += [[(vocab.decode(h.tokens), h.score) for h in hs] for hs in hyps]
    if cache:
        atomic_write(path, json.dumps({"config": config, "beams": out}).encode())
    return out


def seq_inter_choice(candidates, reference: str) -> int:
    """The index of the candidate with the highest sentence-level BLEU against ``reference`` (Seq-Inter);
    ties go to the earlier candidate (the teacher's better one). ``candidates``: strings or ``(text, score)``."""
    from kdedu.metrics import sentence_bleu

    texts = [c if isinstance(c, str) else c[0] for c in candidates]
    if not texts:
        raise ValueError("candidates is empty")
    scores = [sentence_bleu(t, reference) for t in texts]
    return max(range(len(texts)), key=lambda i: (scores[i], -i))


def seq_kd_dataset(teacher: nn.Module, split, vocab, beam_size: int = 5, length_penalty: float = 1.0,
                   max_length: int | None = None, inter: bool = False, cache: bool = True):
    """A distilled transfer set: ``split`` (a :class:`~kdedu.data.TranslationSplit`) with every target replaced
    by the teacher's beam-search output (Seq-KD), or with ``inter=True`` by the candidate of its
    ``beam_size``-best closest to the reference in sentence BLEU (Seq-Inter). The beams come from
    :func:`teacher_beams` (computed once, cached)."""
    beams = teacher_beams(teacher, split, vocab, beam_size, length_penalty, max_length, cache=cache)
    targets = [c[seq_inter_choice(c, ref)][0] if inter else c[0][0] for c, ref in zip(beams, split.targets,
                                                                                      strict=True)]
    return split.with_targets(targets)


class SeqKD(WordKD):
    """Sequence-level KD (Kim & Rush 2016): the student learns the teacher's beam-search output.

    Steps: (1) :meth:`transfer_set` runs the teacher's beam search once on the training sources (cached) and
    replaces each target by the best hypothesis (:func:`seq_kd_dataset`); (2) :func:`kdedu.train.fit` trains
    the student on those targets with cross-entropy (this class's ``forward``, :class:`WordKD`'s). ``alpha > 0``
    adds word-level KD on the same targets: "Seq-KD + Word-KD". Use::

        method = SeqKD(student, teacher, vocab, beam_size=5)
        fit(method, method.loader(train_split, batch_size=64, shuffle=True, seed=None), val_loader)
    """

    inter = False  # Seq-Inter picks among the n-best instead

    def __init__(self, student: nn.Module, teacher: nn.Module, vocab, alpha: float = 0.0, temperature: float = 1.0,
                 beam_size: int = 5, length_penalty: float = 1.0, max_length: int | None = None, cache: bool = True):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module: its beam search makes the transfer set")
        super().__init__(student, teacher, alpha, temperature)
        self.vocab, self.beam_size, self.length_penalty = vocab, beam_size, length_penalty
        self.max_length, self.cache = max_length, cache

    def transfer_set(self, split):
        """``split`` with each target replaced by the chosen teacher output (a new ``TranslationSplit``)."""
        return seq_kd_dataset(self.teacher, split, self.vocab, self.beam_size, self.length_penalty, self.max_length,
                              inter=self.inter, cache=self.cache)

    def loader(self, split, batch_size: int = 64, shuffle: bool = True, seed: int | None = None, **kwargs):
        """:func:`kdedu.data.translation_loader` over :meth:`transfer_set` (``seed=None``: fit's seed orders it)."""
        from kdedu.data.seq_batches import translation_loader

        return translation_loader(self.transfer_set(split), self.vocab, batch_size, shuffle, seed, **kwargs)


class SeqInter(SeqKD):
    """Sequence-level interpolation (Kim & Rush 2016, Seq-Inter): among the teacher's ``beam_size``-best, train
    on the candidate with the highest sentence-level BLEU against the reference (:func:`seq_inter_choice`),
    the mode of the teacher pulled towards the data. Everything else is :class:`SeqKD`."""

    inter = True


# --------------------------------------------------------------------------------------------
# the exact non-factorisation, by enumeration (tiny models only)
# --------------------------------------------------------------------------------------------
def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return (p * torch.where(p > 0, logp - logq, torch.zeros_like(p))).sum(-1)


@torch.no_grad()
def sequence_kl(teacher, student, input_ids=None, attention_mask=None, tokens=None, max_length: int = 4,
                reference=None, bos_id: int = 1, eos_id: int = 2) -> dict:
    """Sequence-level ``KL(p_teacher(. | x) || p_student(. | x))`` by enumerating every output, and the sums of
    per-token KLs that word-level KD works with, for one source.

    ``teacher``/``student``: models with ``prefix_scorer`` (then ``input_ids`` is the (1, S) source) or step
    functions (:mod:`kdedu.models.decoding`). ``tokens``: the output vocabulary (ids, EOS included; default
    every id but PAD=0 and BOS); each step's distribution is renormalised over it. An output ends with EOS or
    after ``max_length`` tokens, so the outputs form a finite set whose probabilities sum to 1.

    Returns ``{"sequence_kl", "token_kl_teacher_prefixes", "token_kl_reference", "num_sequences"}``:
    ``token_kl_teacher_prefixes`` is ``E_{y ~ p_teacher} sum_t KL(p_t(. | y_<t) || p_s(. | y_<t))``, equal to the
    sequence KL by the chain rule; ``token_kl_reference`` is ``sum_t`` of the same token KLs on the prefixes
    of ``reference`` (token ids, no EOS), what word-level KD minimises on one training pair; it is not.
    """
    device = input_ids.device if isinstance(input_ids, torch.Tensor) else torch.device("cpu")
    steps = []
    for model in (teacher, student):
        if hasattr(model, "prefix_scorer"):
            model.eval()
            steps.append(model.prefix_scorer(input_ids, attention_mask))
        elif callable(model):
            steps.append(model)
        else:
            raise TypeError("teacher and student must have prefix_scorer or be step functions")
    if tokens is None:
        v = steps[0](torch.tensor([[bos_id]], device=device), torch.zeros(1, dtype=torch.long, device=device)).shape[-1]
        tokens = [i for i in range(v) if i not in (0, bos_id)]
    tokens = list(tokens)
    if eos_id not in tokens:
        raise ValueError(f"tokens must include eos_id={eos_id}")
    allowed = torch.tensor(tokens)

    def both(prefixes):                                     # (N, |A|) log-probs over the allowed tokens
        rows = torch.zeros(len(prefixes), dtype=torch.long, device=device)
        x = torch.tensor(prefixes, dtype=torch.long, device=device)
        return [torch.log_softmax(s(x, rows).double().cpu()[:, allowed], -1) for s in steps]

    seq_kl, token_kl, count = 0.0, 0.0, 0
    level, logp_t, logp_s = [[bos_id]], torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for t in range(1, max_length + 1):
        lt, ls = both(level)                                                      # (N, |A|)
        token_kl += float((logp_t.exp() * _kl(lt, ls)).sum())                     # weighted by p_teacher(prefix)
        ext_t, ext_s = logp_t[:, None] + lt, logp_s[:, None] + ls                 # (N, |A|) log p of extensions
        nxt, nt, ns = [], [], []
        for n, prefix in enumerate(level):
            for a, tok in enumerate(tokens):
                if tok == eos_id or t == max_length:                             # a complete output
                    pt, ps = float(ext_t[n, a]), float(ext_s[n, a])
                    if pt > -math.inf:                                            # 0 log 0 = 0
                        seq_kl += math.exp(pt) * (pt - ps)
                    count += 1
                else:
                    nxt.append(prefix + [tok])
                    nt.append(ext_t[n, a])
                    ns.append(ext_s[n, a])
        if not nxt:
            break
        level, logp_t, logp_s = nxt, torch.stack(nt), torch.stack(ns)
    ref_kl = None
    if reference is not None:
        ref = [bos_id] + list(reference)
        ref_kl = 0.0
        for i in range(min(len(ref), max_length)):                               # prefixes BOS y_1 .. y_i
            lt, ls = both([ref[:i + 1]])
            ref_kl += float(_kl(lt, ls).sum())
    return {"sequence_kl": seq_kl, "token_kl_teacher_prefixes": token_kl, "token_kl_reference": ref_kl,
            "num_sequences": count}
