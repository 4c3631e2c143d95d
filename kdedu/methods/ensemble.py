"""Ensemble distillation for translation (Freitag et al. 2017, "Ensemble Distillation for Neural Machine
Translation"; seed deck 002, "Ensemble Distillation": "learn a student with the accuracy of an ensemble").

An ensemble of n translation models is better than each of them and n times slower. Distillation keeps the
accuracy and drops the cost: the student learns from the ensemble as from one teacher. Two ways, both here:

* **word level**: per target token, KD against the ensemble's distribution, the average of the teachers' next-token
  distributions (:func:`~kdedu.methods.multi_teacher.average_teachers`, ``mode="probs"``; ``"logits"`` averages
  log-probabilities instead, a product of experts);
* **sequence level**: the ensemble *decodes* (beam search over the averaged next-token distribution, the way an NMT
  ensemble translates) and the student learns its outputs, as in Seq-KD. Freitag et al. distil this way: they
  translate the training data with the ensemble and train the student on it ("no code change"); they also filter
  that data with the references, which kdedu does not.

:class:`EnsembleTeacher` is the ensemble as one module (a :class:`~kdedu.methods.MultiTeacher` that can also
decode); :class:`EnsembleKD` is :class:`~kdedu.methods.SeqKD` with that teacher, so ``fit(method, loader)`` on the
references is word-level ensemble KD and ``fit(method, method.loader(split))`` trains on the ensemble's beams
(``alpha > 0`` adds word-level KD on those beams).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from kdedu.methods.costs import CountedTeacher, run_cost
from kdedu.methods.multi_teacher import MODES, MultiTeacher, average_teachers
from kdedu.methods.seqkd import SeqKD

__all__ = ["EnsembleTeacher", "EnsembleKD"]


class EnsembleTeacher(MultiTeacher):
    """n sequence models as one: ``forward(**batch)`` averages their token logits (:func:`average_teachers` in
    ``mode`` at ``temperature``, as :class:`MultiTeacher`), and ``prefix_scorer`` decodes with the average of
    their next-token distributions at temperature 1 (``mode="probs"``: ``log mean_i p_i``; ``"logits"``: the
    normalised mean of their log-probabilities). The mode is stored as a buffer, so it is part of the weights'
    checksum that keys cached beams (:func:`kdedu.methods.teacher_beams`)."""

    def __init__(self, teachers: Sequence[nn.Module], mode: str = "probs", temperature: float = 1.0):
        super().__init__(teachers, mode, temperature)
        for i, t in enumerate(self.teachers):
            if not hasattr(t, "prefix_scorer"):
                raise TypeError(f"teachers[{i}] ({type(t).__name__}) cannot decode: it has no prefix_scorer")
        self.register_buffer("mode_id", torch.tensor(MODES.index(mode)))
        vocabs = [getattr(t, "vocab", None) for t in teachers]
        if vocabs[0] is not None and any(v != vocabs[0] for v in vocabs):
            raise ValueError("the teachers have different vocabularies: an ensemble averages over one vocabulary")
        self.vocab = vocabs[0]

    def prefix_scorer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        steps = [t.prefix_scorer(input_ids, attention_mask) for t in self.teachers]

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            logp = [s(prefixes, rows) for s in steps]                             # n x (N, V)
            return torch.log_softmax(average_teachers(logp, self.mode, 1.0), -1)  # (N, V)

        return step


class EnsembleKD(SeqKD):
    """KD from an ensemble of translation teachers (Freitag et al. 2017).

    Steps: (1) the teachers become one :class:`EnsembleTeacher` (wrapped in a
    :class:`~kdedu.methods.costs.CountedTeacher`: ``method.teacher.cost()`` counts every query); (2a) word level:
    ``fit(method, translation_loader(train, vocab, shuffle=True, seed=None))``: ``(1 - alpha) CE + alpha T^2
    KL(p_ensemble || p_s)`` per target token; (2b) sequence level: ``fit(method, method.loader(train))``: the
    student learns the ensemble's beam-search outputs (computed once, cached; ``alpha=0`` is pure Seq-KD).

    ``transfer_time_s`` is the time the last :meth:`transfer_set` took (near 0 when its beams were cached).
    """

    def __init__(self, student: nn.Module, teachers: Sequence[nn.Module], vocab, alpha: float = 0.5,
                 temperature: float = 1.0, mode: str = "probs", beam_size: int = 5, length_penalty: float = 1.0,
                 max_length: int | None = None, cache: bool = True):
        if isinstance(teachers, nn.Module) or not isinstance(teachers, Sequence) or len(teachers) == 0:
            raise TypeError("teachers must be a non-empty list of translation models")
        ensemble = CountedTeacher(EnsembleTeacher(teachers, mode, temperature))
        super().__init__(student, ensemble, vocab, alpha, temperature, beam_size, length_penalty, max_length, cache)
        self.transfer_time_s = 0.0

    def transfer_set(self, split):
        t0 = time.perf_counter()
        out = super().transfer_set(split)
        self.transfer_time_s = time.perf_counter() - t0
        return out

    def cost(self, history) -> dict:
        """Wall time of ``history`` plus the transfer set's, and the ensemble's queries (every teacher answers each)."""
        n = len(self.teacher.teacher.teachers)
        c = run_cost(history, self.teacher, transfer_time_s=self.transfer_time_s, teachers=n)
        c["time_s"] += self.transfer_time_s
        return c
