"""What a distillation method costs: its wall time and how often it asks the teacher.

The methods of Part V differ less in their losses than in what they pay for them: Seq-KD decodes the training
set once with beam search, ImitKD and GKD make the student generate during training, a selective method stops
asking a teacher once the student has caught up, and an imitation attack may only buy text. kdedu measures
these costs instead of quoting them:

* :class:`CountedTeacher` wraps a teacher and counts every question put to it: ``teacher_calls`` (forward passes,
  and decoding steps of :mod:`kdedu.models.decoding`) and ``teacher_tokens`` (next-token distributions it
  returned: one per scored target position, padding excluded where the batch marks it, and one per prefix of a
  decoding step). The methods of Part V wrap their teachers in it themselves.
* :func:`run_cost` adds the wall time of one or more :func:`kdedu.train.fit` histories (the sum of their epochs'
  ``time_s``, evaluation included) to the counts.

A transfer set read from the cache (:func:`kdedu.methods.teacher_beams`) costs no teacher call in the run that
reads it: the counts are what *that* run paid. Pass ``cache=False`` to measure the whole price once.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from kdedu.outputs import model_outputs

__all__ = ["CountedTeacher", "run_cost", "counted"]


class CountedTeacher(nn.Module):
    """A teacher that counts the questions put to it (``calls``, ``tokens``); it answers exactly as ``teacher``.

    ``forward(*args, **kwargs)`` runs the teacher and counts one call and the positions it scored: the rows of its
    ``[..., V]`` logits, minus the padding when the keyword inputs say where it is (``decoder_attention_mask`` for
    an encoder-decoder batch, else an ``attention_mask`` of the rows' shape). ``prefix_scorer(input_ids, mask)``
    returns the teacher's decoding step (:mod:`kdedu.models.decoding`) counting one call and ``N`` tokens per step
    over ``N`` prefixes. :meth:`cost` returns ``{"teacher_calls", "teacher_tokens"}``; :meth:`reset` zeroes them.
    """

    def __init__(self, teacher: nn.Module):
        super().__init__()
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        if isinstance(teacher, CountedTeacher):
            raise TypeError("teacher is already a CountedTeacher: wrap it once")
        self.teacher = teacher
        self.calls = 0
        self.register_buffer("_tokens", torch.zeros((), dtype=torch.long), persistent=False)  # on the device
        self.train(teacher.training)

    @property
    def vocab(self):
        """The wrapped teacher's vocabulary (``kdedu.zoo.seq2seq_teacher`` sets one), if any."""
        return getattr(self.teacher, "vocab", None)

    @property
    def tokens(self) -> int:
        return int(self._tokens)

    def forward(self, *args, **kwargs):
        out = self.teacher(*args, **kwargs)
        logits = model_outputs(out).logits
        self.calls += 1
        if logits is not None:
            rows = tuple(logits.shape[:-1])
            mask = kwargs.get("decoder_attention_mask") if kwargs.get("decoder_input_ids") is not None \
                else kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and tuple(mask.shape) == rows:
                self._tokens += mask.sum().to(self._tokens.device)          # no host sync
            else:
                self._tokens += int(torch.Size(rows).numel())
        return out

    def prefix_scorer(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        if not hasattr(self.teacher, "prefix_scorer"):
            raise TypeError(f"the teacher ({type(self.teacher).__name__}) has no prefix_scorer: it cannot decode")
        inner = self.teacher.prefix_scorer(input_ids, attention_mask)

        def step(prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self._tokens += int(prefixes.shape[0])
            return inner(prefixes, rows)

        return step

    def cost(self) -> dict:
        return {"teacher_calls": self.calls, "teacher_tokens": self.tokens}

    def reset(self) -> None:
        self.calls = 0
        self._tokens.zero_()


def counted(teacher: nn.Module | None) -> CountedTeacher | None:
    """``teacher`` wrapped in a :class:`CountedTeacher` (itself if it already is one; None stays None)."""
    if teacher is None or isinstance(teacher, CountedTeacher):
        return teacher
    return CountedTeacher(teacher)


def run_cost(histories, *teachers, **extra) -> dict:
    """``{"time_s", "epochs", "teacher_calls", "teacher_tokens", **extra}`` of a run.

    ``histories``: one :class:`~kdedu.train.History` or a list of them (a procedure of several ``fit`` calls);
    ``time_s`` sums their epochs' ``time_s``. ``teachers``: :class:`CountedTeacher` objects (or mappings of them),
    whose counts are added up. ``extra`` entries are added as given (seconds spent outside ``fit``, student samples).
    """
    from kdedu.train import History

    hs = [histories] if isinstance(histories, History) else list(histories)
    if not all(isinstance(h, History) for h in hs):
        raise TypeError("histories must be a kdedu.train.History or a list of them")
    flat = []
    for t in teachers:
        flat += list(t.values()) if isinstance(t, Mapping) else [t]
    if not all(isinstance(t, CountedTeacher) for t in flat):
        raise TypeError("teachers must be CountedTeacher objects (kdedu.methods.costs.counted(teacher))")
    out = {"time_s": float(sum(sum(h["time_s"]) for h in hs)), "epochs": sum(len(h) for h in hs),
           "teacher_calls": sum(t.calls for t in flat), "teacher_tokens": sum(t.tokens for t in flat)}
    out.update(extra)
    return out
