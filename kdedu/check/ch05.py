"""Auto-checks for the exercises of chapter 05 (registered with :func:`kdedu.check.register`)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
from collections.abc import Mapping

import torch

from kdedu.check import Wrong, answer_accuracies, close, function, register, same_tensor


def _ch05_shift_reference(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Image i moved dx[i] pixels right and dy[i] down, zero fill, by copying one block per image."""
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(n):
        a, b = int(dx[i]), int(dy[i])  # |a| < w and |b| < h
        out[i, :, max(0, b):h + min(0, b), max(0, a):w + min(0, a)] = \
            x[i, :, max(0, -b):h - max(0, b), max(0, -a):w - max(0, a)]
    return out


@register("05.translate", hint="the chapter's shift_images moves a whole batch by one offset; here every image has "
                               "its own. dx moves along the columns (the last dimension), and nothing wraps around.")
def _check_05_translate(fn):
    function("shift_batch(x, dx, dy)", fn)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 2, 7, 9, generator=g)  # not square, 2 channels: catches swapped axes
    dx = torch.tensor([0, 1, -2, 3, 0, -1])
    dy = torch.tensor([0, -1, 2, 0, 3, -3])
    expected = _ch05_shift_reference(x, dx, dy)
    got = fn(x.clone(), dx.clone(), dy.clone())
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and not torch.allclose(got, expected):
        rolled = torch.stack([torch.roll(x[i], (int(dy[i]), int(dx[i])), dims=(1, 2)) for i in range(len(x))])
        if torch.allclose(got, rolled):
            raise Wrong("pixels wrap around: what leaves the image on one side comes back on the other "
                        "(that is torch.roll). Pixels that leave must be dropped, and the empty side filled with 0.")
        if torch.allclose(got, _ch05_shift_reference(x, -dx, -dy)):
            raise Wrong("the images move the wrong way: positive dx must move them right, positive dy down.")
        if torch.allclose(got, _ch05_shift_reference(x, dy, dx)):
            raise Wrong("dx and dy are swapped: dx moves along the columns (the last dimension), dy along the rows.")
    same_tensor("your shift_batch(x, dx, dy) on (6, 2, 7, 9) images", got, expected)
    one = torch.tensor([2])
    same_tensor("your shift_batch on one image moved (2, 2)", fn(x[:1].clone(), one, one.clone()),
                _ch05_shift_reference(x[:1], one, one))
    return "every image moves by its own offset, with zero fill and nothing wrapping around."


def _ch05_kappa_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cohen's kappa of two label vectors, by counting (loops: obviously right)."""
    n, classes = len(a), sorted(set(a.tolist()) | set(b.tolist()))
    p_o = sum(int(u == v) for u, v in zip(a.tolist(), b.tolist(), strict=True)) / n
    p_e = sum((a == k).sum().item() / n * (b == k).sum().item() / n for k in classes)
    return (p_o - p_e) / (1 - p_e)


@register("05.agreement", hint="p_o is the chapter's agreement. p_e needs each model's class frequencies: how often "
                               "it predicts each of the C classes, as a fraction of the rows, counting also the "
                               "classes it never predicts.")
def _check_05_agreement(fn):
    function("my_kappa(logits_a, logits_b)", fn)
    g = torch.Generator().manual_seed(7)
    for n, c, same, skew in ((40, 10, 25, 0.0), (7, 3, 2, 0.0), (60, 10, 60, 2.0), (200, 10, 120, 3.0)):
        a = torch.randn(n, c, generator=g, dtype=torch.float64)
        b = torch.randn(n, c, generator=g, dtype=torch.float64)
        a[:, 1] += skew  # skewed models predict class 1 often: much of their agreement is chance
        b[:, 1] += skew
        b[:same] = 2.0 * a[:same] + 1.0  # the same prediction as `a` on these rows, other probabilities
        pred_a, pred_b = a.argmax(dim=-1), b.argmax(dim=-1)
        expected = _ch05_kappa_reference(pred_a, pred_b)
        got = fn(a.clone(), b.clone())
        if isinstance(got, torch.Tensor) and got.numel() > 1:
            raise Wrong(f"your function returned a tensor of shape {tuple(got.shape)}; "
                        "it should return one number, Cohen's kappa of the two models' predictions.")
        value = got.item() if isinstance(got, torch.Tensor) else got
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not math.isclose(value, expected, rel_tol=1e-5, abs_tol=1e-7):
            p_o = (pred_a == pred_b).double().mean().item()
            if math.isclose(value, p_o, rel_tol=1e-6):
                raise Wrong(f"you returned {value:.4g}, the raw agreement p_o; kappa also removes the agreement "
                            "expected by chance.")
            if math.isclose(value, (p_o - 1 / c) / (1 - 1 / c), rel_tol=1e-6):
                raise Wrong("your chance agreement is 1 / C, as for two uniform guessers; p_e must use the "
                            "two models' own class frequencies.")
        close(f"your kappa on ({n}, {c}) logits", got, expected, rel=1e-5, abs_=1e-7)
    return ("matches Cohen's kappa: 1 for identical predictions, about 0 for agreement at chance level, given "
            "each model's class frequencies.")


# ------------------------------------------------------------------------------------------------
# 05.permutation: an experiment. The reader trains an MLP and a SmallCNN on ordinary and on pixel-permuted digits
# over the chapter's seeds; the checker trains one of the submitted seeds again, all four ways, and recomputes
# both verdicts.
# ------------------------------------------------------------------------------------------------
PERMUTATION_SETTING = {"lr": 3e-3, "batch_size": 64, "n_test": 360, "min_seeds": 5,
                       "num_epochs": {"fast": 15, "full": 30}}
"""The chapter's setting: its ``train_student`` on the 1,078 training digits in shuffled batches of 64 (``loader_of``),
``num_epochs`` as the chapter picks it for the profile, scored on the 360 test digits."""

_ARCHITECTURES = ("MLP", "SmallCNN")
_RUNS = ("ordinary", "permuted")


def _permutation_epochs() -> int:
    from kdedu.profile import pick

    epochs = PERMUTATION_SETTING["num_epochs"]
    return pick(fast=epochs["fast"], full=epochs["full"])


@functools.lru_cache(maxsize=64)  # a resubmitted answer is checked again in no time
def permutation_accuracy(architecture: str, perm: tuple[int, ...] | None, seed: int, num_epochs: int) -> float:
    """Test accuracy of the chapter's ``train_student(Supervised, loader_of(x, y), seed, make=...)``.

    ``architecture`` is ``"MLP"`` (the chapter's student, 64-128-10) or ``"SmallCNN"``; the training and the test
    digits are seen through ``x.flatten(1)[:, perm].view(-1, 1, 8, 8)`` (``perm=None``: the ordinary digits).
    """
    from torch.utils.data import DataLoader, TensorDataset

    from kdedu.data import digits
    from kdedu.methods import Supervised
    from kdedu.models import MLP, SmallCNN
    from kdedu.train import evaluate, fit

    def pixels(x):
        return x if perm is None else x.flatten(1)[:, list(perm)].view(-1, 1, 8, 8)

    s = PERMUTATION_SETTING
    train, test = digits("train"), digits("test")
    loader = DataLoader(TensorDataset(pixels(train.x), train.y), batch_size=s["batch_size"], shuffle=True)
    torch.manual_seed(seed)
    net = MLP(in_features=64, hidden=(128,), num_classes=10) if architecture == "MLP" else SmallCNN()
    fit(Supervised(net), loader, num_epochs=num_epochs, lr=s["lr"], seed=seed, progress=False)
    return float(evaluate(net, DataLoader(TensorDataset(pixels(test.x), test.y), batch_size=512))["acc"])






def _ch05_perm(perm) -> tuple[int, ...]:
    if hasattr(perm, "tolist"):
        perm = perm.tolist()
    if isinstance(perm, (str, bytes, Mapping)) or not hasattr(perm, "__len__") or \
            not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in perm):
        raise Wrong('answer["perm"] should be a permutation of the 64 pixel positions: 64 integers, as '
                    "torch.randperm(64) gives them.")
    perm = tuple(int(i) for i in perm)
    if sorted(perm) != list(range(64)):
        raise Wrong(f'answer["perm"] is not a permutation of 0, 1, ..., 63 (it has {len(perm)} entries, '
                    f"{len(set(perm))} distinct).")
    if perm == tuple(range(64)):
        raise Wrong('answer["perm"] leaves every pixel where it is: draw a random permutation.')
    return perm


@register("05.permutation", hint="build one function that trains and tests a network on digits seen through a "
                                 "given pixel transformation, and call it with the identity and with your "
                                 "permutation, for both architectures and every seed; keep every list in the order "
                                 "of the seeds, and apply the same permutation to the training and the test digits.")
def _check_05_permutation(answer):
    from kdedu.stats import compare
    from kdedu.train import default_device

    s = PERMUTATION_SETTING
    if not isinstance(answer, Mapping):
        raise Wrong("the answer should be a dict with the keys perm, seeds, MLP and SmallCNN, got "
                    f"{type(answer).__name__}.")
    missing = [key for key in ("perm", "seeds", *_ARCHITECTURES) if key not in answer]
    if missing:
        raise Wrong(f"the answer lacks the key(s) {', '.join(missing)}.")
    perm = _ch05_perm(answer["perm"])
    seeds = answer["seeds"]
    seeds = list(seeds.tolist() if hasattr(seeds, "tolist") else seeds) if hasattr(seeds, "__iter__") else None
    if not seeds or isinstance(answer["seeds"], (str, bytes)) or \
            not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in seeds):
        raise Wrong('answer["seeds"] should be a list of integer seeds.')
    seeds = [int(x) for x in seeds]
    if len(set(seeds)) != len(seeds) or len(seeds) < s["min_seeds"] or min(seeds) < 0:
        raise Wrong(f'answer["seeds"] = {seeds}: give the chapter\'s seeds, at least {s["min_seeds"]} distinct '
                    "non-negative ones.")
    n = len(seeds)
    runs, verdicts = {}, {}
    for arch in _ARCHITECTURES:
        part = answer[arch]
        if not isinstance(part, Mapping) or any(key not in part for key in (*_RUNS, "verdict")):
            raise Wrong(f'answer["{arch}"] should be a dict with the keys ordinary, permuted and verdict.')
        for run in _RUNS:
            runs[arch, run] = answer_accuracies(f'answer["{arch}"]["{run}"]', part[run], n,
                                                PERMUTATION_SETTING["n_test"], "test digits")
        if runs[arch, "ordinary"] == runs[arch, "permuted"]:
            raise Wrong(f'answer["{arch}"]: the two lists are the same, seed by seed; the permuted digits are a '
                        "different training run.")
        verdict = part["verdict"]
        choices = ("better", "worse", "no clear difference")
        if verdict not in choices:
            raise Wrong(f'answer["{arch}"]["verdict"] should be one of {choices}, got {verdict!r}.')
        verdicts[arch] = compare(runs[arch, "ordinary"], runs[arch, "permuted"])
        if verdict != verdicts[arch]["verdict"]:
            raise Wrong(f'answer["{arch}"]["verdict"] = {verdict!r} is not what experiment.compare says of your two '
                        "lists, the ordinary digits first.")
    # one seed, picked from the submission itself: the same answer is always checked on the same seed
    blob = json.dumps([perm, seeds, sorted((f"{a}/{r}", v) for (a, r), v in runs.items())]).encode()
    i = int(hashlib.sha256(blob).hexdigest(), 16) % n
    epochs = _permutation_epochs()
    allowed = (1 if default_device().type == "cpu" else 3) / s["n_test"] + 1e-9  # a digit of float noise
    for arch in _ARCHITECTURES:
        for run in _RUNS:
            again = permutation_accuracy(arch, perm if run == "permuted" else None, seeds[i], epochs)
            if abs(again - runs[arch, run][i]) > allowed:
                how = "through your permutation, x.flatten(1)[:, perm].view(-1, 1, 8, 8), for the training and the " \
                      "test digits alike" if run == "permuted" else "unchanged"
                raise Wrong(f'seed {seeds[i]}: your answer["{arch}"]["{run}"] says {100 * runs[arch, run][i]:.2f} %, '
                            f"but the chapter's train_student with make={'make_student' if arch == 'MLP' else arch} "
                            f"({epochs} epochs, lr = {s['lr']:g}) on the digits {how} gives {100 * again:.2f} %. "
                            "Check the network, the setting, the permutation and the order of the values.")
    parts = [f"{arch}: ordinary − permuted = {100 * c['mean']:+.2f} ± {100 * c['se']:.2f} points, {c['verdict']} "
             f"(minimum detectable effect {100 * c['mde']:.2f})" for arch, c in verdicts.items()]
    return (f"your seed {seeds[i]} reproduces, all four ways. Over {n} seeds, " + "; ".join(parts) +
            ". Exploratory comparisons, not key ones.")
