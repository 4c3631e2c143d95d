"""kNN augmentation and Minimax-kNN (Kamalloo, Rezagholizadeh, Passban & Ghodsi, Findings of ACL 2021; seed deck
000, "Improving Data Augmentation for KD: Semantic Data Augmentation").

Both methods distil on the training sentences (the *originals*) plus sentences retrieved for them from an unlabelled
pool (:mod:`kdedu.data.retrieval`), which the teacher labels. Every example is a row of a :class:`TeacherRows`
store: token ids and the frozen teacher's logits, computed once (:func:`teacher_rows`). A training batch is a batch
of original row indices ``idx`` with their labels (:func:`index_loader`); the method adds augmented rows to it:

* :class:`NeighbourKD`, kNN augmentation (SentAugment-style): every original brings **all** its ``K`` listed
  neighbours. With a table of random pool rows instead of neighbours, it is "plus K random pool sentences"; with
  ``K = 0``, plain KD on the originals.
* :class:`MinimaxKNN`, the paper's method. At **every training step**, for the originals of the batch:

  1. *maximisation*: run the current student (no gradient) on each original's ``K`` neighbours and keep the ``k1``
     with the largest divergence ``KL(p_t || p_s)`` at temperature ``T`` (:func:`most_divergent`);
  2. *minimisation*: one gradient step on ``(1 - alpha) CE + alpha KD`` on the originals plus
     ``aug_weight * KD`` on the kept neighbours.

  Re-selecting at every step is the official code's schedule (its ``MinimaxKnnHead`` scores the neighbours of each
  mini-batch with the student of that moment): the selection always follows the current student, and costs one
  forward pass without gradient over ``b x K`` neighbours per step, measured in :attr:`MinimaxKNN.selection_time_s`.

Loss terms: ``"ce"`` and ``"kd"`` on the originals (as :class:`kdedu.methods.KD`), ``"kd_aug"`` on the augmented rows
(the official code's ``alpha_aug``, by default ``alpha``). Teacher and student must share the tokenizer: the stored
token ids feed the student.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from kdedu import losses
from kdedu._validate import check_nonnegative, check_pair, check_temperature, check_unit_interval
from kdedu.data.text import TextSplit, text_loader, tokenize, trim_padding
from kdedu.methods.kd import cross_entropy
from kdedu.outputs import run
from kdedu.train import Distiller, predict

__all__ = ["TeacherRows", "teacher_rows", "most_divergent", "index_loader", "StepBatches", "NeighbourKD",
           "MinimaxKNN"]


@dataclass
class TeacherRows:
    """Sentences as rows: ``input_ids``/``attention_mask`` (N, L) right-padded with ``pad_id``, and the teacher's
    ``logits`` (N, C)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    logits: torch.Tensor
    pad_id: int = 0

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def teacher_rows(teacher: nn.Module, sentences, tokenizer, batch_size: int = 128, max_length: int = 64,
                 device=None) -> TeacherRows:
    """Tokenise ``sentences`` with ``tokenizer`` and run the frozen ``teacher`` on them once (no gradient)."""
    if isinstance(sentences, TextSplit):
        sentences = sentences.sentences
    enc = tokenize(list(sentences), tokenizer, max_length)                     # (N, L) padded to the longest
    split = TextSplit(list(sentences), torch.zeros(len(sentences), dtype=torch.long))
    logits, _ = predict(teacher, text_loader(split, tokenizer, batch_size, max_length=max_length), device)
    pad = getattr(tokenizer, "pad_token_id", None)
    return TeacherRows(enc["input_ids"], enc["attention_mask"], logits.float(), 0 if pad is None else int(pad))


def most_divergent(teacher_logits: torch.Tensor, student_logits: torch.Tensor, k1: int,
                   temperature: float = 1.0) -> torch.Tensor:
    """The positions of the ``k1`` most divergent candidates of each row: ``(b, k1)`` indices into ``K``.

    ``teacher_logits`` and ``student_logits`` are ``(b, K, C)``: ``K`` candidates per original. The divergence of a
    candidate is ``T^2 KL(p_t || p_s)`` at temperature ``T`` (:func:`kdedu.losses.kd_loss` per row, the factor ``T^2``
    changes no order); the result lists the ``k1`` largest in decreasing order (Minimax-kNN's maximisation step).
    """
    check_pair(student_logits, teacher_logits)
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be (b, K, C), got {tuple(teacher_logits.shape)}")
    K = teacher_logits.shape[1]
    if isinstance(k1, bool) or not isinstance(k1, int) or not 1 <= k1 <= K:
        raise ValueError(f"k1 must be an integer in [1, K = {K}], got {k1!r}")
    d = losses.kd_loss(student_logits, teacher_logits, check_temperature(temperature), reduction="none")  # (b, K)
    return torch.sort(d, dim=1, descending=True, stable=True).indices[:, :k1]


class StepBatches(Sampler):
    """Exactly ``steps`` batches of ``batch_size`` indices of ``range(n)``, walking through successive random
    permutations (each index once per pass, passes continuing across batch boundaries).

    This is how the kNN methods compare at **equal compute**: every variant takes the same number of optimiser
    steps over the same number of examples, whatever the number of originals per batch. ``seed=None`` draws the
    order from torch's global RNG when iterated, so ``kdedu.train.fit(..., seed=s)`` fixes it.
    """

    def __init__(self, n: int, batch_size: int, steps: int, seed: int | None = None):
        for name, v in (("n", n), ("batch_size", batch_size), ("steps", steps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if batch_size > n:
            raise ValueError(f"batch_size ({batch_size}) must not exceed the number of originals n ({n})")
        self.n, self.batch_size, self.steps = n, batch_size, steps
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __iter__(self):
        g = self.generator
        if g is None:
            g = torch.Generator().manual_seed(int(torch.randint(2**62, ()).item()))
        need = self.steps * self.batch_size
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(-(-need // self.n))])[:need]
        return iter(order.view(self.steps, self.batch_size).tolist())

    def __len__(self) -> int:
        return self.steps


def index_loader(labels: torch.Tensor, batch_size: int, steps: int, seed: int | None = None) -> DataLoader:
    """Batches ``(idx (b,), y (b,))`` of original row indices and their labels, ``steps`` of them
    (:class:`StepBatches`), for :func:`kdedu.train.fit` with :class:`NeighbourKD` or :class:`MinimaxKNN`."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise TypeError("labels must be a (n,) tensor of the originals' labels")
    n = labels.shape[0]
    return DataLoader(TensorDataset(torch.arange(n), labels), batch_sampler=StepBatches(n, batch_size, steps, seed))


def _widen(rows: TeacherRows, width: int) -> TeacherRows:
    """``rows`` right-padded to ``width`` columns (padding id, attention mask 0)."""
    extra = width - rows.input_ids.shape[1]
    if extra == 0:
        return rows
    ids = torch.cat([rows.input_ids, rows.input_ids.new_full((len(rows), extra), rows.pad_id)], 1)
    mask = torch.cat([rows.attention_mask, rows.attention_mask.new_zeros((len(rows), extra))], 1)
    return TeacherRows(ids, mask, rows.logits, rows.pad_id)


class NeighbourKD(Distiller):
    """KD on the originals plus **all** their listed augmented rows (kNN augmentation; random rows; none).

    Args:
        student: reads the stored token ids (``student(input_ids, attention_mask)``; any model :mod:`kdedu.outputs`
            can call).
        originals: :class:`TeacherRows` of the training sentences (row ``i`` is original ``i``).
        pool: :class:`TeacherRows` of the unlabelled sentences the augmented rows come from.
        neighbours: ``(n, K)`` long tensor: the pool rows of original ``i`` (``K = 0``: plain KD).
        alpha, temperature: as :class:`kdedu.methods.KD`, on the originals.
        aug_weight: weight of the KD term on the augmented rows (default ``alpha``).
    """

    def __init__(self, student: nn.Module, originals: TeacherRows, pool: TeacherRows, neighbours: torch.Tensor,
                 alpha: float = 0.5, temperature: float = 1.0, aug_weight: float | None = None):
        super().__init__(student)
        for name, rows in (("originals", originals), ("pool", pool)):
            if not isinstance(rows, TeacherRows):
                raise TypeError(f"{name} must be TeacherRows (kdedu.methods.minimax_knn.teacher_rows), got "
                                f"{type(rows).__name__}")
        if not isinstance(neighbours, torch.Tensor) or neighbours.dim() != 2 or neighbours.is_floating_point():
            raise TypeError("neighbours must be an (n, K) integer tensor of pool rows")
        if neighbours.shape[0] != len(originals):
            raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {len(originals)} originals")
        if neighbours.numel() and not (0 <= int(neighbours.min()) and int(neighbours.max()) < len(pool)):
            raise ValueError(f"neighbours must index the pool's {len(pool)} rows")
        if originals.logits.shape[1] != pool.logits.shape[1]:
            raise ValueError("originals and pool have teacher logits of different class counts")
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.aug_weight = self.alpha if aug_weight is None else check_nonnegative("aug_weight", aug_weight)
        width = max(originals.input_ids.shape[1], pool.input_ids.shape[1])   # one width, so batches concatenate
        originals, pool = _widen(originals, width), _widen(pool, width)
        for name, t in (("orig_ids", originals.input_ids), ("orig_mask", originals.attention_mask),
                        ("orig_logits", originals.logits), ("pool_ids", pool.input_ids),
                        ("pool_mask", pool.attention_mask), ("pool_logits", pool.logits),
                        ("neighbours", neighbours.long())):
            self.register_buffer(name, t, persistent=False)                   # moved by .to(device), not saved
        self.seen_aug = 0                                                      # augmented rows trained on so far

    @property
    def K(self) -> int:
        return self.neighbours.shape[1]

    def select(self, idx: torch.Tensor) -> torch.Tensor:
        """The pool rows to add to the originals ``idx``: ``(b, k)``. Here all ``K`` listed rows."""
        return self.neighbours[idx]

    def _logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = trim_padding(mask, 0)                                          # drop all-padding columns
        return run(self.student, {"input_ids": ids[:, :width], "attention_mask": mask[:, :width]}).require_logits(
            "the student")

    def forward(self, idx: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        rows = self.select(idx).reshape(-1)                                    # (b * k,) pool rows
        ids = torch.cat([self.orig_ids[idx], self.pool_ids[rows]])             # originals first, then augmented
        mask = torch.cat([self.orig_mask[idx], self.pool_mask[rows]])
        z = self._logits(ids, mask)                                            # (b + b*k, C): one pass for both
        z_o, z_a = z[:len(idx)], z[len(idx):]
        terms = {"ce": (1 - self.alpha) * cross_entropy(z_o, y)} if y is not None and self.alpha < 1 else {}
        terms["kd"] = self.alpha * losses.kd_loss(z_o, self.orig_logits[idx], self.temperature)
        if len(rows):
            terms["kd_aug"] = self.aug_weight * losses.kd_loss(z_a, self.pool_logits[rows], self.temperature)
            self.seen_aug += len(rows)
        return terms


class MinimaxKNN(NeighbourKD):
    """Minimax-kNN: of each original's ``K`` neighbours, train on the ``k1`` on which teacher and student disagree
    most under the **current** student, re-selected at every step (module docstring).

    ``selection_time_s`` adds up the time spent selecting; ``rank_counts`` (K,) counts how often each neighbour rank
    (0 = the nearest) was kept; ``last_selection`` holds the pool rows of the last step (b, k1).
    """

    def __init__(self, student: nn.Module, originals: TeacherRows, pool: TeacherRows, neighbours: torch.Tensor,
                 k1: int, alpha: float = 0.5, temperature: float = 1.0, aug_weight: float | None = None):
        super().__init__(student, originals, pool, neighbours, alpha, temperature, aug_weight)
        if isinstance(k1, bool) or not isinstance(k1, int) or not 1 <= k1 <= self.K:
            raise ValueError(f"k1 must be an integer in [1, K = {self.K}] (the neighbours per original), got {k1!r}")
        self.k1 = k1
        self.selection_time_s = 0.0
        self.rank_counts = torch.zeros(self.K, dtype=torch.long)
        self.last_selection: torch.Tensor | None = None

    @torch.no_grad()
    def select(self, idx: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        cand = self.neighbours[idx]                                            # (b, K) pool rows
        b, K = cand.shape
        flat = cand.reshape(-1)
        z_s = self._logits(self.pool_ids[flat], self.pool_mask[flat]).view(b, K, -1)  # the student now
        z_t = self.pool_logits[flat].view(b, K, -1)                            # the teacher (stored)
        keep = most_divergent(z_t, z_s.float(), self.k1, self.temperature)     # (b, k1) positions in 0..K-1
        self.rank_counts += torch.bincount(keep.reshape(-1).cpu(), minlength=K)
        self.last_selection = cand.gather(1, keep)
        self.selection_time_s += time.perf_counter() - t0
        return self.last_selection

