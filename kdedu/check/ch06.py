"""Auto-checks for the exercises of chapter 06 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import math

import torch

from kdedu.check import Wrong, close, function, register, same_tensor


def _ch06_logits(seed: int, members: int = 4, n: int = 200, c: int = 10) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 3.0, 1.0, 6.0, 2.0])  # members of very different confidence
    return [scales[i % len(scales)] * torch.randn(n, c, generator=g, dtype=torch.float64) for i in range(members)]


@register("06.ensemble", hint="the ensemble averages probabilities, not logits (see the formula under eq. "
                              "(eq-born-again)); mind which axis holds the members and which the classes.")
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
