"""kdedu.models: shapes, parameter counts against hand formulas, ResNet structure, measurement helpers."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from kdedu.models import MLP, ResNet, SmallCNN, count_parameters, cpu_latency, resnet


def _linear_params(i, o):
    return i * o + o


# ------------------------------------------------------------------------------------------
# MLP
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [(), (128,), (32, 16), (7, 5, 3)])
def test_mlp_shapes_and_parameter_count(hidden):
    model = MLP(64, hidden, 10)
    widths = [64, *hidden, 10]
    expected = sum(_linear_params(a, b) for a, b in itertools.pairwise(widths))
    assert count_parameters(model) == expected
    assert sum(p.numel() for p in model.parameters()) == expected
    x = torch.rand(5, 1, 8, 8)  # digits-shaped input is flattened
    assert model(x).shape == (5, 10)
    assert model(x.reshape(5, 64)).shape == (5, 10)


def test_mlp_defaults_and_dropout():
    model = MLP()
    assert count_parameters(model) == 64 * 128 + 128 + 128 * 10 + 10
    drop = MLP(64, (32,), 10, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in drop.modules())
    x = torch.rand(64, 64)
    drop.eval()
    assert torch.equal(drop(x), drop(x))  # dropout off in eval mode
    drop.train()
    torch.manual_seed(0)
    assert not torch.equal(drop(x), drop(x))
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            MLP(dropout=p)


def test_mlp_is_linear_without_hidden_layers():
    model = MLP(4, (), 3)
    x = torch.randn(6, 4, dtype=torch.float32)
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(lin) == 1
    torch.testing.assert_close(model(x), x @ lin[0].weight.T + lin[0].bias)


# ------------------------------------------------------------------------------------------
# SmallCNN
# ------------------------------------------------------------------------------------------
def test_small_cnn_shapes_and_parameter_count():
    model = SmallCNN(1, (32, 64), 10)
    # conv (no bias) + BatchNorm (weight, bias) per block, then the linear head
    expected = (1 * 32 * 9 + 2 * 32) + (32 * 64 * 9 + 2 * 64) + _linear_params(64, 10)
    assert count_parameters(model) == expected
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    assert model(torch.rand(3, 8, 8)).shape == (3, 10)  # the channel dimension is added
    rgb = SmallCNN(3, (8, 8, 16), 100)
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(ValueError, match="channels"):
        SmallCNN(1, ())


def test_small_cnn_is_translation_invariant_without_pooling():
    """Convolutions + global average pool: a shift of an image padded by zeros leaves the output unchanged."""
    torch.manual_seed(0)
    model = SmallCNN(1, (4, 4), 3, pool_every=0).eval()
    x = torch.zeros(1, 1, 12, 12)
    x[0, 0, 4:7, 3:6] = torch.rand(3, 3)
    shifted = torch.roll(x, shifts=(2, 3), dims=(2, 3))
    torch.testing.assert_close(model(x), model(shifted), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# ResNet
# ------------------------------------------------------------------------------------------
def _convs(model, k):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (k, k)]


@pytest.mark.parametrize("depth", [8, 20, 56, 110])
def test_resnet_structure_and_forward(depth):
    torch.manual_seed(0)
    model = resnet(depth)
    n = (depth - 2) // 6
    assert isinstance(model, ResNet) and model.depth == depth
    assert len(_convs(model, 3)) == 6 * n + 1  # the stem + two per basic block
    assert len(_convs(model, 1)) == 2  # projection shortcuts where stages 2 and 3 halve the resolution
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1  # depth = convs + the head = 6n + 2
    assert len(_convs(model, 3)) + 1 == depth
    out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_resnet20_parameter_count():
    # He et al. 2016 report ~0.27M parameters for ResNet-20
    assert 0.26e6 < count_parameters(resnet(20)) < 0.28e6
    assert count_parameters(resnet(110)) > 1.6e6


def test_resnet_options():
    model = resnet(8, num_classes=100, in_channels=1, width=2)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 100)
    assert model(torch.rand(2, 16, 16)).shape == (2, 100)
    assert model.head.in_features == 128


@pytest.mark.parametrize("depth", [7, 9, 2, 0, -4, 21])
def test_resnet_bad_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        resnet(depth)


# ------------------------------------------------------------------------------------------
# count_parameters
# ------------------------------------------------------------------------------------------
class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 5)
        self.b.weight = self.a.weight  # shared weight, separate biases

    def forward(self, x):
        return self.b(self.a(x))


def test_count_parameters_counts_shared_once():
    assert count_parameters(Tied()) == 25 + 5 + 5
    lin = nn.Linear(3, 4)
    same = nn.Sequential(lin, lin)  # the same module twice
    assert count_parameters(same) == 16


def test_count_parameters_trainable_only_and_type():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 16 + 10
    assert count_parameters(model, trainable_only=True) == 10
    with pytest.raises(TypeError, match="model"):
        count_parameters(torch.zeros(3))


# ------------------------------------------------------------------------------------------
# cpu_latency
# ------------------------------------------------------------------------------------------
def test_cpu_latency_sane_and_restores_state():
    model = MLP(64, (32,), 10, dropout=0.1)
    model.train()
    torch.set_num_threads(2)  # cpu_latency measures on 1 thread by default, then must put 2 back
    threads = torch.get_num_threads()
    try:
        out = cpu_latency(model, torch.rand(4, 64), repeats=7, warmup=1)
        assert torch.get_num_threads() == threads  # the thread count is restored
    finally:
        torch.set_num_threads(1)
    assert set(out) >= {"median_ms", "p10_ms", "p90_ms", "repeats"}
    assert out["repeats"] == 7
    assert 0 < out["p10_ms"] <= out["median_ms"] <= out["p90_ms"] < 1000
    assert model.training  # the training mode is restored
    model.eval()
    cpu_latency(model, torch.rand(4, 64), repeats=2, warmup=0, num_threads=None)
    assert not model.training


def test_cpu_latency_restores_state_when_the_model_fails():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            raise RuntimeError("boom")

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        cpu_latency(model, torch.rand(1, 2), repeats=2, num_threads=2)
    assert torch.get_num_threads() == 1 and model.training


def test_cpu_latency_bad_arguments():
    model = MLP(4, (), 2)
    with pytest.raises(TypeError, match="example"):
        cpu_latency(model, [[0.0] * 4])
    with pytest.raises(ValueError, match="repeats"):
        cpu_latency(model, torch.rand(1, 4), repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        cpu_latency(model, torch.rand(1, 4), warmup=-1)
