"""Auto-checks for the exercises of chapter 16 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import math

import torch

from kdedu.check import Wrong, answer_dict, answer_number, answer_seeds, function, picked, register

# ------------------------------------------------------------------------------------------------
# 16.topk-kl: KL(q_k || p_t) of the renormalised top-k teacher, per row
# ------------------------------------------------------------------------------------------------


def _topk_kl_reference(logits: torch.Tensor, k: int) -> torch.Tensor:
    """KL(q_k || p) summed over the kept classes one by one, in float64 (q_k = p on the top k, divided by its mass)."""
    p = torch.softmax(logits.double(), -1)
    idx = logits.topk(k, -1).indices
    kept = p.gather(-1, idx)                                       # (N, k)
    q = kept / kept.sum(-1, keepdim=True)
    return (q * (q.log() - kept.log())).sum(-1)


@register("16.topk-kl", hint="q_k is p_t on the k kept words divided by their total mass M_k; write the KL's sum "
                             "over the kept words and simplify the log-ratio. Log-sum-exp gives log M_k stably.")
def _check_16_topk_kl(fn):
    function("topk_kl(logits, k)", fn)
    g = torch.Generator().manual_seed(16)
    for n, v, k, scale in ((4, 10, 3, 1.0), (8, 127, 5, 3.0), (3, 50, 1, 20.0), (5, 30, 30, 2.0), (6, 1000, 20, 8.0)):
        logits = scale * torch.randn(n, v, generator=g)
        got = fn(logits.clone(), k)
        if not isinstance(got, torch.Tensor):
            raise Wrong(f"topk_kl should return a torch.Tensor, got {type(got).__name__}.")
        if got.shape != (n,):
            raise Wrong(f"topk_kl on logits of shape {(n, v)} should return one KL per row, shape {(n,)}; got "
                        f"{tuple(got.shape)}.")
        expected = _topk_kl_reference(logits, k)
        got = got.double()
        if not torch.isfinite(got).all():
            raise Wrong(f"with k = {k} of {v} your KL is not finite: in the direction KL(q_k || p_t) it always is.")
        if torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
            continue
        mass = torch.exp(-expected)
        if torch.allclose(got, mass, atol=1e-4, rtol=1e-4):
            raise Wrong("your function returns the mass M_k kept by the top k, not the KL.")
        if torch.allclose(got, -expected, atol=1e-4, rtol=1e-4):
            raise Wrong("your KL has the wrong sign: a KL is never negative.")
        if torch.allclose(got, expected.mean().expand(n), atol=1e-4, rtol=1e-4):
            raise Wrong("your function averages over the rows: return one KL per row.")
        raise Wrong(f"with k = {k} of {v} classes your KL is off by up to {(got - expected).abs().max().item():.3g} "
                    "nats.")
    return "correct: the truncated teacher is -log M_k nats from the full one."


# ------------------------------------------------------------------------------------------------
# 16.on-policy-reverse: an experiment. GKD with lambda = 1, beta = 1; the checker trains one of the submitted seeds
# again in the chapter's live setting.
# ------------------------------------------------------------------------------------------------
SETTING = {"n_train": 1000, "n_eval": 500, "batch_size": 32, "num_epochs": 2, "lr": 2e-3, "schedule": "linear",
           "warmup_steps": 10}
"""The chapter's live setting (its ``N_TRAIN``, ``N_EVAL``, ``BATCH`` and ``FIT``; the chapter asserts they agree)."""
TEACHER = (("name", "en-fr"),)  # the arguments of the chapter's zoo.gpt_teacher (tests swap in a tiny recipe)
LOW = 0.01         # the chapter's "improbable for the teacher"
VALID_TOLERANCE = 3  # test sources: on-policy samples are drawn from float computations that may differ slightly
LOW_MASS_TOLERANCE = 0.02  # relative


@functools.lru_cache(maxsize=16)  # a resubmitted answer is checked again in no time
def gkd_student(seed: int, lmbda: float, beta: float, teacher: tuple = TEACHER) -> dict:
    """``{"valid", "low_mass"}`` of the chapter's GKD student for ``seed``: the zoo's GPT teacher shrunk to its first
    layer, ``GKD(lmbda, beta, causal_lm=True)`` on the first ``n_train`` training pairs, ``fit(..., seed=seed)``
    with the chapter's setting; scored on the first ``n_eval`` test sources (samples with ``seed=0``) and their
    teacher-forced references."""
    from kdedu import zoo
    from kdedu.data import in_grammar, translation, translation_loader
    from kdedu.methods import GKD
    from kdedu.models import shrink_decoder, translate
    from kdedu.train import fit

    s = SETTING
    teacher = zoo.gpt_teacher(**dict(teacher), verbose=False)
    vocab = teacher.vocab
    train, test = translation("train", limit=s["n_train"]), translation("test", limit=s["n_eval"])
    student = shrink_decoder(teacher, num_layers=1)
    loader = translation_loader(train, vocab, s["batch_size"], shuffle=True, seed=None, causal_lm=True)
    fit(GKD(student, teacher, lmbda=lmbda, beta=beta, causal_lm=True), loader, None, num_epochs=s["num_epochs"],
        lr=s["lr"], schedule=s["schedule"], warmup_steps=s["warmup_steps"], seed=seed, progress=False)
    student.eval()
    sampled = translate(student, test.sources, vocab, strategy="sample", seed=0)
    valid = sum(in_grammar(test.with_targets(sampled))) / len(test)
    batch = next(iter(translation_loader(test, vocab, len(test), causal_lm=True)))
    x = {k: v for k, v in batch.items() if k != "labels"}
    keep = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        p_s = student(**x)[:, :-1][keep].softmax(-1)
        p_t = teacher(**x)[:, :-1][keep].softmax(-1)
    return {"valid": valid, "low_mass": float((p_s * (p_t < LOW)).sum(-1).mean())}


def _per_seed(answer, key: str, n: int, fraction_of: int | None = None) -> list[float]:
    values = answer[key]
    values = values.tolist() if hasattr(values, "tolist") else values
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise Wrong(f'answer["{key}"] should be a list of per-seed numbers, got {type(values).__name__}.')
    out = [answer_number(f'an entry of answer["{key}"]', v) for v in values]
    if len(out) != n:
        raise Wrong(f'answer["{key}"] has {len(out)} values for {n} seeds: one per seed, in the order of '
                    'answer["seeds"].')
    if any(v > 1 for v in out) and all(0 <= v <= 100 for v in out):
        raise Wrong(f'answer["{key}"] looks like percentages; give fractions, as score returns them.')
    if any(not 0 <= v <= 1 for v in out):
        raise Wrong(f'answer["{key}"] holds values outside [0, 1].')
    if fraction_of is not None and any(abs(v * fraction_of - round(v * fraction_of)) > 1e-4 for v in out):
        raise Wrong(f'answer["{key}"] holds values that are not shares of the {fraction_of} test sources.')
    return out


@register("16.on-policy-reverse", hint="only lmbda and beta of the chapter's run_gkd change; build, train and score "
                                       "each seed's student as run_gkd does, and keep the lists in the order of the "
                                       "seeds.")
def _check_16_on_policy_reverse(answer):
    answer_dict(answer, ("seeds", "valid", "low_mass"))
    seeds = answer_seeds(answer, min_seeds=2)
    valid = _per_seed(answer, "valid", len(seeds), fraction_of=SETTING["n_eval"])
    low = _per_seed(answer, "low_mass", len(seeds))
    i = picked([seeds, valid, low], len(seeds))  # one seed, fixed by the answer itself
    again = gkd_student(seeds[i], 1.0, 1.0, TEACHER)

    def matches(r):
        return (abs(r["valid"] - valid[i]) <= VALID_TOLERANCE / SETTING["n_eval"] + 1e-9
                and math.isclose(r["low_mass"], low[i], rel_tol=LOW_MASS_TOLERANCE, abs_tol=1e-4))

    if not matches(again):
        for lmbda, beta, what in ((0.0, 1.0, "off-policy (lmbda = 0)"), (0.5, 1.0, "half on-policy (lmbda = 0.5)"),
                                  (1.0, 0.0, "the forward KL (beta = 0)")):
            if matches(gkd_student(seeds[i], lmbda, beta, TEACHER)):
                raise Wrong(f"seed {seeds[i]}: your numbers are those of {what}; the exercise asks for lmbda = 1 "
                            "and beta = 1.")
        raise Wrong(f"seed {seeds[i]}: your answer says valid {100 * valid[i]:.1f} %, low_mass {100 * low[i]:.2f} %, "
                    f"but training the fully on-policy reverse-KL student in the live setting gives "
                    f"{100 * again['valid']:.1f} % and {100 * again['low_mass']:.2f} %. Check the method's arguments, "
                    "the setting, the scoring and the order of the values.")
    mean = sum(valid) / len(valid)
    return (f"your seed {seeds[i]} reproduces. {100 * mean:.1f} % of the fully on-policy students' samples are valid "
            "(mean over your seeds): compare the grid's rows with beta = 1, and their training times.")
