"""TAKD (Mirzadeh et al. 2020): teacher -> assistant 1 -> ... -> student, each step one KD run.

The chain is checked by spying on the ``KD`` that :mod:`kdedu.methods.takd` builds (which teacher and
student each step gets), the 0-assistant case against a hand-written ``KD`` + ``fit`` run with the same
seed (identical weights), and the cost report against counts made here.
"""

from __future__ import annotations

import copy
import importlib
import inspect

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdedu.methods import KD, TAKDResult, takd
from kdedu.models import MLP, count_parameters
from kdedu.train import fit

takd_module = importlib.import_module("kdedu.methods.takd")


@pytest.fixture(scope="module")
def loaders():
    """A tiny synthetic 3-class problem labelled by a fixed random linear map."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(-1)
    return (DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16, shuffle=True),
            DataLoader(TensorDataset(x[48:], y[48:]), batch_size=32))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(123)
    net = MLP(6, (32,), 3)
    with torch.no_grad():
        net.net[-1].weight.mul_(4)
    return net.eval()


def builder(hidden):
    return lambda: MLP(6, hidden, 3)


def state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


FIT = {"num_epochs": 2, "lr": 0.02, "progress": False}


class SpyKD:
    """Stands in for ``kdedu.methods.takd.KD``: records each call (bound to KD's signature) and the teacher's
    weights at that moment, then builds the real KD."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        bound = inspect.signature(KD).bind(*args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        call["teacher_state"] = state(call["teacher"])
        self.calls.append(call)
        return KD(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# zero assistants: plain KD
# ------------------------------------------------------------------------------------------
def test_no_assistant_is_exactly_one_kd_run(teacher, loaders):
    train_loader, val_loader = loaders
    make_student = builder((8,))
    result = takd(teacher, [], make_student, train_loader, val_loader, alpha=0.7, temperature=3.0, seed=5, **FIT)
    assert isinstance(result, TAKDResult)
    assert len(result.networks) == 1 and result.assistants == [] and result.student is result.networks[0]
    assert len(result.histories) == 1 and len(result.histories[0]) == FIT["num_epochs"]

    torch.manual_seed(5)
    student = make_student()
    history = fit(KD(student, teacher, alpha=0.7, temperature=3.0), train_loader, val_loader, seed=5, **FIT)
    assert_same_state(state(result.student), state(student))
    for key in ("ce", "kd", "loss", "val_acc", "val_loss"):
        assert result.histories[0][key] == history[key], key
    assert result.cost["extra_runs"] == 0 and len(result.cost["steps"]) == 1
    assert result.cost["steps"][0]["name"] == "student"


def test_no_assistant_differs_from_kd_with_another_seed(teacher, loaders):
    """The equality above is not vacuous: a different seed gives different weights."""
    train_loader, val_loader = loaders
    make_student = builder((8,))
    result = takd(teacher, [], make_student, train_loader, val_loader, seed=5, **FIT)
    torch.manual_seed(6)
    student = make_student()
    fit(KD(student, teacher), train_loader, val_loader, seed=6, **FIT)
    assert any(not torch.equal(a, b) for a, b in zip(result.student.state_dict().values(),
                                                      student.state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------
# with assistants: each network teaches the next
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [[(16,)], [(24,), (12,)]])
def test_each_network_is_the_teacher_of_the_next(teacher, loaders, monkeypatch, hidden):
    train_loader, val_loader = loaders
    spy = SpyKD()
    monkeypatch.setattr(takd_module, "KD", spy)
    built = []

    def tracked(h):
        def build():
            net = MLP(6, h, 3)
            built.append((h, net, state(net)))
            return net
        return build

    result = takd(teacher, [tracked(h) for h in hidden], tracked((4,)), train_loader, val_loader,
                  alpha=0.6, temperature=2.5, seed=11, **FIT)
    m = len(hidden)
    assert len(spy.calls) == m + 1 and len(result.networks) == m + 1 and len(result.histories) == m + 1
    assert [h for h, _, _ in built] == [*hidden, (4,)]  # built in chain order, one per step
    assert result.student is result.networks[-1] and result.assistants == result.networks[:-1]
    assert len({id(n) for n in result.networks}) == m + 1 and all(n is not teacher for n in result.networks)
    for i, call in enumerate(spy.calls):
        assert call["student"] is result.networks[i] is built[i][1]
        expected_teacher = teacher if i == 0 else result.networks[i - 1]
        assert call["teacher"] is expected_teacher, f"step {i} must be taught by network {i - 1}"
        assert (call["alpha"], call["temperature"]) == (0.6, 2.5)
    # each teacher was already trained when its student started (it is not the freshly built network) ...
    for i in range(1, m + 1):
        assert any(not torch.equal(spy.calls[i]["teacher_state"][k], built[i - 1][2][k]) for k in built[i - 1][2])
        # ... and it never moved afterwards: its final weights are the ones it taught with
        assert_same_state(state(result.networks[i - 1]), spy.calls[i]["teacher_state"])
    # assistant i (1-based) is built after torch.manual_seed(seed + i); the student after torch.manual_seed(seed)
    for i, (h, _, initial) in enumerate(built):
        torch.manual_seed(11 if i == m else 11 + i + 1)
        assert_same_state(initial, state(MLP(6, h, 3)))


def test_one_assistant_chain_matches_two_manual_kd_runs(teacher, loaders):
    """teacher -> assistant -> student, rebuilt by hand with the documented seeds, gives the same student."""
    train_loader, val_loader = loaders
    result = takd(teacher, [builder((16,))], builder((4,)), train_loader, val_loader, alpha=0.5, temperature=4.0,
                  seed=3, **FIT)
    torch.manual_seed(4)
    assistant = builder((16,))()
    fit(KD(assistant, teacher, alpha=0.5, temperature=4.0), train_loader, val_loader, seed=4, **FIT)
    torch.manual_seed(3)  # the student starts where a plain KD student of seed 3 starts
    student = builder((4,))()
    fit(KD(student, assistant, alpha=0.5, temperature=4.0), train_loader, val_loader, seed=3, **FIT)
    assert_same_state(state(result.assistants[0]), state(assistant))
    assert_same_state(state(result.student), state(student))


def test_teacher_is_not_modified(teacher, loaders):
    train_loader, val_loader = loaders
    before = state(teacher)
    takd(teacher, [builder((16,))], builder((4,)), train_loader, val_loader, seed=0, **FIT)
    assert_same_state(state(teacher), before)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


# ------------------------------------------------------------------------------------------
# the cost report
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden,num_epochs", [([], 1), ([(20,)], 2), ([(24,), (12,)], 1)])
def test_cost_dict(teacher, loaders, hidden, num_epochs):
    train_loader, val_loader = loaders
    fit_kwargs = {**FIT, "num_epochs": num_epochs}
    result = takd(teacher, [builder(h) for h in hidden], builder((4,)), train_loader, val_loader, seed=0,
                  **fit_kwargs)
    cost = result.cost
    steps = cost["steps"]
    assert [s["name"] for s in steps] == [f"assistant {i + 1}" for i in range(len(hidden))] + ["student"]
    for step, net in zip(steps, result.networks, strict=True):
        assert step["params"] == count_parameters(net) == sum(p.numel() for p in net.parameters())
        assert step["epochs"] == num_epochs
        assert step["time_s"] > 0
    # the sizes are those of the builders: MLP(6, (h,), 3) has 6h + h + 3h + 3 parameters
    assert [s["params"] for s in steps] == [10 * h[0] + 3 for h in [*hidden, (4,)]]
    assert cost["total_epochs"] == sum(s["epochs"] for s in steps) == (len(hidden) + 1) * num_epochs
    assert cost["total_time_s"] == pytest.approx(sum(s["time_s"] for s in steps))
    assert cost["extra_runs"] == len(hidden)
    assert [len(h) for h in result.histories] == [num_epochs] * (len(hidden) + 1)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [None, "teacher", 3, lambda x: x])
def test_bad_teacher_type_raises(loaders, bad):
    train_loader, val_loader = loaders
    calls = []

    def make_student():
        calls.append(1)
        return MLP(6, (4,), 3)

    with pytest.raises(TypeError, match="teacher"):
        takd(bad, [], make_student, train_loader, val_loader, **FIT)
    assert calls == []  # refused before building or training anything


def test_fit_kwargs_reach_fit(teacher, loaders, monkeypatch):
    train_loader, val_loader = loaders
    seen = []
    real_fit = takd_module.fit

    def spy_fit(distiller, *args, **kwargs):
        seen.append(kwargs)
        return real_fit(distiller, *args, **kwargs)

    monkeypatch.setattr(takd_module, "fit", spy_fit)
    takd(teacher, [builder((16,))], builder((4,)), train_loader, val_loader, seed=7, num_epochs=1, lr=0.05,
         optimizer="sgd", progress=False)
    assert [(k["num_epochs"], k["lr"], k["optimizer"], k["seed"]) for k in seen] == [(1, 0.05, "sgd", 8),
                                                                                     (1, 0.05, "sgd", 7)]


def test_same_seed_gives_the_same_chain(teacher, loaders):
    """Two runs with the same seed give the same chain (determinism), as independent modules."""
    train_loader, val_loader = loaders
    a = takd(teacher, [builder((16,))], builder((4,)), train_loader, val_loader, seed=2, **FIT)
    b = takd(copy.deepcopy(teacher), [builder((16,))], builder((4,)), train_loader, val_loader, seed=2, **FIT)
    for na, nb in zip(a.networks, b.networks, strict=True):
        assert na is not nb
        assert_same_state(state(na), state(nb))
