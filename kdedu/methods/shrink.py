"""Shrink and fine-tune (SFT; Shleifer & Rush 2020, "Pre-trained Summarization Distillation"): copy some of the
teacher's decoder layers into a smaller student (:func:`kdedu.models.shrink_decoder`), then fine-tune it.

Shleifer & Rush compare three ways to train the same shrunk student (the deck's table: Shrink, KD, SeqKD, each
with its score and its cost): fine-tuning on the data alone (``alpha=0``), with word-level KD from the teacher
(``alpha > 0``; their KD also matches hidden states, which kdedu's does not), or on the teacher's beam outputs
(pass a Seq-KD loader: ``translation_loader(seq_kd_dataset(teacher, split, vocab), vocab, ...)``).
:func:`shrink_and_fine_tune` does the first two in one call and reports the cost of each.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from kdedu.methods.costs import CountedTeacher, run_cost
from kdedu.models.shrink import shrink_decoder
from kdedu.train import History, fit

__all__ = ["ShrinkResult", "shrink_and_fine_tune"]


@dataclass
class ShrinkResult:
    """The fine-tuned ``student``, the teacher ``layers`` it copied, its ``history`` and ``cost``."""

    student: nn.Module
    layers: list
    history: History
    cost: dict = field(default_factory=dict)


def shrink_and_fine_tune(teacher: nn.Module, train_loader, val_loader=None, layers=None, num_layers: int | None = None,
                         encoder_layers=None, alpha: float = 0.0, temperature: float = 1.0, seed: int = 0,
                         **fit_kwargs) -> ShrinkResult:
    """Steps: (1) ``student = shrink_decoder(teacher, layers, num_layers, encoder_layers)``; (2) fine-tune it with
    :func:`kdedu.train.fit` on ``train_loader`` (``seed``, ``fit_kwargs``): cross-entropy on the loader's targets,
    plus ``alpha`` word-level KD from the teacher (:class:`~kdedu.methods.WordKD` for a Seq2Seq,
    :class:`~kdedu.methods.KD` with ``causal_lm=True`` for a GPT). ``cost`` counts the teacher's queries (none when
    ``alpha=0``: the copy is its only contribution)."""
    from kdedu.methods.kd import KD, Supervised
    from kdedu.methods.seqkd import WordKD
    from kdedu.models.gpt import GPT

    inner = teacher.teacher if isinstance(teacher, CountedTeacher) else teacher
    student = shrink_decoder(inner, layers, num_layers, encoder_layers)
    chosen = layers if layers is not None else _chosen(inner, student)
    counted = teacher if isinstance(teacher, CountedTeacher) else CountedTeacher(teacher)
    if isinstance(inner, GPT):
        method = Supervised(student, causal_lm=True) if alpha == 0 else KD(student, counted, alpha, temperature,
                                                                           causal_lm=True)
    else:
        method = WordKD(student, counted if alpha > 0 else None, alpha, temperature)
    history = fit(method, train_loader, val_loader, seed=seed, desc="shrink and fine-tune", **fit_kwargs)
    return ShrinkResult(student, list(chosen), history, run_cost(history, counted))


def _chosen(teacher, student) -> list:
    from kdedu.models.shrink import layers_to_copy

    stack = "decoder" if hasattr(teacher, "decoder") else "blocks"
    return layers_to_copy(len(getattr(student, stack).layers), len(getattr(teacher, stack).layers))
