"""MetaDistil (Zhou, Xu & McAuley, ACL 2022, "BERT Learns to Teach"; seed deck 003): a teacher that learns to
teach from how its student does on a quiz.

Plain KD freezes the teacher. MetaDistil keeps training it, with one goal: the student it teaches should do
well on data the student never trains on, the **quiz set** (held out from the training data, see
:func:`quiz_split`). The deck's eight steps, one per training batch, are the steps of :meth:`MetaDistil.forward`:

1. sample a batch ``(x, y)`` (``fit`` does);
2. back up the student (the "time machine");
3. take a **pilot** KD step on a copy: ``θs' = θs − λ ∇θs L(x; θs, θt)``, an SGD step of size ``pilot_lr``;
4. sample a quiz batch ``(q, y_q)``;
5. compute the pilot student's quiz loss ``CE(S(q; θs'), y_q)``;
6. update the teacher through that loss: ``θs'`` depends on ``θt`` through the KD gradient, so
   ``∇θt CE(S(q; θs'(θt)), y_q)`` is a second-order gradient (a Hessian-vector product through the pilot);
7. restore the student;
8. take the real KD step from the restored student with the *updated* teacher (``fit`` does, with its optimiser).

Here the pilot is *functional*: ``θs'`` is a dict of new tensors that ``torch.func.functional_call`` puts in
place of the student's parameters for one call, so the student's own weights are never written, and step 7 has
nothing to restore (the official code deep-copies the student and its optimiser and loads them back). The
random state is forked around the pilot, so the pilot draws the same dropout masks as the real step, and with
``teacher_lr=0`` the run is the plain KD run of the same seed, bit for bit.

The teacher's update is MetaDistil's own, inside the method: ``fit`` owns the student's optimiser, this class
owns the teacher's (``teacher_optimizer``), and both are in a ``fit`` checkpoint (the teacher's weights as part of
the distiller, its optimiser and the quiz sampler's state through :meth:`MetaDistil.get_extra_state`).

Cost: a step costs a KD step, plus a teacher forward with a graph, a student forward, a backward with
``create_graph``, a pilot-student forward on the quiz batch and a backward through all of it. For a transformer
teacher, :class:`TeacherTop` meta-trains only its top block(s) and head, reading the frozen lower blocks' output
from a :func:`~kdedu.methods.precompute_teacher` store, so the teacher costs little.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, Dataset, Subset

from kdedu import losses
from kdedu._validate import check_integer, check_nonnegative, check_temperature, check_unit_interval
from kdedu.methods.kd import cross_entropy, token_rows
from kdedu.methods.teacher_outputs import TeacherBatch
from kdedu.outputs import model_config, run, split_batch, to_device
from kdedu.train import Distiller

__all__ = ["MetaDistil", "TeacherTop", "quiz_split"]


class _WithParams:
    """``module`` called with some of its parameters replaced (``torch.func.functional_call``); every other
    attribute is the module's, so :func:`kdedu.outputs.run` treats it as the module itself."""

    def __init__(self, module: nn.Module, params: dict[str, torch.Tensor]):
        self.module, self.params = module, params

    def __call__(self, *args, **kwargs):
        return functional_call(self.module, self.params, args, kwargs)

    def __getattr__(self, name):
        return getattr(self.module, name)


def student_inputs(x):
    """What the student reads from a batch: the token ids and mask of a :class:`TeacherBatch`, else ``x``."""
    if isinstance(x, TeacherBatch):
        return {"input_ids": x.input_ids, "attention_mask": x.attention_mask}
    return x


class MetaDistil(Distiller):
    """MetaDistil: KD whose teacher is meta-trained, at every step, on its pilot-updated student's quiz loss.

    ``forward(x, y)`` runs steps 2-7 (the pilot and the teacher's update) and returns the KD terms of step 8 with
    the updated teacher: ``{"ce": (1 - alpha) CE(z_s, y), "kd": alpha T^2 KL(p_t(T) || p_s(T))}``, which
    :func:`kdedu.train.fit` sums, back-propagates and steps with the student's optimiser. The pilot uses the same
    loss. :attr:`meta_log` records, per step, the pilot student's ``quiz`` loss, the teacher's ``teacher_ce`` on
    the batch, the ``teacher_entropy`` of its soft targets at ``T`` and its ``agreement`` with the student.

    Args:
        student, teacher: the models; ``x`` may be a :class:`TeacherBatch` (then the student reads its token
            ids and mask, and the teacher, e.g. a :class:`TeacherTop`, reads the batch).
        quiz: a ``DataLoader`` over the quiz set (e.g. from :func:`quiz_split`): its dataset and ``collate_fn``
            are used, and each step draws ``quiz_batch_size`` examples with replacement (the official code's
            ``num_held_batches`` sampler) from a generator seeded with ``seed``.
        pilot_lr: ``λ``, the size of the pilot's SGD step (the official code's ``assume_s_step_size``).
        teacher_lr: ``μ``, the teacher optimiser's learning rate (0: the teacher never changes; plain KD).
        alpha, temperature: the KD mixture of the pilot and the real step (as in :class:`KD`).
        teacher_ce_weight: adds ``teacher_ce_weight * CE(z_t, y)`` on the training batch to the teacher's
            meta-objective, so it keeps its own task in view (0, the official training loops' setting, off).
        teacher_params: names (or name prefixes) of the teacher parameters the meta-update trains; None: all.
        teacher_optimizer: ``"adam"`` (AdamW without weight decay, as the official BERT code) or ``"sgd"``.
        max_teacher_grad_norm: clip the teacher's meta-gradient to this L2 norm (the official code clips at 1).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, quiz: DataLoader, pilot_lr: float, teacher_lr: float,
                 alpha: float = 0.5, temperature: float = 4.0, teacher_ce_weight: float = 0.0,
                 teacher_params: Sequence[str] | None = None, teacher_optimizer: str = "adam",
                 quiz_batch_size: int | None = None, max_teacher_grad_norm: float | None = None, seed: int = 0):
        if teacher is None:
            raise TypeError("teacher must be a torch.nn.Module: MetaDistil trains a teacher")
        super().__init__(student, teacher)  # freezes the teacher: fit's optimiser never sees it
        if not isinstance(quiz, DataLoader):
            raise TypeError(f"quiz must be a DataLoader over the quiz set, got {type(quiz).__name__}")
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.teacher_ce_weight = check_nonnegative("teacher_ce_weight", teacher_ce_weight)
        self.pilot_lr = check_nonnegative("pilot_lr", pilot_lr)
        self.teacher_lr = check_nonnegative("teacher_lr", teacher_lr)
        if max_teacher_grad_norm is not None and not check_nonnegative("max_teacher_grad_norm",
                                                                       max_teacher_grad_norm) > 0:
            raise ValueError(f"max_teacher_grad_norm must be > 0 or None, got {max_teacher_grad_norm!r}")
        self.max_teacher_grad_norm = max_teacher_grad_norm
        self.quiz = quiz
        size = quiz_batch_size or quiz.batch_size or getattr(quiz.batch_sampler, "batch_size", None) or 32
        if check_integer("quiz_batch_size", size) < 1:
            raise ValueError(f"quiz_batch_size must be >= 1, got {size}")
        self.quiz_batch_size = int(size)
        self.teacher_names = _select(teacher, teacher_params)
        params = [dict(teacher.named_parameters())[n] for n in self.teacher_names]
        if teacher_optimizer == "adam":
            self.teacher_optimizer = torch.optim.AdamW(params, lr=self.teacher_lr, weight_decay=0.0)
        elif teacher_optimizer == "sgd":
            self.teacher_optimizer = torch.optim.SGD(params, lr=self.teacher_lr, momentum=0.9)
        else:
            raise ValueError(f"teacher_optimizer must be 'adam' or 'sgd', got {teacher_optimizer!r}")
        self.quiz_generator = torch.Generator().manual_seed(check_integer("seed", seed))
        self.meta_log: list[dict[str, float]] = []

    # ----------------------------------------------------------------------------------------------
    # the loss of a KD step: the pilot (step 3) and the real step (step 8) use the same one
    # ----------------------------------------------------------------------------------------------
    def kd_terms(self, z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, sx) -> dict[str, torch.Tensor]:
        """``{"ce": (1 - alpha) CE(z_s, y), "kd": alpha T^2 KL(p_t || p_s)}`` over the rows that count."""
        if z_s.shape != z_t.shape:
            raise ValueError(f"the student's logits {tuple(z_s.shape)} and the teacher's {tuple(z_t.shape)} differ "
                             f"in shape")
        z_s, y, keep = token_rows(z_s, y, sx, model=self.student)
        return {"ce": (1 - self.alpha) * cross_entropy(z_s, y, keep),
                "kd": self.alpha * losses.kd_loss(z_s, z_t, self.temperature, mask=keep)}

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y is None:
            raise ValueError("MetaDistil needs labels (its pilot and quiz losses use them); the batch has none")
        if self.teacher_lr > 0:
            self.meta_step(x, y)                                     # steps 2-7: the teacher learns
        sx = student_inputs(x)                                       # step 8: plain KD, the updated teacher
        z_s = run(self.student, sx).require_logits("the student")
        with torch.no_grad():
            z_t = run(self.teacher, x).require_logits("the teacher")
        return self.kd_terms(z_s, z_t, y, sx)

    def meta_step(self, x, y: torch.Tensor) -> dict[str, float]:
        """Steps 2-7 on the batch ``(x, y)``: the pilot, the quiz, the teacher's update. Returns the step's log."""
        sx = student_inputs(x)
        # 2. the time machine: the student's weights θs. The pilot below never writes them (it is functional).
        theta_s = {n: p for n, p in self.student.named_parameters() if p.requires_grad}
        # the teacher's trained part θt, as fresh leaves sharing storage: we differentiate the quiz loss by them
        theta_t = {n: p.detach().requires_grad_(True) for n, p in self.teacher.named_parameters()
                   if n in self.teacher_names}
        devices = sorted({p.device.index or 0 for p in theta_s.values() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):  # the pilot's dropout masks are the real step's
            # 3. the pilot: one SGD step of the KD loss on a copy, θs' = θs − λ ∇θs L(x; θs, θt), kept as a graph
            z_t = run(_WithParams(self.teacher, theta_t), x).require_logits("the teacher")       # (B, C)
            z_s = run(self.student, sx).require_logits("the student")                            # (B, C)
            pilot = sum(self.kd_terms(z_s, z_t, y, sx).values())
            grads = torch.autograd.grad(pilot, list(theta_s.values()), create_graph=True)
            theta_pilot = {n: p - self.pilot_lr * g for (n, p), g in zip(theta_s.items(), grads, strict=True)}
        # 4. a quiz batch, from the quiz set the student never trains on
        qx, qy = self.quiz_batch(y.device)
        # 5. the pilot student's quiz loss (dropout off, as in the official code)
        was_training = self.student.training
        self.student.eval()
        z_q = run(_WithParams(self.student, theta_pilot), student_inputs(qx)).require_logits("the student")
        self.student.train(was_training)
        quiz_loss = cross_entropy(z_q, qy, qy != -100)
        teacher_ce = cross_entropy(z_t, y, y != -100)
        meta = quiz_loss + self.teacher_ce_weight * teacher_ce if self.teacher_ce_weight > 0 else quiz_loss
        # 6. the teacher's update, through θs'(θt): second-order gradients
        g_t = torch.autograd.grad(meta, list(theta_t.values()), allow_unused=True)
        params = dict(self.teacher.named_parameters())
        for n, g in zip(theta_t, g_t, strict=True):
            params[n].grad = None if g is None else g.detach()
        if self.max_teacher_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([params[n] for n in theta_t], self.max_teacher_grad_norm)
        self.teacher_optimizer.step()
        self.teacher_optimizer.zero_grad(set_to_none=True)
        # 7. restore the student: nothing to do, θs was never written; θs' is dropped with this frame
        with torch.no_grad():
            log_p = torch.log_softmax(z_t / self.temperature, dim=-1)                           # (B, C)
            record = {"quiz": quiz_loss.detach(), "teacher_ce": teacher_ce.detach(),
                      "teacher_entropy": -(log_p.exp() * log_p).sum(-1).mean(),
                      "agreement": (z_t.detach().argmax(-1) == z_s.detach().argmax(-1)).float().mean()}
        record = {k: v.item() for k, v in record.items()}
        self.meta_log.append(record)
        return record

    def quiz_batch(self, device) -> tuple:
        """``quiz_batch_size`` quiz examples drawn with replacement by the seeded :attr:`quiz_generator`."""
        data = self.quiz.dataset
        idx = torch.randint(len(data), (self.quiz_batch_size,), generator=self.quiz_generator).tolist()
        qx, qy = split_batch(self.quiz.collate_fn([data[i] for i in idx]))
        return to_device(qx, device), to_device(qy, device)

    # ----------------------------------------------------------------------------------------------
    # checkpoints: fit saves the distiller's state dict, which carries this (the teacher's weights are in it)
    # ----------------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict:
        return {"teacher_optimizer": self.teacher_optimizer.state_dict(),
                "quiz_generator": self.quiz_generator.get_state(), "meta_log": list(self.meta_log)}

    def set_extra_state(self, state: dict) -> None:
        self.teacher_optimizer.load_state_dict(state["teacher_optimizer"])
        self.quiz_generator.set_state(state["quiz_generator"].cpu())
        self.meta_log = list(state["meta_log"])

    def trainable_parameters(self):
        """The student's trainable parameters (the teacher is trained by :attr:`teacher_optimizer`, not by fit)."""
        return (p for p in self.student.parameters() if p.requires_grad)


def _select(teacher: nn.Module, prefixes: Sequence[str] | None) -> list[str]:
    names = [n for n, _ in teacher.named_parameters()]
    if prefixes is None:
        chosen = names
    else:
        if isinstance(prefixes, str):
            prefixes = [prefixes]
        chosen = []
        for prefix in prefixes:
            hits = [n for n in names if n == prefix or n.startswith(prefix + ".")]
            if not hits:
                raise ValueError(f"teacher_params: {prefix!r} names no parameter of the teacher (its parameters: "
                                 f"{names[:4]}{' ...' if len(names) > 4 else ''})")
            chosen += [n for n in hits if n not in chosen]
    if not chosen:
        raise ValueError("teacher_params: the teacher has no parameters to train")
    return chosen


class TeacherTop(nn.Module):
    """The top ``train_layers`` blocks and the head of a transformer teacher (a :class:`~kdedu.models.
    SequenceClassifier`), copied, and run from the hidden state its frozen lower blocks produced.

    ``forward(b)`` takes a :class:`TeacherBatch` that stores hidden state ``start = N - train_layers`` for
    every token (``precompute_teacher(teacher, loader, **top.teacher_needs)``) and returns the (B, C) logits,
    equal to the teacher's as long as the copied blocks are unchanged. MetaDistil then meta-trains only this
    part: the lower blocks' outputs never change, so they are computed once per transfer set.
    """

    def __init__(self, teacher: nn.Module, train_layers: int = 1):
        super().__init__()
        encoder = getattr(teacher, "encoder", None)
        blocks = getattr(getattr(encoder, "encoder", None), "layer", None)
        if blocks is None or not hasattr(teacher, "head"):
            raise TypeError(f"teacher must be a kdedu.models.SequenceClassifier around a BERT encoder, got "
                            f"{type(teacher).__name__}")
        n = len(blocks)
        if isinstance(train_layers, bool) or not isinstance(train_layers, int) or not 1 <= train_layers <= n:
            raise ValueError(f"train_layers must be an integer in [1, {n}], got {train_layers!r}")
        self.start = n - train_layers
        self.blocks = copy.deepcopy(blocks[self.start:])
        self.head = copy.deepcopy(teacher.head)
        self.pooling = teacher.pooling
        self.config = model_config(teacher)
        self.teacher_needs = {"hidden_layers": (self.start,), "cls_only": False}

    def forward(self, b: TeacherBatch) -> torch.Tensor:
        if not isinstance(b, TeacherBatch) or b.cls_only:
            raise TypeError(f"TeacherTop reads a TeacherBatch with every token of hidden state {self.start} "
                            f"(precompute_teacher(..., **top.teacher_needs)), got {type(b).__name__}")
        h = b.hidden_at(self.start)                                                  # (B, L, H)
        mask = b.attention_mask
        additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min  # (B, 1, 1, L)
        for block in self.blocks:
            out = block(h, attention_mask=additive)
            h = out[0] if isinstance(out, tuple) else out                            # (B, L, H)
        if self.pooling == "cls":
            pooled = h[:, 0]                                                         # (B, H)
        else:
            m = mask.to(h.dtype)[..., None]
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled)                                                     # (B, C)


def quiz_split(data, quiz_size: int, seed: int = 0):
    """Split training data into ``(train, quiz)``: ``quiz_size`` examples drawn at random (seeded) for the quiz
    set, the rest to train on; disjoint by construction. MetaDistil's quiz set is held out from the training
    data, so the teacher never learns from the test or validation set.

    ``data``: a :class:`~kdedu.data.TextSplit`, a :class:`~kdedu.data.Split` (digits) or any ``Dataset``
    (then two ``Subset`` objects come back). The parts keep the original order.
    """
    n = len(data)
    size = check_integer("quiz_size", quiz_size)
    if not 1 <= size < n:
        raise ValueError(f"quiz_size must be in [1, {n - 1}] (the data have {n} examples), got {quiz_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(check_integer("seed", seed)))
    quiz_idx, train_idx = order[:size].sort().values, order[size:].sort().values
    from kdedu.data import Split, TextSplit

    if isinstance(data, TextSplit):
        def part(i):
            pick = i.tolist()
            return replace(data, sentences=[data.sentences[k] for k in pick], y=data.y[i],
                           scores=None if data.scores is None else data.scores[i],
                           probs=None if data.probs is None else data.probs[i],
                           constructions=None if data.constructions is None else [data.constructions[k] for k in pick])
    elif isinstance(data, Split):
        def part(i):
            return Split(data.x[i], data.y[i])
    elif isinstance(data, Dataset):
        def part(i):
            return Subset(data, i.tolist())
    else:
        raise TypeError(f"data must be a TextSplit, a digits Split or a torch Dataset, got {type(data).__name__}")
    return part(train_idx), part(quiz_idx)
