"""The exercise checkers of chapter 08 (Annealing KD).

For every checker: a correct answer passes, plausible wrong answers fail (with a message), and
``None`` as "not answered yet" is checked for every exercise in tests/test_check.py.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from checks import LazyAnswer, answer_tests, shift

from kdedu import check, experiment


def _verdict(exercise_id, answer):
    return check.exercise(exercise_id, answer, verbose=False)


def phi_line(T, tau_max, T_start):  # through (1, 1) and (tau_max, 1 / T_start)
    return 1 - (T - 1) / (tau_max - 1) * (1 - 1 / T_start)


@functools.cache
def _ladder_runs() -> dict:
    """The exercise's experiment, done as the chapter's solution does it (once per test session): the chapter's
    train_student in the live setting (300 digits, 20 epochs, lr 0.03) over 5 seeds, Annealing KD (tau_max=10,
    k=1) and the shorter ladder tau_max=5, k=2."""
    import kdedu
    from kdedu.methods import AnnealingKD
    from kdedu.models import SmallCNN

    teacher = kdedu.zoo.teacher("digits-cnn", verbose=False)
    train_loader = kdedu.data.make_loader(kdedu.data.digits("train", limit=300), batch_size=32, shuffle=True)
    test_loader = kdedu.data.make_loader(kdedu.data.digits("test"), batch_size=512)
    lr, seeds = 3e-2, list(range(5))

    def accuracy(tau_max, k, seed):
        torch.manual_seed(seed)
        student = SmallCNN(channels=(4, 8))
        kdedu.fit(AnnealingKD(student, teacher, tau_max=tau_max, k=k), train_loader, None, num_epochs=20, lr=lr,
                  seed=seed, progress=False)
        return kdedu.evaluate(student, test_loader)["acc"]

    annealing = [accuracy(10, 1, s) for s in seeds]
    five_steps = [accuracy(5, 2, s) for s in seeds]
    return {"seeds": seeds, "lr": lr, "annealing": annealing, "five_steps": five_steps,
            "verdict": experiment.compare(annealing, five_steps)["verdict"]}


def Ladder(what: str, change=lambda answer: answer) -> LazyAnswer:
    """An answer made from the correct one by ``change`` when it is first read (tests/checks.py)."""
    return LazyAnswer(_ladder_runs, what, change)


def _with(**changes):
    """The correct answer with some entries changed; the verdict recomputed from the lists unless it is changed."""
    def change(answer):
        answer = {**answer, **{k: (v(answer) if callable(v) else v) for k, v in changes.items()}}
        if "verdict" not in changes:
            answer["verdict"] = experiment.compare(answer["annealing"], answer["five_steps"])["verdict"]
        return answer
    return change


def _other_verdict(answer):
    return next(v for v in ("better", "worse", "no clear difference") if v != answer["verdict"])


CORRECT = {
    "08.phi": [phi_line, lambda T, tau_max, T_start: torch.tensor(phi_line(T, tau_max, T_start))],
    "08.schedule": [
        lambda tau_max, k: [1 / T for T in range(tau_max, 0, -1) for _ in range(k)],
        lambda tau_max, k: 1 / torch.arange(tau_max, 0, -1).repeat_interleave(k),  # a tensor is fine too
    ],
    "08.gradient": [lambda z_s, z_t, phi: 2 * (z_s - phi * z_t) / z_s.numel()],
    "08.effective-T": [6, 6.0, torch.tensor(6)],
    "08.ladder": [
        Ladder("as the chapter's solution makes it"),
        Ladder("arrays and tuples", _with(seeds=lambda a: tuple(a["seeds"]),
                                          annealing=lambda a: np.array(a["annealing"]),
                                          five_steps=lambda a: torch.tensor(a["five_steps"], dtype=torch.float64),
                                          verdict=lambda a: a["verdict"])),
    ],
}

WRONG = {
    "08.phi": [
        lambda T, tau_max, T_start: 1 - (T - 1) / tau_max,  # the deck's Phi, ignores T_start
        lambda T, tau_max, T_start: 1 / (1 + (T_start - 1) * (T - 1) / (tau_max - 1)),  # linear softmax temperature
        lambda T, tau_max, T_start: 1 - (T - 1) / (tau_max - 1) * (1 - T_start),  # T_start instead of 1 / T_start
        lambda T, tau_max, T_start: phi_line(tau_max - T + 1, tau_max, T_start),  # runs the wrong way
        "not a function",
    ],
    "08.schedule": [
        lambda tau_max, k: [1 - (T - 1) / tau_max for T in range(tau_max, 0, -1) for _ in range(k)],  # the deck's
        lambda tau_max, k: [T for T in range(tau_max, 0, -1) for _ in range(k)],  # temperatures, not Phi
        lambda tau_max, k: [1 / T for T in range(1, tau_max + 1) for _ in range(k)],  # upwards
        lambda tau_max, k: [1 / T for T in range(tau_max, 0, -1)] * k,  # interleaved instead of held
        lambda tau_max, k: [1 / T for T in range(tau_max, 0, -1)],  # ignores k
    ],
    "08.gradient": [
        lambda z_s, z_t, phi: 2 * (z_s - phi * z_t),  # the deck's sum, not kdedu's mean
        lambda z_s, z_t, phi: (z_s - phi * z_t) / z_s.numel(),  # no factor 2
        lambda z_s, z_t, phi: 2 * (phi * z_t - z_s) / z_s.numel(),  # sign
        lambda z_s, z_t, phi: 2 * (z_s - phi * z_t) / len(z_s),  # mean over rows only
        lambda z_s, z_t, phi: 2 * (z_s - z_t) / z_s.numel(),  # ignores phi
    ],
    "08.effective-T": [3, 5, 8, 4, 14, "six"],
    "08.ladder": [
        Ladder("the verdict of another comparison", _with(verdict=_other_verdict)),
        Ladder("the five steps' accuracies made up", _with(five_steps=lambda a: shift(a["five_steps"], 2))),
        Ladder("Annealing KD's accuracies made up", _with(annealing=lambda a: shift(a["annealing"], -2))),
        Ladder("trained at another learning rate than the one stated", _with(lr=1e-2)),
        Ladder("the five steps' list copied from Annealing KD", _with(five_steps=lambda a: list(a["annealing"]))),
        Ladder("percentages", _with(annealing=lambda a: [100 * v for v in a["annealing"]],
                                    five_steps=lambda a: [100 * v for v in a["five_steps"]])),
        Ladder("too few seeds", _with(seeds=[0, 1, 2], annealing=lambda a: a["annealing"][:3],
                                      five_steps=lambda a: a["five_steps"][:3])),
        Ladder("one value missing", _with(five_steps=lambda a: a["five_steps"][:-1], verdict="better")),
        {"seeds": [0, 1, 2, 3, 4], "lr": 0.03},  # keys missing
        [0.9, 0.91, 0.92],
    ],
}

test_correct_answers_pass, test_wrong_answers_fail = answer_tests(CORRECT, WRONG)


def test_every_chapter_08_exercise_is_tested():
    ours = {k for k in check.EXERCISES if k.startswith("08.")}
    assert ours == set(CORRECT) == set(WRONG)


def test_targeted_messages():
    assert "deck's Phi" in _verdict("08.phi", WRONG["08.phi"][0]).message
    assert "softmax temperature 1 / Phi is linear" in _verdict("08.phi", WRONG["08.phi"][1]).message
    assert "deck's schedule" in _verdict("08.schedule", WRONG["08.schedule"][0]).message
    assert "temperatures" in _verdict("08.schedule", WRONG["08.schedule"][1]).message
    assert "backwards" in _verdict("08.schedule", WRONG["08.schedule"][2]).message
    assert "consecutive" in _verdict("08.schedule", WRONG["08.schedule"][3]).message
    assert "squared norm" in _verdict("08.gradient", WRONG["08.gradient"][0]).message
    assert "steps" in _verdict("08.effective-T", 3).message
    assert "tau_max = 10" in _verdict("08.effective-T", 5).message
    assert "one step too many" in _verdict("08.effective-T", 8).message


def test_ladder_messages():
    wrong = {a.what: a for a in WRONG["08.ladder"] if isinstance(a, LazyAnswer)}
    expected = {
        "the verdict of another comparison": "not what experiment.compare says",
        "the five steps' accuracies made up": "five steps (tau_max=5, k=2)",
        "Annealing KD's accuracies made up": "Annealing KD (tau_max=10, k=1)",
        "the five steps' list copied from Annealing KD": "the same, seed by seed",
        "percentages": "percentages",
        "too few seeds": "at least 5",
    }
    for what, message in expected.items():
        assert message in _verdict("08.ladder", wrong[what]).message, what
    missing_keys = WRONG["08.ladder"][-2]
    assert "lacks the key(s) annealing, five_steps, verdict" in _verdict("08.ladder", missing_keys).message


def test_ladder_hint_gives_no_answer():
    hint = check.hint("08.ladder", verbose=False)
    assert hint and not any(word in hint for word in ("better", "worse", "no clear", "tau_max=5", "k=2", "0."))
