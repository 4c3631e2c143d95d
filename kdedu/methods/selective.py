"""Multilingual distillation with a selective switch (Tan et al. 2019, "Multilingual Neural Machine Translation
with Knowledge Distillation"; seed deck 002, "Multilingual Translation": "mimic each teacher in turn, *if* student
is still worse").

One multilingual student translates several language pairs (the source starts with a tag ``<2xx>`` naming the
target language, Johnson et al. 2017); each pair ``l`` has its own bilingual teacher. Tan et al.'s Algorithm 1:

1. every pair starts with distillation on: ``f_l = 1``;
2. a training batch mixes pairs; each target token of pair ``l`` costs ``(1 - alpha) CE + alpha T^2 KL(p_t^l ||
   p_s)`` if ``f_l = 1`` and plain ``CE`` if ``f_l = 0``: the teacher of a switched-off pair is not asked at all;
3. every ``T_check`` steps, per pair: ``f_l = 1`` if ``BLEU_valid(student, l) < BLEU_valid(teacher_l, l) + tau``,
   else 0. Distillation stops once the student beats its teacher by ``tau`` BLEU, and comes back if it falls
   behind again.

As in the authors' code (``alpha_strategy='threshold'``: ``tau = 1`` BLEU, ``alpha = 0.9``), the teachers may be
read through their top-k tokens (``top_k``, :func:`kdedu.losses.topk_kd_loss`; they store the top 8). kdedu checks
after every ``check_every`` epochs (:meth:`SelectiveMultilingualKD.on_epoch_start`) instead of every ``T_check``
steps, with greedy decoding and, by default, corpus BLEU against the validation references (:func:`kdedu.metrics.bleu`);
``metric`` swaps in another validation score (higher is better, in the units of ``threshold``): with one sampled
reference per source, BLEU can sit below what a student that outputs the most probable translation deserves.

Each teacher keeps its own vocabulary: :class:`VocabularyBridge` lets it read the student's batches (the tag is
dropped from the source) and returns its logits over the student's vocabulary (``-inf`` on the words it does not
know, which the KD loss treats as probability 0).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.costs import CountedTeacher, run_cost
from kdedu.methods.kd import cross_entropy
from kdedu.outputs import run
from kdedu.train import IGNORE_INDEX, Distiller

__all__ = ["VocabularyBridge", "SelectiveMultilingualKD", "distillation_switches"]

_DROP = -1


class VocabularyBridge(nn.Module):
    """A sequence model with its own vocabulary, read through another one (both :class:`kdedu.data.SeqVocab`).

    ``forward(input_ids, attention_mask=None, decoder_input_ids=None, ...)`` takes ids of ``outer`` (the student's
    vocabulary): each word becomes the ``inner`` id of the same word (an unknown word ``<unk>``), a language tag
    ``<2xx>`` in the source is removed (the rest of the row moves left), the teacher runs, and its logits ``(B, T,
    V_inner)`` come back as ``(B, T, V_outer)``: each word's logit at its ``outer`` id, ``-inf`` where ``inner``
    has no such word.
    """

    def __init__(self, model: nn.Module, inner, outer):
        super().__init__()
        for name, v in (("inner", inner), ("outer", outer)):
            if not hasattr(v, "itos") or not hasattr(v, "stoi"):
                raise TypeError(f"{name} must be a kdedu.data.SeqVocab, got {type(v).__name__}")
        self.model, self.inner, self.outer = model, inner, outer
        to_inner = [inner.stoi.get(w, inner.unk_id) for w in outer.itos]
        for i, w in enumerate(outer.itos):
            if w.startswith("<2") and w.endswith(">") and w not in inner.stoi:
                to_inner[i] = _DROP                                               # a tag the teacher never saw
        back = [outer.stoi.get(w, -1) for w in inner.itos]
        self.register_buffer("to_inner", torch.tensor(to_inner), persistent=False)
        self.register_buffer("to_outer", torch.tensor(back), persistent=False)

    def _source(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = self.to_inner[input_ids]                                            # (B, S)
        keep = ids != _DROP
        order = torch.sort((~keep).long(), dim=1, stable=True).indices           # kept tokens first, in order
        ids = ids.gather(1, order)
        return torch.where(keep.gather(1, order), ids, torch.full_like(ids, self.inner.pad_id))

    def map_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[..., V_inner]`` logits -> ``[..., V_outer]``: ``-inf`` where the inner vocabulary lacks the word."""
        out = logits.new_full((*logits.shape[:-1], len(self.outer)), -float("inf"))
        known = self.to_outer >= 0
        out[..., self.to_outer[known]] = logits[..., known]
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                decoder_input_ids: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None):
        src = self._source(input_ids)
        dec = self.to_inner[decoder_input_ids] if decoder_input_ids is not None else None
        if dec is not None and (dec == _DROP).any():
            raise ValueError("decoder_input_ids hold a language tag")
        z = run(self.model, {"input_ids": src, "attention_mask": (src != self.inner.pad_id).long(),
                             "decoder_input_ids": dec}).require_logits("the bridged model")
        return self.map_logits(z)

    def prefix_scorer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        src = self._source(input_ids)
        inner = self.model.prefix_scorer(src, (src != self.inner.pad_id).long())

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return self.map_logits(inner(self.to_inner[prefixes], rows))

        return step


def distillation_switches(student_score: Mapping[str, float], teacher_score: Mapping[str, float],
                          threshold: float = 1.0) -> dict[str, bool]:
    """Step 3 of Tan et al.'s Algorithm 1, per language: distil (True) while ``student < teacher + threshold`` (the
    scores: validation BLEU in the paper)."""
    missing = set(student_score) ^ set(teacher_score)
    if missing:
        raise ValueError(f"student_score and teacher_score must name the same languages; differ on {sorted(missing)}")
    return {lang: student_score[lang] < teacher_score[lang] + threshold for lang in student_score}


class SelectiveMultilingualKD(Distiller):
    """One multilingual student, one teacher per language pair, distillation switched per pair (Tan et al. 2019).

    Args:
        student: a :class:`~kdedu.models.Seq2Seq` over ``vocab``, the multilingual vocabulary with the tags
            (``translation_vocab(("fr", "de", "es"), tag=True)``).
        teachers: ``{language: teacher}``; a teacher with its own ``.vocab`` (the zoo's do) is read through a
            :class:`VocabularyBridge` (which also lets it translate the tagged validation sources).
        vocab: the student's vocabulary.
        val: ``{language: TranslationSplit}`` (tagged, as the student reads them) for the switch; ``None``: no
            check (every switch stays on: plain multilingual KD).
        alpha, temperature: the KD mixture while a switch is on (the authors' code: 0.9).
        threshold: τ in the metric's units (the authors': 1 BLEU). ``check_every``: epochs between checks.
        metric: ``metric(hypotheses, split) -> float``, the validation score of greedy translations of ``split``'s
            sources (higher is better); ``None``: corpus BLEU against ``split.targets`` (Tan et al.).
        top_k: distil from each teacher's ``top_k`` tokens (:func:`kdedu.losses.topk_kd_loss`); ``None``: all.

    Batches come from ``translation_loader(translation(..., target=("fr", "de"), tag=True), vocab)``: the tag
    ``<2xx>`` first in every source says which teacher a row belongs to. ``forward`` returns ``{"ce", "kd"}`` (both
    averaged over all target tokens of the batch). ``switches`` holds ``f_l``; ``log`` one record per check
    (epoch, language, student and teacher score, the switch after it); ``teachers[lang].cost()`` its queries.
    """

    def __init__(self, student: nn.Module, teachers: Mapping[str, nn.Module], vocab, val: Mapping | None = None,
                 alpha: float = 0.5, temperature: float = 1.0, threshold: float = 1.0, check_every: int = 1,
                 top_k: int | None = None, metric=None, batch_size: int = 256):
        if not isinstance(teachers, Mapping) or not teachers:
            raise TypeError("teachers must be a non-empty dict {language: teacher}")
        super().__init__(student, None)
        self.vocab = vocab
        self.tag_ids = {}
        for lang in teachers:
            tag = f"<2{lang}>"
            if tag not in vocab.stoi:
                raise ValueError(f"vocab has no tag {tag!r}: use translation_vocab(languages, tag=True)")
            self.tag_ids[vocab.stoi[tag]] = lang
        wrapped = {}
        for lang, t in teachers.items():
            if not isinstance(t, nn.Module):
                raise TypeError(f"teachers[{lang!r}] must be a torch.nn.Module, got {type(t).__name__}")
            own = getattr(t, "vocab", None)
            wrapped[lang] = CountedTeacher(VocabularyBridge(t, own, vocab) if own is not None and own != vocab else t)
            wrapped[lang].requires_grad_(False).eval()
        self.teachers = nn.ModuleDict(wrapped)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.threshold = check_nonnegative("threshold", threshold)
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if val is not None and set(val) != set(teachers):
            raise ValueError(f"val must have one split per teacher language {sorted(teachers)}, got {sorted(val)}")
        if metric is not None and not callable(metric):
            raise TypeError(f"metric must be a function (hypotheses, split) -> float, or None; got "
                            f"{type(metric).__name__}")
        self.val, self.check_every, self.top_k, self.batch_size = val, check_every, top_k, batch_size
        self.metric = metric
        self.switches = {lang: True for lang in teachers}                         # step 1
        self.teacher_score: dict[str, float] | None = None
        self.log: list[dict] = []
        self.check_time_s = 0.0

    def train(self, mode: bool = True):
        super().train(mode)
        for t in self.teachers.values():
            t.eval()
        return self

    def trainable_parameters(self):
        return (p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teachers."))

    # ---------------------------------------------------------------------------------------------
    # step 3: the check
    # ---------------------------------------------------------------------------------------------
    def score(self, model, lang: str) -> float:
        """The validation score of ``model`` (the student, or a wrapped teacher) on ``val[lang]`` (tagged sources):
        ``metric`` of its greedy translations; by default corpus BLEU."""
        from kdedu.metrics import bleu
        from kdedu.models import translate

        split = self.val[lang]
        hyps = translate(model, split.sources, self.vocab, strategy="greedy", batch_size=self.batch_size)
        return bleu(hyps, split.targets) if self.metric is None else float(self.metric(hyps, split))

    def check(self, epoch: int) -> dict[str, bool]:
        """Measure the student's (and, once, each teacher's) validation score and set the switches (step 3)."""
        t0 = time.perf_counter()
        if self.teacher_score is None:
            self.teacher_score = {lang: self.score(t, lang) for lang, t in self.teachers.items()}
        student = {lang: self.score(self.student, lang) for lang in self.teachers}
        self.switches = distillation_switches(student, self.teacher_score, self.threshold)
        for lang in self.teachers:
            self.log.append({"epoch": epoch, "language": lang, "student_score": student[lang],
                             "teacher_score": self.teacher_score[lang], "distil": self.switches[lang]})
        self.check_time_s += time.perf_counter() - t0
        return self.switches

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.val is not None and epoch > 0 and epoch % self.check_every == 0:
            self.check(epoch)

    # ---------------------------------------------------------------------------------------------
    # step 2: the loss
    # ---------------------------------------------------------------------------------------------
    def languages(self, input_ids: torch.Tensor) -> list[str]:
        """The target language of every row, read off its tag (the first source token)."""
        first = input_ids[:, 0].tolist()
        bad = [i for i in first if i not in self.tag_ids]
        if bad:
            raise ValueError(f"every source must start with a tag of {sorted(self.tag_ids.values())}; a row starts "
                             f"with {self.vocab.itos[bad[0]]!r}")
        return [self.tag_ids[i] for i in first]

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None or not isinstance(x, dict):
            raise ValueError("SelectiveMultilingualKD needs dict batches with labels (kdedu.data.translation_loader)")
        z_s = run(self.student, x).require_logits("the student")                 # (B, T, V)
        keep = y != IGNORE_INDEX                                                  # (B, T)
        n = keep.sum().clamp(min=1)
        langs = self.languages(x["input_ids"])
        distil = torch.tensor([self.switches[lang] for lang in langs], device=y.device)  # (B,) f_l per row
        ce = self._weighted_ce(z_s, y, keep, distil)
        mixed = keep & distil[:, None]                                            # (B, T) tokens with the mixture
        kd = z_s.sum() * 0.0
        for lang in sorted(set(langs)):
            if not self.switches[lang] or self.alpha == 0:
                continue                                                          # f_l = 0: the teacher is not asked
            rows = torch.tensor([i for i, g in enumerate(langs) if g == lang], device=y.device)
            sub = {k: v[rows] for k, v in x.items()}
            with torch.no_grad():
                z_t = run(self.teachers[lang], sub).require_logits(f"the {lang} teacher")  # (b, T, V)
            mask = mixed[rows]
            if self.top_k is None:
                kd = kd + losses.kd_loss(z_s[rows], z_t, self.temperature, reduction="sum", mask=mask)
            else:
                top, idx = z_t.topk(min(self.top_k, z_t.shape[-1]), dim=-1)
                kd = kd + losses.topk_kd_loss(z_s[rows], top, idx, self.temperature, reduction="sum", mask=mask)
        return {"ce": ce, "kd": self.alpha * kd / n}

    def _weighted_ce(self, z_s, y, keep, distil) -> torch.Tensor:
        """``sum_tokens w CE / n``: weight ``1 - alpha`` on the tokens of pairs being distilled, 1 on the others."""
        n = keep.sum().clamp(min=1)
        on = keep & distil[:, None]
        off = keep & ~distil[:, None]
        return ((1 - self.alpha) * cross_entropy(z_s, y, on) * on.sum() + cross_entropy(z_s, y, off) * off.sum()) / n

    def cost(self, history) -> dict:
        """Wall time of ``history`` (the checks, run before each epoch, are ``check_time_s``, added) and the
        queries of every teacher (``per_teacher``: each one's)."""
        c = run_cost(history, dict(self.teachers), check_time_s=self.check_time_s,
                     per_teacher={lang: t.cost() for lang, t in self.teachers.items()})
        c["time_s"] += self.check_time_s
        return c
