"""ImitKD: distillation as imitation learning (Lin et al. 2020, "Autoregressive Knowledge Distillation through
Imitation Learning"; seed deck 002, "Can we do better? Imitation Learning").

Word-level KD and Seq-KD train the student on prefixes it will never write itself: the reference's or the
teacher's. At test time it reads its own, mistakes included (exposure bias). ImitKD treats the teacher as the
expert of DAgger (Ross et al. 2011): the student *rolls in* (writes the prefixes), the teacher labels every prefix
with what it would say next, and the student learns those labels. Its Algorithm 1, per training iteration ``i``:

1. the roll-in policy is a mixture: a target comes from the data with probability ``beta_i`` (the paper's β; here
   ``teacher_rollin``, because kdedu keeps ``beta`` for GKD's JSD), else the *current student* generates it;
2. the teacher scores every prefix of every target: its next-token distribution ``p_t(. | x, y_<t)``;
3. the student minimises ``sum_t loss(p_t(. | x, y_<t), p_s(. | x, y_<t))``;
4. ``beta_i`` decays from 1 (pure data: word-level KD) towards 0 (the student's own prefixes).

As in the authors' code (``Seq2SeqDistillTrainer``), the choice in step 1 is made per *sentence* (a coin per
row), the student samples its roll-ins (they sample from its top 5; here from its whole distribution, or greedily)
in eval mode, and β decays ``"linear"``-ly (``1 - p``) or ``"exponential"``-ly (``200 ** -p``, their default) with
the fraction ``p`` of training done. They update β after every batch; kdedu updates it once per epoch, DAgger's
iteration, in :meth:`ImitKD.on_epoch_start` (as every kdedu schedule). "The data" is what the loader holds: the
references, or a Seq-KD transfer set (``SeqKD(...).loader(split)``: the paper's ImitKD*).

Two oracles (``oracle``): ``"distribution"`` (default) is the KD loss ``T^2 KL(p_t || p_s)`` on every prefix (the
paper's "full" variant, the configs ``*_full.yaml``); ``"argmax"`` trains with cross-entropy on the teacher's most
likely token on the student's prefixes and on the data's own tokens on the data's rows (the paper's main ImitKD).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_temperature
from kdedu.methods.costs import counted
from kdedu.methods.kd import cross_entropy, token_rows
from kdedu.methods.rollout import STRATEGIES, generate, replace_targets
from kdedu.outputs import run
from kdedu.train import Distiller

__all__ = ["ImitKD", "teacher_rollin_schedule", "SCHEDULES", "ORACLES"]

SCHEDULES = ("linear", "exponential", "constant")
ORACLES = ("distribution", "argmax")


def teacher_rollin_schedule(progress: float, schedule: str = "exponential", base: float = 200.0,
                            start: float = 1.0) -> float:
    """β after a fraction ``progress`` in [0, 1] of training: ``"linear"`` ``start * (1 - p)``, ``"exponential"``
    ``start * base ** -p`` (Lin et al.'s default, base 200), ``"constant"`` ``start``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")
    if schedule == "linear":
        return start * (1.0 - progress)
    if schedule == "exponential":
        return start * base ** (-progress)
    return start


class ImitKD(Distiller):
    """ImitKD for a :class:`~kdedu.models.Seq2Seq` or :class:`~kdedu.models.GPT` student (``causal_lm=True``).

    Args:
        student, teacher: models with the same vocabulary; the student must decode (``prefix_scorer``).
        temperature: of the KD loss (``oracle="distribution"``).
        schedule, teacher_rollin, base: β at epoch ``e`` of ``E`` is ``teacher_rollin_schedule(e / E, schedule,
            base, start=teacher_rollin)``: the probability that a row keeps its data target. ``schedule="constant"``
            holds β at ``teacher_rollin`` (1: word-level KD; 0: every roll-in is the student's).
        oracle: ``"distribution"`` or ``"argmax"`` (module docstring).
        rollin: how the student writes its roll-ins: ``"sample"`` or ``"greedy"``; ``sample_temperature`` for
            sampling; ``max_length`` of a roll-in (default: the source width + 10).
        seed: seeds the method's own generator (the coins and the samples). ``None``: ``torch.initial_seed()``
            at the first epoch, i.e. the seed ``fit`` set, without drawing from torch's global random stream, so
            the batch order and dropout masks stay those of any other method trained with the same seed.

    ``forward`` returns ``{"kd": ...}``. Counters: ``rollin_rows`` / ``student_rows`` (rows seen / rolled in by the
    student), ``student_tokens`` (tokens it generated); the teacher is a
    :class:`~kdedu.methods.costs.CountedTeacher`; :meth:`cost` adds the wall time of a history.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, temperature: float = 1.0,
                 schedule: str = "exponential", teacher_rollin: float = 1.0, base: float = 200.0,
                 oracle: str = "distribution", rollin: str = "sample", sample_temperature: float = 1.0,
                 max_length: int | None = None, causal_lm: bool = False, seed: int | None = None):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module: it labels every prefix")
        if not hasattr(student, "prefix_scorer"):
            raise TypeError(f"student must decode (have prefix_scorer, as kdedu's Seq2Seq and GPT do), got "
                            f"{type(student).__name__}")
        super().__init__(student, counted(teacher))
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if oracle not in ORACLES:
            raise ValueError(f"oracle must be one of {ORACLES}, got {oracle!r}")
        if rollin not in STRATEGIES:
            raise ValueError(f"rollin must be one of {STRATEGIES}, got {rollin!r}")
        if not 0.0 <= teacher_rollin <= 1.0:
            raise ValueError(f"teacher_rollin must be in [0, 1], got {teacher_rollin!r}")
        if not (base > 1 and math.isfinite(base)):
            raise ValueError(f"base must be a finite number > 1, got {base!r}")
        self.temperature = check_temperature(temperature)
        self.sample_temperature = check_temperature(sample_temperature)
        self.schedule, self.start, self.base, self.oracle, self.rollin = schedule, teacher_rollin, base, oracle, rollin
        self.max_length, self.causal_lm, self.seed = max_length, bool(causal_lm), seed
        self.teacher_rollin = teacher_rollin                 # β of the current epoch
        self.generator: torch.Generator | None = None
        self.rollin_rows = self.student_rows = self.student_tokens = 0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Step 4: β for this epoch; at the first epoch, seed the method's generator."""
        if self.generator is None or epoch == 0:
            seed = self.seed if self.seed is not None else torch.initial_seed()
            self.generator = torch.Generator().manual_seed(int(seed) % 2**63)
        self.teacher_rollin = teacher_rollin_schedule(epoch / max(num_epochs, 1), self.schedule, self.base,
                                                      self.start)

    def rollin_rows_of(self, batch_size: int) -> torch.Tensor:
        """Step 1: the rows whose roll-in the student writes (each with probability ``1 - teacher_rollin``)."""
        if self.generator is None:
            self.on_epoch_start(0, 1)
        coins = torch.rand(batch_size, generator=self.generator)                 # (B,)
        return (coins >= self.teacher_rollin).nonzero()[:, 0]

    def roll_in(self, x: dict, y: torch.Tensor):
        """Steps 1-2 of the roll-in: ``(x, y)`` with the chosen rows' targets replaced by the student's outputs."""
        rows = self.rollin_rows_of(y.shape[0]) if self.training else torch.zeros(0, dtype=torch.long)
        self.rollin_rows += y.shape[0]
        if len(rows) == 0:
            return x, y, rows
        tokens, finished = generate(self.student, x, rows.to(y.device), self.causal_lm, self.rollin,
                                    self.sample_temperature, self.max_length, self.generator)
        self.student_rows += len(rows)
        self.student_tokens += sum(len(t) for t in tokens)
        x, y = replace_targets(x, y, rows.tolist(), tokens, finished, self.causal_lm)
        return x, y, rows

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError("ImitKD needs dict batches with labels (kdedu.data.translation_loader)")
        x, y, rows = self.roll_in(x, y)
        z_t = self.teacher_logits(x)                                              # step 2: (B, T, V)
        z_s = run(self.student, x).require_logits("the student")                  # (B, T, V)
        if z_s.shape != z_t.shape:
            raise ValueError(f"the student's logits {tuple(z_s.shape)} and the teacher's {tuple(z_t.shape)} differ "
                             f"(different vocabularies?)")
        z_s, labels, keep = token_rows(z_s, y, x, self.causal_lm, self.student)
        z_t = z_t[:, :-1] if self.causal_lm else z_t
        if self.oracle == "distribution":                                         # step 3
            return {"kd": losses.kd_loss(z_s, z_t, self.temperature, mask=keep)}
        oracle = labels.clone()
        if len(rows):                                                             # the teacher's token on student rows
            oracle[rows.to(oracle.device)] = z_t[rows.to(z_t.device)].argmax(-1)
        return {"kd": cross_entropy(z_s, oracle, keep)}

    def cost(self, history) -> dict:
        """:func:`~kdedu.methods.costs.run_cost` of ``history`` with this method's teacher and student counters."""
        from kdedu.methods.costs import run_cost

        return run_cost(history, self.teacher, student_rows=self.student_rows, student_tokens=self.student_tokens)
