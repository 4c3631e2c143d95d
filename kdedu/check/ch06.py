"""Auto-checks for the exercises of chapter 06 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

import torch

from kdedu.check import Wrong, answer_number, close, function, register, same_tensor


def _ch06_logits(seed: int, members: int = 4, n: int = 200, c: int = 10) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 3.0, 1.0, 6.0, 2.0])  # members of very different confidence
    return [scales[i % len(scales)] * torch.randn(n, c, generator=g, dtype=torch.float64) for i in range(members)]


@register("06.ensemble", hint="the ensemble averages probabilities, not logits (chapter 06: the ensemble of "
                              "generations is the mean of their softmax outputs); mind which axis holds the members "
                              "and which the classes.")
def _check_06_ensemble(fn):
    function("ensemble_probs(logits_list)", fn)
    for seed, members in ((0, 4), (1, 3), (2, 1)):
        logits = _ch06_logits(seed, members)
        expected = torch.stack([z.softmax(dim=-1) for z in logits]).mean(dim=0)  # (N, C)
        got = fn([z.clone() for z in logits])
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
            if torch.allclose(got.double(), torch.stack(logits).mean(dim=0).softmax(dim=-1), atol=1e-6):
                raise Wrong("you averaged the logits, then took the softmax: that is a different ensemble "
                            "(a normalised geometric mean of the probabilities). Average the probabilities.")
            if torch.allclose(got.double(), torch.stack(logits).mean(dim=0), atol=1e-6):
                raise Wrong("you returned the average of the logits; the ensemble averages probabilities.")
        same_tensor(f"your ensemble_probs of {members} members", got, expected)
    return "averages the members' probabilities, as kdedu.methods.ensemble_logits does."


@register("06.ensemble-acc", hint="build the ensemble's probabilities as in exercise 6.1; its prediction for an "
                                  "example is its most probable class, and accuracy is a fraction, not a count.")
def _check_06_ensemble_acc(fn):
    function("ensemble_accuracy(logits_list, labels)", fn)
    for seed, members in ((3, 4), (4, 2)):
        logits = _ch06_logits(seed, members)
        g = torch.Generator().manual_seed(seed + 100)
        # labels that agree with the probability-averaged ensemble on about 70 % of the rows
        probs = torch.stack([z.softmax(dim=-1) for z in logits]).mean(dim=0)
        labels = torch.where(torch.rand(len(probs), generator=g) < 0.7, probs.argmax(dim=-1),
                             torch.randint(0, probs.shape[-1], (len(probs),), generator=g))
        expected = (probs.argmax(dim=-1) == labels).double().mean().item()
        got = fn([z.clone() for z in logits], labels.clone())
        value = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
        if isinstance(value, (int, float)):
            by_logits = (torch.stack(logits).mean(dim=0).argmax(dim=-1) == labels).double().mean().item()
            votes = torch.stack([z.argmax(dim=-1) for z in logits])  # (M, N)
            majority = torch.mode(votes, dim=0).values
            by_vote = (majority == labels).double().mean().item()
            if math.isclose(value, by_logits, rel_tol=1e-6) and not math.isclose(by_logits, expected):
                raise Wrong("that is the accuracy of the logit-averaged ensemble; average the probabilities.")
            if math.isclose(value, by_vote, rel_tol=1e-6) and not math.isclose(by_vote, expected):
                raise Wrong("that is the accuracy of a majority vote; average the probabilities instead.")
            if math.isclose(value, 100 * expected, rel_tol=1e-6):
                raise Wrong(f"{value} looks like a percentage; return a fraction between 0 and 1.")
        close(f"your ensemble accuracy ({members} members)", got, expected, rel=1e-6, abs_=1e-9)
    return "matches the accuracy of the probability-averaged ensemble."


# ------------------------------------------------------------------------------------------------
# 06.diversity: an experiment. The reader trains, for every seed of the chapter, a born-again chain and the
# control's independent networks on the clean labels and measures how often members disagree; the checker trains
# one of the submitted seeds again, both families, and recomputes the verdict.
# ------------------------------------------------------------------------------------------------
DIVERSITY_SETTING = {"num_train": 200, "generations": 3, "num_epochs": 100, "lr": 1e-2, "temperature": 4.0,
                     "alpha": 1.0, "n_test": 360, "min_seeds": 5}
"""The chapter's setting: an MLP 64-128-10, the first 200 training digits in one full batch, 100 epochs at
lr 1e-2; the chain is ``train_chain(clean_loader, 100 * s)`` (``born_again`` with T = 4, alpha = 1) and the control
``train_independent(clean_loader, 100 * s, gens[0])`` (networks seeded 100 * s + 50 + j on the labels)."""


def _ch06_members(seed: int) -> tuple[list, list]:
    """The chapter's two families for seed ``s = seed``: the chain's 4 generations and the 4 independent networks."""
    from torch.utils.data import DataLoader

    from kdedu.data import digits
    from kdedu.methods import Supervised, born_again
    from kdedu.models import MLP
    from kdedu.train import fit

    s = DIVERSITY_SETTING
    train = digits("train", limit=s["num_train"])
    loader = DataLoader(train.dataset(), batch_size=s["num_train"], shuffle=True)

    def make_model():
        return MLP(in_features=64, hidden=(128,), num_classes=10)

    gens, _ = born_again(make_model, loader, generations=s["generations"], alpha=s["alpha"],
                         temperature=s["temperature"], seed=100 * seed, num_epochs=s["num_epochs"], lr=s["lr"],
                         progress=False)
    nets = [gens[0]]
    for j in range(1, s["generations"] + 1):
        torch.manual_seed(100 * seed + 50 + j)
        net = make_model()
        fit(Supervised(net), loader, num_epochs=s["num_epochs"], lr=s["lr"], seed=100 * seed + 50 + j, progress=False)
        nets.append(net)
    return list(gens), nets


@functools.lru_cache(maxsize=32)  # a resubmitted answer is checked again in no time
def diversity_measures(seed: int) -> dict[str, dict[str, float]]:
    """For the chapter's seed ``s``: each family's mean pairwise disagreement on the test digits (the answer), and
    the usual slips measured on the same networks (consecutive pairs only, the training digits)."""
    from kdedu.data import digits, make_loader
    from kdedu.train import predict

    test_loader = make_loader(digits("test"), batch_size=512)
    train_loader = make_loader(digits("train", limit=DIVERSITY_SETTING["num_train"]), batch_size=512)

    def preds(members, loader):
        return [predict(m, loader)[0].argmax(-1) for m in members]

    def pairs(p, consecutive=False):
        idx = [(i, i + 1) for i in range(len(p) - 1)] if consecutive else \
            [(i, j) for i in range(len(p)) for j in range(i + 1, len(p))]
        return sum((p[i] != p[j]).double().mean().item() for i, j in idx) / len(idx)

    out = {}
    for name, members in zip(("born_again", "independent"), _ch06_members(seed), strict=True):
        test, train = preds(members, test_loader), preds(members, train_loader)
        out[name] = {"all pairs": pairs(test), "consecutive pairs": pairs(test, consecutive=True),
                     "training digits": pairs(train)}
    return out




def _ch06_list(name: str, values, n: int) -> list[float]:
    if hasattr(values, "tolist"):  # a tensor or a numpy array
        values = values.tolist()
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise Wrong(f'answer["{name}"] should be a list of per-seed diversities, got {type(values).__name__}.')
    out = [answer_number(f'an entry of answer["{name}"]', v) for v in values]
    if len(out) != n:
        raise Wrong(f'answer["{name}"] has {len(out)} values for {n} seeds: give one diversity per seed, in the order '
                    'of answer["seeds"].')
    if any(v > 1 for v in out) and all(0 <= v <= 100 for v in out):
        raise Wrong(f'answer["{name}"] looks like percentages; give fractions between 0 and 1.')
    if any(not 0 <= v <= 1 for v in out):
        raise Wrong(f'answer["{name}"] holds values outside [0, 1]: a diversity is a fraction of test digits.')
    if all(v > 0.5 for v in out):
        raise Wrong(f'answer["{name}"] is above 0.5 on every seed: that looks like the agreement of the members, the '
                    "fraction of digits on which they predict the same class. The diversity counts the digits on "
                    "which they differ.")
    return out


@register("06.diversity", hint="one function that takes a list of trained members and returns the fraction of test "
                               "digits on which two of them disagree, averaged over every pair, serves both families; "
                               "train the two families of a seed exactly as the experiment does, and keep every list "
                               "in the order of the seeds.")
def _check_06_diversity(answer):
    from kdedu.stats import compare
    from kdedu.train import default_device

    s = DIVERSITY_SETTING
    if not isinstance(answer, Mapping):
        raise Wrong("the answer should be a dict with the keys seeds, born_again, independent and verdict, got "
                    f"{type(answer).__name__}.")
    missing = [key for key in ("seeds", "born_again", "independent", "verdict") if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")
    seeds = answer["seeds"]
    seeds = list(seeds.tolist() if hasattr(seeds, "tolist") else seeds) if hasattr(seeds, "__iter__") else None
    if not seeds or isinstance(answer["seeds"], (str, bytes)) or \
            not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in seeds):
        raise Wrong('answer["seeds"] should be a list of integer seeds.')
    seeds = [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < s["min_seeds"] or min(seeds) < 0:
        raise Wrong(f'answer["seeds"] = {seeds}: give the chapter\'s seeds s, at least {s["min_seeds"]} distinct '
                    "non-negative ones.")
    n = len(seeds)
    born, indep = _ch06_list("born_again", answer["born_again"], n), _ch06_list("independent", answer["independent"], n)
    if all(v == 0 for v in born + indep):
        raise Wrong("your lists say that every pair of members predicts the same class on every digit, for every seed: "
                    "that is what the training digits give, which every network fits. Measure on the 360 test "
                    "digits.")
    if born == indep:
        raise Wrong("the two lists are the same, seed by seed: the chain and the independent networks are different "
                    "families (only generation 0 is in both).")
    choices = ("better", "worse", "no clear difference")
    if answer["verdict"] not in choices:
        raise Wrong(f'answer["verdict"] should be one of {choices}, got {answer["verdict"]!r}.')
    c = compare(indep, born)
    if answer["verdict"] != c["verdict"]:
        raise Wrong(f'answer["verdict"] = {answer["verdict"]!r} is not what experiment.compare says of your two '
                    "lists, the independent networks first.")
    # one seed, picked from the submission itself: the same answer is always checked on the same seed
    i = int(hashlib.sha256(json.dumps([seeds, born, indep]).encode()).hexdigest(), 16) % n
    measured = diversity_measures(seeds[i])
    # float noise: one test digit that one member predicts otherwise moves the mean over 6 pairs by up to 3 / (6 * 360)
    allowed = (1 if default_device().type == "cpu" else 3) / (2 * s["n_test"]) + 1e-9
    for name, got in (("born_again", born[i]), ("independent", indep[i])):
        m = measured[name]
        if abs(got - m["all pairs"]) <= allowed:
            continue
        other = "independent" if name == "born_again" else "born_again"
        if abs(got - measured[other]["all pairs"]) <= allowed:
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] is the diversity of the other family: the lists are '
                        "swapped.")
        if abs(got - m["consecutive pairs"]) <= allowed:
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] averages only the 3 consecutive pairs of members; '
                        "the diversity averages all 6 pairs of the 4 members.")
        if abs(got - m["training digits"]) <= allowed:
            raise Wrong(f'seed {seeds[i]}: your answer["{name}"] is measured on the training digits; the diversity '
                        "is measured on the 360 test digits.")
        raise Wrong(f'seed {seeds[i]}: your answer["{name}"] says {got:.4f}, but the chapter\'s families for this '
                    f"seed (train_chain and train_independent on the clean labels, seed 100 * {seeds[i]}) disagree on "
                    f"{m['all pairs']:.4f} of the test digits, over all pairs. Check the families, the setting and "
                    "the order of the values.")
    return (f"your seed {seeds[i]} reproduces, both families. Independent − born-again diversity = "
            f"{100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points over {n} seeds: {c['verdict']} (exploratory; "
            f"minimum detectable effect {100 * c['mde']:.2f} points). An ensemble can only correct the digits on "
            "which its members disagree.")
