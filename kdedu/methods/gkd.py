"""Generalized knowledge distillation (GKD; Agarwal et al. 2024, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes"), the on-policy distillation of chapter 16.

GKD's Algorithm 1, per batch of sources ``x``:

1. draw ``u ~ U(0, 1)``; if ``u <= lambda`` (the *student data fraction*), the targets are **sampled from the
   current student** (on-policy); otherwise they are the fixed data of the batch (references, or a Seq-KD transfer
   set: the paper's "supervised" and "sequence-level" KD are the ``lambda = 0`` cases);
2. the teacher and the student score every prefix of those targets (token-level distributions);
3. the student minimises ``sum_t D(p_t(. | x, y_<t) || p_s(. | x, y_<t))`` with ``D`` the generalized JSD with
   mixture ``beta`` (:func:`kdedu.losses.generalized_jsd_loss`: ``beta = 0`` forward KL, ``beta = 1`` reverse KL);
   no gradient flows through the sampling.

kdedu follows TRL's ``GKDTrainer``: one coin per batch (``random.random() <= lmbda``), the same divergence
(``generalized_jsd_loss`` is checked against TRL's), logits divided by ``temperature`` and no ``T**2``. TRL calls
the student data fraction ``lmbda`` (``lambda`` is a Python keyword); so does kdedu. Sampling uses the student's
softmax at ``sample_temperature`` (TRL samples at its ``temperature``, 0.9 by default, the loss's).
"""

from __future__ import annotations

import torch
from torch import nn

from kdedu import losses
from kdedu._validate import check_temperature, check_unit_interval
from kdedu.methods.costs import counted
from kdedu.methods.kd import token_rows
from kdedu.methods.rollout import STRATEGIES, generate, replace_targets
from kdedu.outputs import run
from kdedu.train import Distiller

__all__ = ["GKD"]


class GKD(Distiller):
    """GKD for a :class:`~kdedu.models.Seq2Seq` or :class:`~kdedu.models.GPT` student (``causal_lm=True``).

    Args:
        student, teacher: models with the same vocabulary; the student must decode (``prefix_scorer``).
        lmbda: the student data fraction λ in [0, 1]: the probability that a batch's targets are the student's
            samples (0: off-policy, the batch's own targets; 1: always on-policy).
        beta: the generalized JSD's mixture β in [0, 1] (0 forward KL, 0.5 JSD, 1 reverse KL).
        temperature: the loss's softmax temperature (no ``T**2``, as in TRL).
        sample_temperature, max_length: of the student's samples (default: the source width + 10 tokens).
        rollin: ``"sample"`` (GKD) or ``"greedy"``.
        seed: seeds the method's own generator (the coins and the samples); ``None``: the seed ``fit`` set
            (``torch.initial_seed()``), read at the first epoch without drawing from torch's global stream.

    ``forward`` returns ``{"kd": generalized JSD}``. Counters: ``batches`` / ``on_policy_batches`` and
    ``student_tokens``; the teacher is a :class:`~kdedu.methods.costs.CountedTeacher`; :meth:`cost` adds a
    history's wall time.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, lmbda: float = 0.5, beta: float = 0.5,
                 temperature: float = 1.0, sample_temperature: float = 1.0, max_length: int | None = None,
                 rollin: str = "sample", causal_lm: bool = False, seed: int | None = None):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module: it scores the student's samples")
        if not hasattr(student, "prefix_scorer"):
            raise TypeError(f"student must decode (have prefix_scorer, as kdedu's Seq2Seq and GPT do), got "
                            f"{type(student).__name__}")
        if rollin not in STRATEGIES:
            raise ValueError(f"rollin must be one of {STRATEGIES}, got {rollin!r}")
        super().__init__(student, counted(teacher))
        self.lmbda = check_unit_interval("lmbda", lmbda)
        self.beta = check_unit_interval("beta", beta)
        self.temperature = check_temperature(temperature)
        self.sample_temperature = check_temperature(sample_temperature)
        self.max_length, self.rollin, self.causal_lm, self.seed = max_length, rollin, bool(causal_lm), seed
        self.generator: torch.Generator | None = None
        self.batches = self.on_policy_batches = self.student_tokens = 0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.generator is None or epoch == 0:
            seed = self.seed if self.seed is not None else torch.initial_seed()
            self.generator = torch.Generator().manual_seed(int(seed) % 2**63)

    def on_policy(self) -> bool:
        """Step 1's coin: True with probability ``lmbda`` (``u <= lmbda`` with ``u ~ U[0, 1)``, as TRL)."""
        if self.generator is None:
            self.on_epoch_start(0, 1)
        u = float(torch.rand((), generator=self.generator))
        return u <= self.lmbda

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError("GKD needs dict batches with labels (kdedu.data.translation_loader)")
        if self.training:
            self.batches += 1
            if self.lmbda > 0 and self.on_policy():                              # step 1: the student's samples
                rows = torch.arange(y.shape[0], device=y.device)
                tokens, finished = generate(self.student, x, rows, self.causal_lm, self.rollin,
                                            self.sample_temperature, self.max_length, self.generator)
                x, y = replace_targets(x, y, rows.tolist(), tokens, finished, self.causal_lm)
                self.on_policy_batches += 1
                self.student_tokens += sum(len(t) for t in tokens)
        z_t = self.teacher_logits(x)                                              # step 2
        z_s = run(self.student, x).require_logits("the student")
        if z_s.shape != z_t.shape:
            raise ValueError(f"the student's logits {tuple(z_s.shape)} and the teacher's {tuple(z_t.shape)} differ "
                             f"(different vocabularies?)")
        z_s, _, keep = token_rows(z_s, y, x, self.causal_lm, self.student)
        z_t = z_t[:, :-1] if self.causal_lm else z_t
        return {"kd": losses.generalized_jsd_loss(z_s, z_t, self.beta, self.temperature, mask=keep)}  # step 3

    def cost(self, history) -> dict:
        from kdedu.methods.costs import run_cost

        return run_cost(history, self.teacher, on_policy_batches=self.on_policy_batches, batches=self.batches,
                        student_tokens=self.student_tokens)
