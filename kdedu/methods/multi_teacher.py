"""Several teachers as one (seed deck 003, "Additional Teacher": "incorporate multiple teacher predictions by
averaging their output logits").

Two ways to average n teachers with logits ``z_1 .. z_n`` at temperature ``T`` (``p_i = softmax(z_i / T)``):

* **logits**: ``z = (1/n) sum_i z_i``. Then ``softmax(z / T)_c = prod_i p_ic^(1/n) / Z`` with
  ``Z = sum_c prod_i p_ic^(1/n)``: the *normalised geometric mean* of the teachers' distributions (a product of
  experts: a class stays likely only if every teacher finds it likely). The same at every ``T``.
* **probabilities**: ``p = (1/n) sum_i p_i``, the *arithmetic mean* (a mixture: a class stays likely if any
  teacher finds it likely). It depends on ``T``; :func:`average_teachers` returns ``T log p``, logits whose
  softmax at ``T`` is ``p``.

When they agree and when not. By the AM-GM inequality, ``prod_i p_ic^(1/n) <= (1/n) sum_i p_ic`` for every class,
with equality exactly when the teachers give class ``c`` the same probability; summing over classes, ``Z <= 1``.
If the teachers agree (``p_i`` all equal, i.e. logits equal up to a constant per row), both averages are that
distribution, exactly. If they disagree, ``Z < 1`` and the two differ unless the ratio ``AM_c / GM_c`` happens to
be the same for every class (two teachers that mirror each other on two classes are such a case).

:class:`MultiTeacher` wraps the teachers as one module, so every method that takes a teacher takes several:
``KD(student, MultiTeacher([t1, t2], mode="probs", temperature=4.0), temperature=4.0)``, and
``MetaDistil(student, MultiTeacher([...]), ...)`` meta-trains them all (``teacher_params=["teachers.0"]``: one).
Teachers with their own vocabularies (BERT and RoBERTa) each read the student's sentences through
:class:`Retokenized`; ``precompute_teacher(MultiTeacher(...), loader)`` stores the averaged logits once.

A *pre-fine-tuned* student (the deck's "1 epoch fine-tuning": the student reads the material before the lecture)
needs no helper: it is two :func:`kdedu.train.fit` calls, ``fit(Supervised(student), loader, num_epochs=k)`` and
then ``fit(KD(student, teacher), loader, ...)`` (or ``MetaDistil``). The second call starts a fresh optimiser
(new Adam moments), as a separate fine-tuning run does; pass another ``seed`` to the second call if the two
stages should not draw the same batch order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdedu._validate import check_logits, check_temperature
from kdedu.methods.teacher_outputs import _Collate
from kdedu.outputs import pad_token_id, run

__all__ = ["average_teachers", "MultiTeacher", "Retokenized", "average_stores", "MODES"]

MODES = ("logits", "probs")


def average_teachers(logits: Sequence[torch.Tensor], mode: str = "logits", temperature: float = 1.0) -> torch.Tensor:
    """One set of logits ``[..., C]`` for n teachers' logits: their mean (``mode="logits"``), or ``T log`` of the
    mean of their softmax at ``T`` (``mode="probs"``), so that ``softmax(result / T)`` is the mean distribution."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    temperature = check_temperature(temperature)
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence) or len(logits) == 0:
        raise TypeError("logits must be a non-empty list of logit tensors, one per teacher")
    for i, z in enumerate(logits):
        check_logits(f"logits[{i}]", z)
        if z.shape != logits[0].shape:
            raise ValueError(f"logits[{i}] has shape {tuple(z.shape)}, logits[0] {tuple(logits[0].shape)}: the "
                             f"teachers must give the same rows and classes")
    z = torch.stack(list(logits))                                         # (n, ..., C)
    if mode == "logits":
        return z.mean(0)
    log_p = torch.log_softmax(z / temperature, dim=-1)                    # (n, ..., C)
    return temperature * (torch.logsumexp(log_p, dim=0) - torch.log(torch.tensor(float(len(logits)))))


def average_stores(stores: Sequence[DataLoader], mode: str = "logits", temperature: float = 1.0) -> DataLoader:
    """One precomputed loader for n teachers: the loaders ``stores`` come from :func:`~kdedu.methods.
    precompute_teacher` over the same examples in the same order (one per teacher, e.g. ``precompute_teacher(t,
    text_loader(split, tok), seed=None)``), and the result carries :func:`average_teachers` of their logits.

    Each teacher runs over the transfer set once, and its logits can then be averaged in every way and
    combination. The result shares the first loader's examples and batch sampler (the same batches in the same
    order under the same ``fit`` seed) and keeps its other stored outputs (hidden states, attention maps).
    """
    if isinstance(stores, DataLoader) or not isinstance(stores, Sequence) or len(stores) == 0:
        raise TypeError("stores must be a non-empty list of loaders from precompute_teacher, one per teacher")
    collates = []
    for i, loader in enumerate(stores):
        collate = getattr(loader, "collate_fn", None)
        if not isinstance(loader, DataLoader) or not isinstance(collate, _Collate):
            raise TypeError(f"stores[{i}] must be a loader returned by precompute_teacher, got {type(loader).__name__}")
        collates.append(collate)
    first = collates[0]
    for i, c in enumerate(collates[1:], 1):
        if c.store.input_ids.shape != first.store.input_ids.shape or not torch.equal(c.store.input_ids,
                                                                                    first.store.input_ids) \
                or not torch.equal(c.y, first.y):
            raise ValueError(f"stores[{i}] holds other examples (or another order) than stores[0]: precompute every "
                             "teacher over the same unshuffled loader")
    logits = average_teachers([c.store.logits.float() for c in collates], mode, temperature)
    collate = _Collate(replace(first.store, logits=logits.to(first.store.logits.dtype)), first.y, first.dtype)
    return DataLoader(stores[0].dataset, batch_sampler=stores[0].batch_sampler, collate_fn=collate)


class MultiTeacher(nn.Module):
    """n teachers as one: ``forward(x)`` runs each on ``x`` and returns :func:`average_teachers` of their logits.

    ``mode="probs"`` averages the distributions at ``temperature``, which must then be the KD loss's temperature.
    """

    def __init__(self, teachers: Sequence[nn.Module], mode: str = "logits", temperature: float = 1.0):
        super().__init__()
        if isinstance(teachers, nn.Module) or not isinstance(teachers, Sequence) or len(teachers) == 0:
            raise TypeError("teachers must be a non-empty list of modules")
        for i, t in enumerate(teachers):
            if not isinstance(t, nn.Module):
                raise TypeError(f"teachers[{i}] must be a torch.nn.Module, got {type(t).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.teachers = nn.ModuleList(teachers)
        self.mode, self.temperature = mode, check_temperature(temperature)
        self.train(any(t.training for t in teachers))  # teachers in eval mode make a wrapper in eval mode

    @property
    def pad_token_id(self) -> int | None:
        """The teachers' padding id when they share one (so a bare ``input_ids`` batch gets its attention mask)."""
        pads = {pad_token_id(t) for t in self.teachers}
        return pads.pop() if len(pads) == 1 else None

    def forward(self, x=None, **inputs) -> torch.Tensor:
        """``x``: what each teacher takes (a tensor, a batch object); or keyword inputs (``input_ids=``,
        ``attention_mask=``), passed to each teacher as such."""
        if inputs:
            x = {**({"input_ids": x} if x is not None else {}), **inputs}
        z = [run(t, x).require_logits(f"teacher {i}") for i, t in enumerate(self.teachers)]
        return average_teachers(z, self.mode, self.temperature)


class Retokenized(nn.Module):
    """A teacher that reads its own tokenization of the student's sentences (the deck's BERT + RoBERTa: two
    vocabularies, one student).

    ``forward(input_ids, attention_mask=None)`` decodes the student's token ids (``student_tokenizer``), encodes
    the text again with ``teacher_tokenizer`` (padded, cut at ``max_length``) and returns the teacher's logits.
    Decoding a WordPiece batch gives back the lower-cased words, which is what an uncased student saw. ``teacher``
    must give class logits for ``(input_ids, attention_mask)``.
    """

    def __init__(self, teacher: nn.Module, teacher_tokenizer, student_tokenizer, max_length: int = 128):
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if not callable(teacher_tokenizer):
            raise TypeError(f"teacher_tokenizer must be a tokenizer, got {type(teacher_tokenizer).__name__}")
        if not hasattr(student_tokenizer, "batch_decode"):
            raise TypeError(f"student_tokenizer must be a Hugging Face tokenizer (with batch_decode), got "
                            f"{type(student_tokenizer).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.teacher, self.max_length = teacher, max_length
        self.teacher_tokenizer, self.student_tokenizer = teacher_tokenizer, student_tokenizer
        self.pad_token_id = student_tokenizer.pad_token_id  # of the ids it is given

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise TypeError("input_ids must be a (B, L) integer tensor of the student's token ids")
        if attention_mask is not None:
            input_ids = input_ids.masked_fill(attention_mask == 0, self.pad_token_id)
        texts = self.student_tokenizer.batch_decode(input_ids, skip_special_tokens=True)
        enc = self.teacher_tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
        inputs = {k: enc[k].to(input_ids.device) for k in ("input_ids", "attention_mask")}
        return run(self.teacher, inputs).require_logits("the retokenized teacher")
