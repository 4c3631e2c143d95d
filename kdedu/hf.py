r"""Distil inside Hugging Face's ``Trainer``: :class:`DistillationTrainer` (DESIGN.md, "Contracts").

``DistillationTrainer(model=student, teacher_model=teacher, args=TrainingArguments(...), train_dataset=...,
alpha=0.5, temperature=2.0)`` is a ``transformers.Trainer`` whose loss is

.. math:: \mathcal{L} = (1 - \alpha)\, \mathrm{CE}(z_s, y) + \alpha\, T^2\, \mathrm{KL}\big(p_t(T) \,\|\, p_s(T)\big)

(:func:`kdedu.losses.distillation_loss`), per example for a classifier and per token for a causal LM, where
position ``i`` is scored against token ``i + 1`` and labels equal to ``-100`` are skipped. The loss is not
written here a second time: :meth:`~DistillationTrainer.compute_loss` calls a kdedu method object,
:class:`kdedu.methods.KD` by default, or any :class:`~kdedu.train.Distiller` built on the same student
(``method=PKD(student, teacher)``, ``TinyBERTKD``, ``CKD``, ...). Everything else is the Trainer's:
batching, optimiser, schedule, mixed precision, checkpoints, logging, ``accelerate launch`` / ``torchrun``.

This module imports ``transformers`` when it is imported; nothing else in kdedu imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import ModelOutput

from kdedu._validate import check_temperature, check_unit_interval
from kdedu.methods.kd import KD, keep_rows
from kdedu.outputs import batch_size, model_outputs
from kdedu.train import Distiller

__all__ = ["DistillationTrainer", "DistillationOutput", "is_causal_lm"]

DEFAULT_ALPHA, DEFAULT_TEMPERATURE = 0.5, 2.0
METHOD_STATE_FILE = "kdedu_method.pt"  # a method's own trained parameters, next to the student's weights
# configuration entries of models that transform the logits after the lm_head (Gemma's soft-capping,
# Cohere's logit_scale, Granite's logits_scaling, ...): fused_linear cannot reproduce them
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_softcapping", "softcap", "logit_scale", "logits_scaling",
                     "output_multiplier")


@dataclass
class DistillationOutput(ModelOutput):
    """What ``compute_loss(..., return_outputs=True)`` returns beside the loss: the student's logits
    (``None`` with ``fused_linear=True``, which never builds them)."""

    logits: torch.Tensor | None = None


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model, by the rule the Trainer itself uses for its label
    smoother: its class is registered in ``transformers``' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, or (a custom
    or PEFT-wrapped model) its class name ends in ``ForCausalLM`` or ``LMHeadModel``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update((value,) if isinstance(value, str) else value)
    name = type(getattr(model, "module", model)).__name__  # through a DDP / DataParallel wrapper
    return name in names or name.endswith(("ForCausalLM", "LMHeadModel"))


def _num_outputs(model: nn.Module) -> tuple[str, int] | None:
    """``("vocabulary size", V)`` for a model with an output embedding (an LM head), ``("class count", C)`` for
    a classifier (a kdedu ``SequenceClassifier``'s head, or ``config.num_labels``); None if unknown."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is not None and getattr(head, "weight", None) is not None:
        return "vocabulary size", int(head.weight.shape[0])
    if isinstance(getattr(model, "head", None), nn.Linear):
        return "class count", int(model.head.out_features)
    config = getattr(model, "config", None)
    if config is not None and "Classification" in type(model).__name__ and hasattr(config, "num_labels"):
        return "class count", int(config.num_labels)
    return None


def _check_lm_head(model: nn.Module, role: str) -> None:
    """fused_linear reads the lm_head's input and weight: no bias, and no transform after it."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise TypeError(f"fused_linear=True needs a causal LM with an lm_head (get_output_embeddings()); the {role} "
                        f"{type(model).__name__} has none")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"fused_linear=True: the {role}'s lm_head has a bias, which fused_linear_kd_loss does not "
                         f"take; use fused_linear=False")
    for config in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        for name in _LOGIT_TRANSFORMS:
            value = getattr(config, name, None)
            if value is not None and not (name in ("logit_scale", "logits_scaling", "output_multiplier")
                                          and value == 1):
                raise ValueError(f"fused_linear=True: the {role}'s config sets {name}={value!r}, a transform of the "
                                 f"logits after the lm_head that the fused loss cannot reproduce; use "
                                 f"fused_linear=False")


@contextlib.contextmanager
def _student_called_as(method: Distiller, model: nn.Module):
    """Run ``method`` with ``model`` (the student as the Trainer wrapped it: DDP, DataParallel, compiled) in
    place of ``method.student``, so the forward pass goes through the wrapper and DDP synchronises gradients."""
    original = method.student
    if model is original:
        yield
        return
    method._modules["student"] = model
    try:
        yield
    finally:
        method._modules["student"] = original


def _lm_head_input(called: nn.Module, owner: nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``called`` (``owner`` or its wrapper) on ``inputs`` with ``owner``'s lm_head bypassed: returns the
    hidden states that enter the lm_head ``(B, L, H)`` and its weight ``(V, H)``; no ``(B, L, V)`` logits."""
    head = owner.get_output_embeddings()
    seen = []

    def bypass(hidden):                   # the model's "logits" become its last hidden states: nothing of size V
        seen.append(hidden)
        return hidden

    previous = head.__dict__.get("forward")
    head.forward = bypass
    try:
        called(**inputs)
    finally:
        if previous is None:
            del head.forward
        else:
            head.forward = previous
    if len(seen) != 1:
        raise RuntimeError(f"fused_linear=True could not read the hidden states entering {type(owner).__name__}'s "
                           f"lm_head (it was called {len(seen)} times; a compiled model is not supported)")
    return seen[0], head.weight


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()                                   # (c, V): one chunk only
    per_row = F.cross_entropy(logits, labels, reduction="none")
    return torch.where(keep, per_row, torch.zeros_like(per_row)).sum()


def _chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                           chunk_size: int) -> torch.Tensor:
    """Mean cross-entropy of ``hidden @ weight.T`` over the rows in ``keep``, ``chunk_size`` rows at a time.
    Each chunk runs under ``torch.utils.checkpoint``: its ``(chunk, V)`` logits are freed after the forward pass
    and recomputed in the backward pass, so the full ``(N, V)`` logits never exist."""
    h = hidden.reshape(-1, hidden.shape[-1])                                # (N, H)
    keep = keep.reshape(-1)
    y = torch.where(keep, labels.reshape(-1), torch.zeros_like(labels.reshape(-1)))  # -100 is no class index
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk_size):
        part = (h[i:i + chunk_size], weight, y[i:i + chunk_size], keep[i:i + chunk_size])
        total = total + (checkpoint(_ce_sum, *part, use_reentrant=False) if torch.is_grad_enabled() else _ce_sum(*part))
    return total / keep.sum().clamp(min=1)


class _MethodParameters(TrainerCallback):
    """The Trainer steps, clips and zeroes only the student's gradients (and DDP averages only those): this does
    the same for the parameters a method owns (TinyBERT's projections, CKD's), around each optimiser step."""

    def __init__(self, trainer: DistillationTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        params = [p for p in self.trainer.method_parameters.values() if p.grad is not None]
        if params and args.world_size > 1:                   # average across processes, as DDP does for the model
            for p in params:
                p.grad = self.trainer.accelerator.reduce(p.grad, reduction="mean")
        if params and args.max_grad_norm is not None and args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)

    def on_optimizer_step(self, args, state, control, **kwargs):
        for p in self.trainer.method_parameters.values():  # the Trainer calls model.zero_grad() only
            p.grad = None


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` that distils ``teacher_model`` into ``model`` (the student).

    Args:
        model: the student (any ``nn.Module`` the Trainer accepts; a Hugging Face model typically).
        teacher_model: the teacher. It is frozen (``requires_grad=False``), kept in eval mode, moved to the
            device the Trainer trains on (``args.device``; left where it is if it was loaded with a
            ``device_map``), never saved in checkpoints and never given to the optimiser. It must take the same
            batches as the student (the same tokenizer) and give logits of the same shape.
        args, train_dataset, **trainer_kwargs: as for ``Trainer`` (``eval_dataset``, ``data_collator``,
            ``processing_class``, ``callbacks``, ``optimizers``, ...). ``model_init`` and ``compute_loss_func``
            are refused: the loss is the method's, and the method is built on this student.
        alpha, temperature: the weight of the KD term and the softmax temperature of
            :func:`kdedu.losses.distillation_loss` (``alpha=1``: the teacher alone, no labels needed).
        method: instead of ``alpha``/``temperature``, any kdedu :class:`~kdedu.train.Distiller` built on this
            student and a live teacher, e.g. ``PKD(student, teacher, alpha=0.5, temperature=5.0)``. Its
            ``forward(inputs, labels)`` gives the loss terms. Parameters the method owns (TinyBERT's and CKD's
            projections) are trained too: added to the optimiser, their gradients averaged across processes,
            clipped to ``max_grad_norm`` (separately from the student's) and saved with each checkpoint
            (``kdedu_method.pt``), from which ``train(resume_from_checkpoint=...)`` restores them.
        causal_lm: score position ``i`` against token ``i + 1``. ``None`` (default) detects it with
            :func:`is_causal_lm`: the student's class is one of ``transformers``' causal LMs, or its name ends
            in ``ForCausalLM`` / ``LMHeadModel``. Classifiers and seq2seq models (labels aligned with the
            logits) are not shifted.
        fused_linear: for causal LMs with ``alpha``/``temperature``: never build the ``(tokens, vocabulary)``
            logits. The student and the teacher run with their lm_heads bypassed; the KD term is
            :func:`kdedu.kernels.fused_linear_kd_loss` on their last hidden states and lm_head weights, the CE
            term a chunked cross-entropy (each chunk of ``chunk_size`` tokens recomputed in the backward pass).
            Same value and gradients as the default path. Needs lm_heads without bias and no logit transform
            after them (soft-capping, logit scales); evaluation then reports the loss only (no logits).
        chunk_size: tokens per chunk with ``fused_linear=True``.

    The loss and gradient accumulation: each batch's loss is the mean over its rows (examples, or tokens not
    labelled ``-100``). With ``gradient_accumulation_steps > 1`` the micro-batches of an optimiser step are
    weighted by their share of the step's rows (counted over all processes when
    ``args.average_tokens_across_devices``, as Hugging Face counts ``num_items_in_batch``), so accumulating k
    micro-batches gives the gradient of one batch k times larger, and the loss Hugging Face logs is that
    batch's loss. Each loss term (``"ce"``, ``"kd"``, a method's layer terms) is logged beside ``"loss"``,
    weighted the same way and averaged over the logging interval, so the terms add up to the logged loss.

    Multi-GPU: nothing here is device- or process-specific; ``accelerate launch script.py`` or ``torchrun
    --nproc_per_node N script.py`` run it with DDP exactly as they run a ``Trainer``. Each process holds a full
    copy of the frozen teacher. DeepSpeed and FSDP work for ``KD`` and for methods without parameters of their
    own (the teacher is not sharded).
    """

    def __init__(self, model: nn.Module | None = None, teacher_model: nn.Module | None = None, args=None,
                 train_dataset=None, alpha: float = DEFAULT_ALPHA, temperature: float = DEFAULT_TEMPERATURE,
                 method: Distiller | None = None, causal_lm: bool | None = None, fused_linear: bool = False,
                 chunk_size: int = 1024, **trainer_kwargs):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model (the student) must be a torch.nn.Module, got {type(model).__name__}")
        for name in ("model_init", "compute_loss_func"):
            if trainer_kwargs.get(name) is not None:
                raise ValueError(f"DistillationTrainer does not take {name}: the loss is the distillation method's, "
                                 f"built on the student passed as model=")
        causal_lm = is_causal_lm(model) if causal_lm is None else bool(causal_lm)
        if method is not None:
            if not isinstance(method, Distiller):
                raise TypeError(f"method must be a kdedu Distiller (kdedu.methods.KD, PKD, TinyBERTKD, ...), got "
                                f"{type(method).__name__}")
            if alpha != DEFAULT_ALPHA or temperature != DEFAULT_TEMPERATURE:
                raise ValueError("give either method= or alpha/temperature, not both: the method has its own "
                                 "(e.g. PKD(student, teacher, alpha=..., temperature=...))")
            if fused_linear:
                raise ValueError("fused_linear=True computes KD's loss itself; it cannot be combined with method=")
            if method.student is not model:
                raise ValueError("method.student must be the model given to DistillationTrainer (build the method "
                                 "on the same student object)")
            if method.teacher is None:
                raise ValueError(f"{type(method).__name__} has no live teacher; DistillationTrainer runs the teacher "
                                 f"on each batch (build the method with teacher=...)")
            if teacher_model is not None and teacher_model is not method.teacher:
                raise ValueError("teacher_model is not method.teacher: pass the teacher the method was built with")
            teacher_model = method.teacher
        if teacher_model is None:
            raise TypeError("teacher_model is required: DistillationTrainer(model=student, teacher_model=teacher, ...)")
        if not isinstance(teacher_model, nn.Module):
            raise TypeError(f"teacher_model must be a torch.nn.Module, got {type(teacher_model).__name__}")
        if teacher_model is model:
            raise ValueError("teacher_model and model are the same object; a born-again teacher is a trained copy "
                             "(copy.deepcopy(student))")
        s_out, t_out = _num_outputs(model), _num_outputs(teacher_model)
        if s_out and t_out and s_out[0] == t_out[0] and s_out[1] != t_out[1]:
            raise ValueError(f"the student's {s_out[0]} ({s_out[1]}) differs from the teacher's ({t_out[1]}): their "
                             f"logits must have the same shape (same tokenizer / same labels)")
        if fused_linear:
            if not causal_lm:
                raise ValueError("fused_linear=True is for causal LMs (the student is not one; pass causal_lm=True if "
                                 "it is)")
            _check_lm_head(model, "student")
            _check_lm_head(teacher_model, "teacher")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if method is None:
            alpha, temperature = check_unit_interval("alpha", alpha), check_temperature(temperature)
            method = KD(model, teacher_model, alpha, temperature, causal_lm=causal_lm)  # freezes the teacher
        teacher_model.requires_grad_(False)
        teacher_model.eval()
        self.method, self.teacher = method, teacher_model
        self.alpha, self.temperature = getattr(method, "alpha", None), getattr(method, "temperature", None)
        self.causal_lm, self.fused_linear, self.chunk_size = causal_lm, bool(fused_linear), chunk_size
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_from: int | None = None
        self._rows_in_step = None

        super().__init__(model=model, args=args, train_dataset=train_dataset, **trainer_kwargs)
        if self.fused_linear and (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            raise ValueError("fused_linear=True reads the lm_head weights directly, which DeepSpeed ZeRO and FSDP "
                             "shard; use fused_linear=False with them")
        if self.args.label_smoothing_factor:
            raise ValueError("args.label_smoothing_factor is not used by DistillationTrainer: the soft targets come "
                             "from the teacher (set it to 0)")

        if getattr(teacher_model, "hf_device_map", None) is None:  # a teacher spread with device_map stays put
            teacher_model.to(self.args.device)
        frozen = {id(p) for p in model.parameters()} | {id(p) for p in teacher_model.parameters()}
        self.method_parameters = {n: p for n, p in method.named_parameters() if id(p) not in frozen and p.requires_grad}
        if self.method_parameters:
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                raise ValueError(f"{type(method).__name__} owns trainable parameters "
                                 f"({', '.join(self.method_parameters)}), which DeepSpeed/FSDP would not shard or "
                                 f"step; use DDP (accelerate launch without a DeepSpeed/FSDP config)")
            device = next(model.parameters()).device
            for child in method.children():
                if child is not model and child is not teacher_model:
                    child.to(device)
            self.add_callback(_MethodParameters(self))

    # ---- the optimiser holds the method's own parameters too ---------------------------------------------------
    def create_optimizer(self, *args, **kwargs):
        given = self.optimizer is not None
        optimizer = super().create_optimizer(*args, **kwargs)
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = {n: p for n, p in self.method_parameters.items() if id(p) not in held}
        if missing and given:
            raise ValueError(f"the optimizer passed in optimizers=(...) does not hold the parameters of "
                             f"{type(self.method).__name__} ({', '.join(missing)}); include trainer.method's "
                             f"parameters, or let the Trainer create the optimizer")
        if missing:
            decay = set(self.get_decay_parameter_names(self.method))
            for wd, names in ((self.args.weight_decay, [n for n in missing if n in decay]),
                              (0.0, [n for n in missing if n not in decay])):
                if names:
                    optimizer.add_param_group({"params": [missing[n] for n in names], "weight_decay": wd})
        return optimizer

    # ---- the loss ------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The distillation loss of one batch (``inputs`` with ``labels``): the sum of the method's terms.

        In training each batch's mean is weighted by its share of the optimiser step's rows (see the class
        docstring); evaluation returns the batch mean. With ``return_outputs=True`` the second value is a
        :class:`DistillationOutput` with the student's logits.
        """
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if self.teacher.training:
            self.teacher.eval()
        captured = []
        if self.fused_linear:
            terms = self._fused_terms(model, inputs, labels)
        else:
            hook = model.register_forward_hook(lambda m, a, out: captured.append(out)) if return_outputs else None
            try:
                with _student_called_as(self.method, model):
                    terms = self.method(inputs, labels)
            finally:
                if hook is not None:
                    hook.remove()
        loss = sum(terms.values())
        if self.is_in_train and model.training:
            scale, scaled = self._loss_scale(inputs, labels, num_items_in_batch)
            self.loss_is_scaled_for_ga = scaled  # read by Trainer.training_step (transformers >= 5)
            steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
            self._add_terms(terms, scale if scaled else scale / steps)  # logged as HF logs the loss
            loss = loss * scale
        if return_outputs:
            logits = model_outputs(captured[0]).logits if captured else None
            return loss, DistillationOutput(logits=logits)
        return loss

    def _fused_terms(self, model, inputs, labels) -> dict[str, torch.Tensor]:
        """KD's terms for a causal LM without the ``(B, L, V)`` logits (``fused_linear=True``)."""
        from kdedu.kernels import fused_linear_kd_loss

        if labels is None and self.alpha < 1:
            raise ValueError(f"KD with alpha={self.alpha} < 1 needs labels for its cross-entropy term; the batch has "
                             f"none (use alpha=1 to distil from the teacher alone)")
        h_s, w_s = _lm_head_input(model, self.model, inputs)                  # (B, L, Hs), (V, Hs)
        with torch.no_grad():
            h_t, w_t = _lm_head_input(self.teacher, self.teacher, inputs)    # (B, L, Ht), (V, Ht)
        h_s, h_t = h_s[:, :-1].to(w_s.dtype), h_t[:, :-1].to(w_t.dtype)      # position i predicts token i + 1
        keep = self._keep_rows(inputs, labels)                              # (B, L-1)
        terms = {"kd": self.alpha * fused_linear_kd_loss(h_s, w_s, h_t, w_t, self.temperature, keep, self.chunk_size)}
        if self.alpha < 1:
            ce = _chunked_cross_entropy(h_s, w_s, labels[:, 1:], keep, self.chunk_size)
            terms = {"ce": (1 - self.alpha) * ce, **terms}
        return terms

    def _keep_rows(self, inputs, labels) -> torch.Tensor | None:
        """The rows the loss averages over, as :func:`kdedu.methods.kd.token_rows` keeps them: labels not -100,
        and, for token-level rows, the attention mask (shifted by one position for a causal LM)."""
        mask = inputs.get("attention_mask")
        if self.causal_lm and labels is None and mask is None:
            return torch.ones_like(inputs["input_ids"][:, 1:], dtype=torch.bool)
        return keep_rows(labels, mask, self.causal_lm)[1]

    def _count_rows(self, inputs, labels) -> torch.Tensor:
        keep = self._keep_rows(inputs, labels)
        if keep is None or (not self.causal_lm and labels is None):
            return torch.tensor(batch_size(inputs, labels))
        return keep.sum()

    def _loss_scale(self, inputs, labels, num_items_in_batch):
        """``(factor, scaled)``: what the batch mean is multiplied by, and whether the result is already
        normalised for gradient accumulation (else the Trainer divides it by the number of micro-batches)."""
        if self._rows_in_step is not None and hasattr(Trainer, "loss_is_scaled_for_ga"):
            total, processes = self._rows_in_step
            return self._count_rows(inputs, labels).to(total.device) * processes / total.clamp(min=1), True
        if num_items_in_batch is not None:  # older transformers: normalise by HF's count, as its own loss does
            across = getattr(self.args, "average_tokens_across_devices", False)
            processes = self.accelerator.num_processes if across else 1
            return self._count_rows(inputs, labels) * processes / num_items_in_batch, True
        return 1.0, False

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        """The micro-batches of one optimiser step (Trainer's), and their number of rows, counted as the loss
        counts them (over all processes when ``args.average_tokens_across_devices``)."""
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, *args, **kwargs)
        self._rows_in_step = None
        if batch_samples and all(isinstance(b, Mapping) for b in batch_samples):
            total = sum(self._count_rows(b, b.get("labels")) for b in batch_samples).to(self.args.device)
            processes = 1
            if getattr(self.args, "average_tokens_across_devices", False) and self.args.world_size > 1:
                total, processes = self.accelerator.gather(total.reshape(1)).sum(), self.accelerator.num_processes
            self._rows_in_step = (total, processes)
        return batch_samples, num_items

    # ---- logging: each loss term beside HF's "loss" -------------------------------------------------------------
    def _add_terms(self, terms: dict[str, torch.Tensor], factor) -> None:
        if self._term_from is None:
            self._term_from = self.state.global_step
        for name, value in terms.items():
            part = value.detach().float() * factor
            self._term_sums[name] = self._term_sums[name] + part if name in self._term_sums else part

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Trainer's ``log``; a training log (one with ``"loss"``) also gets each loss term, averaged over the
        optimiser steps since the last log and over processes, as the Trainer averages ``"loss"``."""
        if "loss" in logs and self._term_sums:
            names = list(self._term_sums)
            values = torch.stack([self._term_sums[n].to(self.args.device) for n in names])
            if self.args.world_size > 1:
                values = self.accelerator.gather(values[None]).mean(0)
            steps = max(self.state.global_step - self._term_from, 1)
            logs.update({n: v / steps for n, v in zip(names, values.tolist(), strict=True)})
            self._term_sums, self._term_from = {}, None
        super().log(logs, *args, **kwargs)

    # ---- checkpoints: the student (Trainer's), plus the method's own parameters ---------------------------------
    def _method_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.method.state_dict().items() if not k.startswith(("student.", "teacher."))}

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's ``save_model`` (the student only, never the teacher), plus ``kdedu_method.pt`` with the
        parameters the method owns, if it has any."""
        super().save_model(output_dir, _internal_call)
        state = self._method_state()
        if state and self.args.should_save:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(output_dir, METHOD_STATE_FILE))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Trainer's ``train``; resuming also restores the method's own parameters from the checkpoint."""
        path = resume_from_checkpoint
        if isinstance(path, bool):
            path = get_last_checkpoint(self.args.output_dir) if path else None
        if path is not None and self._method_state():
            file = os.path.join(path, METHOD_STATE_FILE)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file} is missing: the checkpoint holds no state for "
                                        f"{type(self.method).__name__}'s own parameters")
            state = torch.load(file, map_location="cpu", weights_only=True)
            result = self.method.load_state_dict(state, strict=False)
            if result.unexpected_keys or set(self._method_state()) - set(state):
                raise ValueError(f"{file} does not match {type(self.method).__name__}: unexpected "
                                 f"{result.unexpected_keys}, missing {sorted(set(self._method_state()) - set(state))}")
        return super().train(resume_from_checkpoint, *args, **kwargs)
