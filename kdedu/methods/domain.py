"""Domain adaptation without forgetting (Dakwale & Monz 2017, "Fine-tuning for Neural Machine Translation with
Limited Degradation across In- and Out-of-Domain Data"; seed deck 002, "Domain Adaptation": "train an in-domain
student model that doesn't forget how to translate. Approach: alternate between domain fine-tuning and
out-of-domain seqKD").

Fine-tuning a general translation model on a small in-domain corpus makes it good in the domain and bad
elsewhere (catastrophic forgetting). The original model knows the general domain, so it can keep reminding the
student of it. :class:`DomainAlternation` does what the deck says, in rounds:

1. once: the original model (the teacher, frozen) translates general-domain sources with beam search: a Seq-KD
   transfer set (:meth:`kdedu.methods.SeqKD.transfer_set`, cached);
2. each round: (a) fine-tune the student on the in-domain references (``in_domain_alpha > 0`` adds word-level KD
   from the original model on those references: Dakwale & Monz's own method, which keeps the original model's
   distribution as a second objective on the in-domain data); (b) train it on the general-domain transfer set
   (Seq-KD), so it does not drift away from what it knew.

How finely to alternate is not fixed by the deck. ``switch_every=None`` makes each phase whole epochs, one
:func:`kdedu.train.fit` call each (its own optimiser, as a separate fine-tuning run has); a small model then
forgets in each phase what the other taught it. ``switch_every=k`` alternates within an epoch: ``k`` in-domain
batches, then ``k`` general ones, in turn, under one optimiser per round (a round is then ``epochs_per_phase``
epochs of this mixture).

The student usually starts as a copy of the teacher (``copy.deepcopy(teacher)``: fine-tuning), but any model over
the same vocabulary works.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from torch import nn

from kdedu.methods.costs import CountedTeacher, run_cost
from kdedu.methods.seqkd import SeqKD, WordKD
from kdedu.train import Distiller, History, fit

__all__ = ["DomainAlternation", "AlternationResult"]


@dataclass
class AlternationResult:
    """The adapted ``student``; ``phases``: ``(name, History)`` in the order they ran ("in-domain 1", "general 1",
    ...); ``evaluations``: what ``evaluate(student)`` returned after each phase (with ``phase`` added);
    ``cost``: :func:`~kdedu.methods.costs.run_cost` of all phases plus the transfer set's time."""

    student: nn.Module
    phases: list = field(default_factory=list)
    evaluations: list = field(default_factory=list)
    cost: dict = field(default_factory=dict)

    @property
    def histories(self) -> list[History]:
        return [h for _, h in self.phases]


class _Alternating:
    """Batches of two loaders in turn, ``every`` of each (the longer one's rest at the end), each dict batch marked
    with ``"in_domain"`` (True for the first loader's)."""

    def __init__(self, first, second, every: int):
        self.loaders, self.every = (first, second), every

    def __len__(self) -> int:
        return sum(len(dl) for dl in self.loaders)

    def __iter__(self):
        iters = [iter(dl) for dl in self.loaders]
        alive = [True, True]
        while any(alive):
            for which in (0, 1):
                for _ in range(self.every if alive[which] else 0):
                    batch = next(iters[which], None)
                    if batch is None:
                        alive[which] = False
                        break
                    yield {**batch, "in_domain": which == 0}


class _Mixture(Distiller):
    """Routes each marked batch of :class:`_Alternating` to the in-domain or the general objective."""

    def __init__(self, in_domain: Distiller, general: Distiller):
        super().__init__(in_domain.student, None)
        self.in_domain, self.general = in_domain, general

    def forward(self, x, y):
        x = dict(x)
        method = self.in_domain if x.pop("in_domain") else self.general
        return method(x, y)


class DomainAlternation:
    """Alternate in-domain fine-tuning with general-domain Seq-KD from the original model.

    Args:
        student: the model to adapt (e.g. ``copy.deepcopy(teacher).requires_grad_(True)``; ``None`` does that).
        teacher: the original general-domain model (frozen; it makes the general transfer set).
        vocab: the shared :class:`~kdedu.data.SeqVocab`.
        rounds, epochs_per_phase: how many (in-domain, general) pairs of phases, and epochs each.
        switch_every: ``None``: a phase is ``epochs_per_phase`` whole epochs; ``k``: in-domain and general batches
            alternate ``k`` at a time within each epoch (a round is one phase, "mixed r", of both).
        in_domain_alpha, temperature: word-level KD from the teacher during the in-domain phases (0: plain
            fine-tuning, the deck's recipe; > 0: Dakwale & Monz's KD term).
        beam_size, max_length, cache: of the general transfer set (:class:`~kdedu.methods.SeqKD`).
    """

    def __init__(self, student: nn.Module | None, teacher: nn.Module, vocab, rounds: int = 2,
                 epochs_per_phase: int = 1, switch_every: int | None = None, in_domain_alpha: float = 0.0,
                 temperature: float = 1.0, beam_size: int = 5, max_length: int | None = None, cache: bool = True):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        for name, v in (("rounds", rounds), ("epochs_per_phase", epochs_per_phase)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if switch_every is not None and (isinstance(switch_every, bool) or not isinstance(switch_every, int)
                                         or switch_every < 1):
            raise ValueError(f"switch_every must be a positive integer or None, got {switch_every!r}")
        if student is None:
            student = copy.deepcopy(teacher.teacher if isinstance(teacher, CountedTeacher) else teacher)
            student.requires_grad_(True)
        self.student, self.vocab = student, vocab
        self.teacher = teacher if isinstance(teacher, CountedTeacher) else CountedTeacher(teacher)
        self.rounds, self.epochs_per_phase, self.switch_every = rounds, epochs_per_phase, switch_every
        self.in_domain_alpha, self.temperature = in_domain_alpha, temperature
        self.seqkd = SeqKD(student, self.teacher, vocab, beam_size=beam_size, max_length=max_length, cache=cache)
        self.in_domain = WordKD(student, self.teacher if in_domain_alpha > 0 else None, in_domain_alpha, temperature)

    def run(self, in_domain, general, batch_size: int = 64, val_loader=None, evaluate=None, seed: int = 0,
            **fit_kwargs) -> AlternationResult:
        """Adapt the student: ``in_domain`` (a :class:`~kdedu.data.TranslationSplit` with references) and
        ``general`` (general-domain sources; its targets are replaced by the teacher's beams).

        ``evaluate(student) -> dict`` (optional) runs after every phase (e.g. BLEU on both domains' test sets).
        Phase ``k`` trains with seed ``seed + k``; ``fit_kwargs`` go to every :func:`kdedu.train.fit` call.
        """
        from kdedu.data.seq_batches import translation_loader

        t0 = time.perf_counter()
        general_set = self.seqkd.transfer_set(general)                            # step 1
        transfer_time_s = time.perf_counter() - t0
        loaders = {"in-domain": (self.in_domain, translation_loader(in_domain, self.vocab, batch_size, shuffle=True,
                                                                     seed=None)),
                   "general": (self.seqkd, translation_loader(general_set, self.vocab, batch_size, shuffle=True,
                                                              seed=None))}
        if self.switch_every is None:
            phases = [(f"{name} {r}", *loaders[name]) for r in range(1, self.rounds + 1)
                      for name in ("in-domain", "general")]
        else:                                                                     # batches take turns
            mixture = _Mixture(self.in_domain, self.seqkd)
            mixed = _Alternating(loaders["in-domain"][1], loaders["general"][1], self.switch_every)
            phases = [(f"mixed {r}", mixture, mixed) for r in range(1, self.rounds + 1)]
        result = AlternationResult(self.student)
        for k, (name, method, loader) in enumerate(phases):                      # step 2
            history = fit(method, loader, val_loader, num_epochs=self.epochs_per_phase, seed=seed + k, desc=name,
                          **fit_kwargs)
            result.phases.append((name, history))
            if evaluate is not None:
                result.evaluations.append({"phase": name, **evaluate(self.student)})
        result.cost = run_cost(result.histories, self.teacher, transfer_time_s=transfer_time_s)
        result.cost["time_s"] += transfer_time_s
        return result
