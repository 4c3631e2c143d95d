"""kdedu.hf.DistillationTrainer: the Hugging Face Trainer that distils (tiny random models, no downloads)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainingArguments,
)

from kdedu import losses  # noqa: E402
from kdedu.hf import METHOD_STATE_FILE, DistillationTrainer, is_causal_lm  # noqa: E402
from kdedu.methods import KD, PKD, TinyBERTKD  # noqa: E402

VOCAB = 64


# ------------------------------------------------------------------------------------------------
# tiny models and data
# ------------------------------------------------------------------------------------------------
def tiny_gpt2(seed: int, n_embd: int = 32, n_layer: int = 2, vocab: int = VOCAB) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_positions=32, n_embd=n_embd, n_layer=n_layer, n_head=2, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(config)


def tiny_bert(seed: int, layers: int = 2, hidden: int = 32, num_labels: int = 3) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=32, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(config)


def lm_data(n: int = 8, length: int = 16, prompt: int = 3, seed: int = 0) -> list[dict]:
    """Right-padded token sequences of different lengths; labels -100 on the padding and on a prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        real = 5 + (i * 7) % (length - 4)                                       # 5 .. length: varied lengths
        ids = torch.zeros(length, dtype=torch.long)
        ids[:real] = torch.randint(1, VOCAB, (real,), generator=g)
        mask = (torch.arange(length) < real).long()
        labels = ids.masked_fill(mask == 0, -100)
        labels[:prompt] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def cls_data(n: int = 8, length: int = 10, num_labels: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        real = 4 + i % (length - 3)
        ids = torch.zeros(length, dtype=torch.long)
        ids[:real] = torch.randint(1, 50, (real,), generator=g)
        out.append({"input_ids": ids, "attention_mask": (ids != 0).long(),
                    "labels": torch.randint(0, num_labels, (), generator=g)})
    return out


def stack(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def make_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = {"output_dir": str(tmp_path / "out"), "report_to": [], "use_cpu": True, "save_strategy": "no",
              "logging_steps": 1, "disable_tqdm": True, "per_device_train_batch_size": 4, "max_steps": 3,
              "learning_rate": 1e-2, "seed": 0, "dataloader_num_workers": 0}
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 1e-6):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def training_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------------------------------------
# classifiers: KD and PKD
# ------------------------------------------------------------------------------------------------
def test_classifier_kd_trains_logs_terms_and_leaves_the_teacher_alone(tmp_path):
    student, teacher = tiny_bert(1), tiny_bert(2, layers=4)
    teacher_before, student_before = params_of(teacher), params_of(student)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path),
                                  train_dataset=cls_data(), alpha=0.7, temperature=3.0)
    assert not trainer.causal_lm and isinstance(trainer.method, KD)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    trainer.train()
    assert_same(params_of(teacher), teacher_before, atol=0)
    assert any(not torch.equal(v, student_before[k]) for k, v in params_of(student).items())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in student.parameters()} <= in_optimizer
    logs = training_logs(trainer)
    assert len(logs) == 3
    for log in logs:  # the terms, weighted as the Trainer weights its loss, add up to the logged loss
        assert {"ce", "kd"} <= log.keys()
        assert log["ce"] + log["kd"] == pytest.approx(log["loss"], rel=1e-5)


def test_classifier_compute_loss_is_distillation_loss(tmp_path):
    student, teacher = tiny_bert(1), tiny_bert(2, layers=4)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path),
                                  train_dataset=cls_data(), alpha=0.3, temperature=2.5)
    batch = stack(cls_data())
    batch["labels"][1] = -100                                                 # an unlabelled example is skipped
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        z_s, z_t = student(**inputs).logits, teacher(**inputs).logits
        loss = trainer.compute_loss(student, batch)
    expected = losses.distillation_loss(z_s, z_t, batch["labels"], alpha=0.3, temperature=2.5)
    torch.testing.assert_close(loss, expected)
    keep = batch["labels"] != -100                                              # and by hand
    ce = F.cross_entropy(z_s[keep], batch["labels"][keep])
    kl = F.kl_div(F.log_softmax(z_s[keep] / 2.5, -1), F.log_softmax(z_t[keep] / 2.5, -1), log_target=True,
                  reduction="batchmean")
    torch.testing.assert_close(loss, 0.7 * ce + 0.3 * 2.5**2 * kl)


def test_pkd_through_the_trainer(tmp_path):
    student, teacher = tiny_bert(1), tiny_bert(2, layers=4)
    method = PKD(student, teacher, alpha=0.5, temperature=5.0, hidden_weight=10.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, method=method, args=make_args(tmp_path),
                                  train_dataset=cls_data())
    assert trainer.method is method and trainer.method_parameters == {}
    batch = stack(cls_data())
    with torch.no_grad():
        expected = sum(method({k: v for k, v in batch.items() if k != "labels"}, batch["labels"]).values())
        torch.testing.assert_close(trainer.compute_loss(student, batch), expected)
    before = params_of(student)
    trainer.train()
    assert any(not torch.equal(v, before[k]) for k, v in params_of(student).items())
    for log in training_logs(trainer):
        assert {"ce", "kd", "hidden"} <= log.keys()
        assert log["ce"] + log["kd"] + log["hidden"] == pytest.approx(log["loss"], rel=1e-5)


def test_method_parameters_are_trained_like_a_plain_pytorch_loop(tmp_path):
    """TinyBERT's projections (the method's own parameters) are in the optimiser and stepped once per step:
    three SGD steps of the Trainer equal three steps of a plain loop over the same batch."""
    student, teacher = tiny_bert(1), tiny_bert(2, layers=4)
    method = TinyBERTKD(student, teacher, temperature=1.0, alpha=0.5)
    reference = copy.deepcopy(method)
    data = cls_data()
    args = make_args(tmp_path, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0,
                     weight_decay=0.0, per_device_train_batch_size=len(data), max_steps=3)
    trainer = DistillationTrainer(model=student, method=method, args=args, train_dataset=data)
    assert set(trainer.method_parameters) == {"proj_embd.weight", "proj_embd.bias", "proj_hidden.weight",
                                              "proj_hidden.bias"}
    trainer.train()
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in trainer.method_parameters.values()} <= in_optimizer
    assert all(p.grad is None for p in trainer.method_parameters.values())    # zeroed after each step

    opt = torch.optim.SGD(list(reference.trainable_parameters()), lr=0.5)
    batch = stack(data)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    for _ in range(3):
        loss = sum(reference(inputs, batch["labels"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_same(params_of(method.student), params_of(reference.student), atol=1e-5)
    for name in ("proj_embd", "proj_hidden"):
        assert_same(params_of(getattr(method, name)), params_of(getattr(reference, name)), atol=1e-5)
    assert {"embedding", "attention", "hidden", "ce", "kd"} <= training_logs(trainer)[0].keys()


# ------------------------------------------------------------------------------------------------
# causal LMs: per token, shifted, -100 and padding skipped; the fused path
# ------------------------------------------------------------------------------------------------
def test_causal_lm_compute_loss_is_the_shifted_masked_loss(tmp_path):
    student, teacher = tiny_gpt2(1), tiny_gpt2(2, n_embd=48, n_layer=3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path),
                                  train_dataset=lm_data(), alpha=0.4, temperature=2.0)
    assert trainer.causal_lm
    batch = stack(lm_data())
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        z_s, z_t = student(**inputs).logits, teacher(**inputs).logits        # (B, L, V)
        loss = trainer.compute_loss(student, batch)
    s, t, y = z_s[:, :-1], z_t[:, :-1], batch["labels"][:, 1:]               # position i predicts token i + 1
    keep = (y != -100) & batch["attention_mask"][:, 1:].bool()
    assert 0 < keep.sum() < keep.numel()
    torch.testing.assert_close(loss, losses.distillation_loss(s, t, y, alpha=0.4, temperature=2.0))
    ce = F.cross_entropy(s[keep], y[keep])                                    # by hand
    kd = losses.kd_loss(s, t, 2.0, mask=keep)
    per_token = (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum(-1)
    torch.testing.assert_close(kd, 4.0 * per_token[keep].mean())
    torch.testing.assert_close(loss, 0.6 * ce + 0.4 * kd)


def _loss_and_grads(trainer, model, batch):
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("alpha", [0.4, 1.0])
def test_fused_linear_equals_the_unfused_loss_and_gradients(tmp_path, alpha):
    student, teacher = tiny_gpt2(1), tiny_gpt2(2, n_embd=48, n_layer=3)
    batch = stack(lm_data())
    common = {"model": student, "teacher_model": teacher, "args": make_args(tmp_path), "alpha": alpha,
              "temperature": 2.0}
    plain = DistillationTrainer(**common)
    fused = DistillationTrainer(**common, fused_linear=True, chunk_size=16)
    loss, grads = _loss_and_grads(plain, student, batch)
    loss_f, grads_f = _loss_and_grads(fused, student, batch)
    torch.testing.assert_close(loss_f, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads_f.keys() and len(grads) == len(list(student.parameters()))
    for name in grads:
        torch.testing.assert_close(grads_f[name], grads[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    assert all(p.grad is None for p in teacher.parameters())


class _Shapes(TorchDispatchMode):
    """Records the shape of every tensor any operator returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out


def _full_logits(shapes, rows: int) -> list:
    """Shapes that hold at least ``rows`` rows of VOCAB logits."""
    return [s for s in shapes if s and s[-1] == VOCAB and torch.Size(s).numel() >= rows * VOCAB]


def test_fused_linear_never_builds_nor_saves_the_full_logits(tmp_path):
    student, teacher = tiny_gpt2(1), tiny_gpt2(2, n_embd=48, n_layer=3)
    batch = stack(lm_data())
    rows = batch["input_ids"][:, 1:].numel()                                  # 8 x 15 = 120 > every width
    args = make_args(tmp_path)
    for fused, expect_full in ((False, True), (True, False)):                # the unfused path: a positive control
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, fused_linear=fused,
                                      chunk_size=16)
        saved = []

        def pack(t, saved=saved):
            saved.append(tuple(t.shape))
            return t

        mode = _Shapes()
        with mode:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = trainer.compute_loss(student, batch)
            loss.backward()
        student.zero_grad()
        assert bool(_full_logits(mode.shapes, rows)) is expect_full, (fused, _full_logits(mode.shapes, rows))
        assert bool(_full_logits(saved, rows)) is expect_full, (fused, _full_logits(saved, rows))
        if fused:  # the largest logits that ever exist: one chunk of 16 tokens (besides the weights, (H, V))
            logits = [s for s in mode.shapes if s and s[-1] == VOCAB and s not in ((32, VOCAB), (48, VOCAB))]
            assert max(torch.Size(s).numel() for s in logits) == 16 * VOCAB


def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(tmp_path):
    """GPT-2 on padded batches whose micro-batches hold different numbers of tokens: 1 x 8, 2 x 4 and 4 x 2
    examples per optimiser step give the same weights, and the logged loss is the big batch's loss."""
    data = lm_data()
    big = stack(data)
    tokens = (big["labels"][:, 1:] != -100).sum(1)
    assert len(set(tokens.tolist())) > 2                                      # the micro-batch means would differ
    finals, logs = [], []
    for bs, ga in ((8, 1), (4, 2), (2, 4)):
        student, teacher = tiny_gpt2(1), tiny_gpt2(2, n_embd=48, n_layer=3)
        args = make_args(tmp_path / f"ga{ga}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                         optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", max_grad_norm=0.0, max_steps=2)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data, alpha=0.5)
        if ga == 1:
            with torch.no_grad():
                first_loss = trainer.compute_loss(student, big).item()
        trainer.train()
        finals.append(params_of(student))
        logs.append(training_logs(trainer))
    for other in finals[1:]:
        assert_same(other, finals[0], atol=1e-5)
    for run in logs:
        assert run[0]["loss"] == pytest.approx(first_loss, rel=1e-5)
        for log, ref in zip(run, logs[0], strict=True):
            assert log["loss"] == pytest.approx(ref["loss"], rel=1e-5)
            assert log["ce"] + log["kd"] == pytest.approx(log["loss"], rel=1e-5)


def test_evaluate_reports_the_distillation_loss(tmp_path):
    student, teacher = tiny_gpt2(1), tiny_gpt2(2, n_embd=48, n_layer=3)
    data = lm_data()
    for fused in (False, True):
        trainer = DistillationTrainer(model=student, teacher_model=teacher, fused_linear=fused, eval_dataset=data,
                                      args=make_args(tmp_path, per_device_eval_batch_size=8))
        with torch.no_grad():
            expected = trainer.compute_loss(student.eval(), stack(data)).item()
        assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def test_resume_from_checkpoint_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    """Hugging Face restores the student, optimiser, scheduler, RNG and data position; DistillationTrainer adds
    the method's own parameters. Resuming at step 2 of 4 ends where the uninterrupted run ends."""
    from safetensors.torch import load_file

    def build(seed_projections: int):
        student, teacher = tiny_bert(1), tiny_bert(2, layers=4)
        torch.manual_seed(seed_projections)
        return TinyBERTKD(student, teacher, alpha=0.5)

    data = cls_data(n=8)
    args = {"per_device_train_batch_size": 4, "max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    method = build(0)
    full = DistillationTrainer(model=method.student, method=method, args=make_args(tmp_path / "a", **args),
                               train_dataset=data)
    full.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert set(saved) <= set(method.student.state_dict()) and not any(k.startswith("teacher") for k in saved)
    assert (checkpoint / METHOD_STATE_FILE).is_file()
    resumed_method = build(1)                                                 # other projections: restored below
    resumed = DistillationTrainer(model=resumed_method.student, method=resumed_method,
                                  args=make_args(tmp_path / "b", **args), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert_same(params_of(resumed_method.student), params_of(method.student), atol=1e-6)
    for name in ("proj_embd", "proj_hidden"):
        assert_same(params_of(getattr(resumed_method, name)), params_of(getattr(method, name)), atol=1e-6)
    assert training_logs(resumed)[-1]["loss"] == pytest.approx(training_logs(full)[-1]["loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------------
# detection and errors
# ------------------------------------------------------------------------------------------------
def test_causal_lm_detection():
    class MyForCausalLM(torch.nn.Module):
        pass

    assert is_causal_lm(tiny_gpt2(0)) and is_causal_lm(MyForCausalLM())
    assert not is_causal_lm(tiny_bert(0))


def test_clear_errors(tmp_path):
    args = make_args(tmp_path)
    student, teacher = tiny_gpt2(1), tiny_gpt2(2)
    with pytest.raises(TypeError, match="teacher_model is required"):
        DistillationTrainer(model=student, args=args)
    with pytest.raises(TypeError, match="teacher_model must be a torch.nn.Module"):
        DistillationTrainer(model=student, teacher_model="gpt2", args=args)
    with pytest.raises(ValueError, match="vocabulary size"):
        DistillationTrainer(model=student, teacher_model=tiny_gpt2(2, vocab=80), args=args)
    with pytest.raises(ValueError, match="class count"):
        DistillationTrainer(model=tiny_bert(1), teacher_model=tiny_bert(2, num_labels=2), args=args)
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args, alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args, temperature=0.0)
    method = KD(student, teacher)
    with pytest.raises(ValueError, match="method= or alpha/temperature"):
        DistillationTrainer(model=student, method=method, args=args, alpha=0.9)
    with pytest.raises(ValueError, match="method.student"):
        DistillationTrainer(model=tiny_gpt2(3), method=method, args=args)
    with pytest.raises(ValueError, match="causal LMs"):
        DistillationTrainer(model=tiny_bert(1), teacher_model=tiny_bert(2), args=args, fused_linear=True)
    biased = tiny_gpt2(2)
    biased.lm_head = torch.nn.Linear(32, VOCAB)
    with pytest.raises(ValueError, match="bias"):
        DistillationTrainer(model=student, teacher_model=biased, args=args, fused_linear=True)
    capped = tiny_gpt2(2)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        DistillationTrainer(model=student, teacher_model=capped, args=args, fused_linear=True)
    with pytest.raises(ValueError, match="no live teacher"):
        bert = tiny_bert(1)
        DistillationTrainer(model=bert, method=PKD(bert, num_teacher_layers=4), args=args)
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, label_smoothing_factor=0.1))
    with pytest.raises(ValueError, match="compute_loss_func"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args, compute_loss_func=lambda *a, **k: 0)


def test_import_kdedu_does_not_import_the_trainer():
    code = "import sys, kdedu, kdedu.methods, kdedu.train; assert 'kdedu.hf' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------------------------
# two processes: torchrun on the CPU (gloo), as `accelerate launch` would run it on two GPUs
# ------------------------------------------------------------------------------------------------
TORCHRUN_SCRIPT = """
import json, sys
from pathlib import Path
import torch
import torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_hf import DISTRIBUTED_RUNS

torch.set_num_threads(1)
result = {{}}
for name, run in DISTRIBUTED_RUNS.items():
    model, trainer = run(Path({out!r}, name), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         ddp_backend="gloo")
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(every, flat)
    torch.save(flat, Path({out!r}, name + ".pt"))
    result[name] = {{"world_size": dist.get_world_size(), "same_weights": all(torch.equal(every[0], f) for f in every),
                    "logs": [h for h in trainer.state.log_history if "loss" in h]}}
if dist.get_rank() == 0:
    Path({out!r}, "result.json").write_text(json.dumps(result))
"""


def distil_tinybert(out, **overrides):
    """TinyBERT (a method with parameters of its own) on 8 examples, 2 optimiser steps of all 8."""
    student, teacher = tiny_bert(1), tiny_bert(2, layers=4)
    method = TinyBERTKD(student, teacher, alpha=0.5)
    trainer = DistillationTrainer(model=student, method=method, args=make_args(out, max_steps=2, **overrides),
                                  train_dataset=cls_data(n=8))
    trainer.train()
    return method, trainer  # method.parameters(): the student, the teacher and the projections


def distil_gpt2_fused(out, **overrides):
    """GPT-2 with fused_linear=True on 8 padded sequences, 2 optimiser steps of all 8."""
    student, teacher = tiny_gpt2(1), tiny_gpt2(2, n_embd=48, n_layer=3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, fused_linear=True, chunk_size=16,
                                  args=make_args(out, max_steps=2, **overrides), train_dataset=lm_data())
    trainer.train()
    return student, trainer


DISTRIBUTED_RUNS = {"tinybert": distil_tinybert, "gpt2-fused": distil_gpt2_fused}


@pytest.mark.slow  # 10-30 s: two fresh Python processes import torch and transformers
def test_two_processes_with_torchrun(tmp_path):
    """DDP on the CPU (gloo), 2 processes x 2 examples x 2 accumulation steps, for TinyBERT (whose projections
    DistillationTrainer averages itself) and a fused-linear GPT-2: both processes end with the same weights,
    equal to one process with batches of 8, and log that process's loss and terms. About 10-25 s: two fresh
    Python processes import torch and transformers."""
    script = tmp_path / "distil.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=os.path.dirname(__file__), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KDEDU_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script)], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"torchrun, 2 processes: {time.perf_counter() - start:.1f} s")
    result = json.loads((tmp_path / "result.json").read_text())
    for name, run in DISTRIBUTED_RUNS.items():
        assert result[name]["world_size"] == 2 and result[name]["same_weights"], name
        model, trainer = run(tmp_path / f"one-{name}", per_device_train_batch_size=8)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(torch.load(tmp_path / f"{name}.pt"), flat, atol=1e-5, rtol=1e-4)
        for log, ref in zip(result[name]["logs"], training_logs(trainer), strict=True):
            terms = [k for k in ref if k in ("embedding", "attention", "hidden", "ce", "kd")]
            assert log["loss"] == pytest.approx(ref["loss"], rel=1e-5)
            assert sum(log[k] for k in terms) == pytest.approx(log["loss"], rel=1e-5)
            for k in terms:
                assert log[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-7), (name, k)
