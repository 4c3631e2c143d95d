"""kdedu.zoo: train once, then load; corrupt, stale or half-written entries are retrained, never used."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

import kdedu._io
from kdedu import zoo


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache: $KDEDU_CACHE points into the test's tmp folder."""
    monkeypatch.setenv("KDEDU_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KDEDU_PROGRESS", "0")


class Recipe:
    """A tiny build/train pair that counts how often it trains."""

    def __init__(self, arch=(3, 2)):
        self.arch = arch
        self.calls = 0
        self.builds = 0

    def build(self):
        self.builds += 1
        return nn.Linear(*self.arch)

    def train(self, model):
        self.calls += 1
        with torch.no_grad():
            model.weight.fill_(0.5 * self.calls)
            model.bias.fill_(-1.0)
        return {"val_acc": 0.25 * self.calls}


CONFIG = {"arch": "linear", "num_epochs": 3, "lr": 0.1}


def _cache(recipe, root, config=CONFIG):
    return zoo.cached("toy", config, recipe.build, recipe.train, root=root, verbose=False)


def _entry(root):
    pts, jsons = sorted(root.glob("toy-*.pt")), sorted(root.glob("toy-*.json"))
    assert len(pts) == 1 and len(jsons) == 1
    return pts[0], jsons[0]


def _no_temp_files(root):
    return not [p.name for p in root.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def _no_warnings(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


# ------------------------------------------------------------------------------------------
# cached
# ------------------------------------------------------------------------------------------
def test_cached_trains_once_then_loads(tmp_path):
    recipe = Recipe()
    model, meta = _cache(recipe, tmp_path)
    assert recipe.calls == 1 and meta["metrics"] == {"val_acc": 0.25}
    assert recipe.builds == 1  # nothing to load: the model is built once (MiniLM takes seconds to build)
    assert meta["config"] == CONFIG and meta["name"] == "toy"
    loaded, meta2 = _no_warnings(lambda: _cache(recipe, tmp_path))
    assert recipe.calls == 1  # not retrained
    assert meta2 == meta
    assert torch.equal(loaded.weight, torch.full((2, 3), 0.5)) and torch.equal(loaded.bias, torch.full((2,), -1.0))
    assert not loaded.training
    assert _no_temp_files(tmp_path)
    # another configuration is another entry
    _cache(recipe, tmp_path, {**CONFIG, "lr": 0.2})
    assert recipe.calls == 2 and len(list(tmp_path.glob("toy-*.pt"))) == 2


def test_cached_uses_kdedu_cache_by_default(tmp_path):
    recipe = Recipe()
    zoo.cached("toy", CONFIG, recipe.build, recipe.train, verbose=False)
    assert zoo.cache_dir() == tmp_path / "cache"
    _entry(tmp_path / "cache")
    zoo.cached("toy", CONFIG, recipe.build, recipe.train, verbose=False)
    assert recipe.calls == 1


def test_cached_verbose_messages(tmp_path, capsys):
    recipe = Recipe()
    zoo.cached("toy", CONFIG, recipe.build, recipe.train, root=tmp_path)
    assert "trained toy" in capsys.readouterr().out
    zoo.cached("toy", CONFIG, recipe.build, recipe.train, root=tmp_path)
    assert "loaded toy" in capsys.readouterr().out


def test_corrupt_weights_are_retrained(tmp_path):
    recipe = Recipe()
    _cache(recipe, tmp_path)
    pt, _ = _entry(tmp_path)
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit in the middle of the weights file
    pt.write_bytes(bytes(data))
    builds = recipe.builds
    with pytest.warns(UserWarning, match="checksum"):
        model, meta = _cache(recipe, tmp_path)
    assert recipe.calls == 2  # retrained, never silently used
    assert recipe.builds == builds + 2  # rebuilt after the failed load, so no partial weights survive
    assert torch.equal(model.weight, torch.full((2, 3), 1.0)) and meta["metrics"]["val_acc"] == 0.5
    _no_warnings(lambda: _cache(recipe, tmp_path))  # the rewritten entry is valid again
    assert recipe.calls == 2


def test_stale_entry_is_retrained(tmp_path):
    recipe = Recipe()
    _cache(recipe, tmp_path)
    _, meta_path = _entry(tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["config"]["num_epochs"] = 1  # the stored configuration no longer matches the request
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="stale"):
        _cache(recipe, tmp_path)
    assert recipe.calls == 2
    assert json.loads(meta_path.read_text())["config"] == CONFIG


def test_truncated_metadata_is_retrained(tmp_path):
    recipe = Recipe()
    _cache(recipe, tmp_path)
    _, meta_path = _entry(tmp_path)
    text = meta_path.read_text()
    meta_path.write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match="retraining"):
        _cache(recipe, tmp_path)
    assert recipe.calls == 2
    json.loads(meta_path.read_text())  # whole again


def test_missing_metadata_retrains_without_crashing(tmp_path):
    """An interrupted write: the weights were committed but the metadata (written last) was not."""
    recipe = Recipe()
    _cache(recipe, tmp_path)
    pt, meta_path = _entry(tmp_path)
    meta_path.unlink()
    _no_warnings(lambda: _cache(recipe, tmp_path))
    assert recipe.calls == 2
    _entry(tmp_path)
    # and the other way round: metadata without weights
    pt.unlink()
    _cache(recipe, tmp_path)
    assert recipe.calls == 3 and pt.exists()


def test_wrong_architecture_is_retrained(tmp_path):
    """Same configuration, different state-dict shapes (e.g. the code changed): warn and retrain."""
    _cache(Recipe((3, 2)), tmp_path)
    other = Recipe((4, 2))
    with pytest.warns(UserWarning, match="toy"):
        model, _ = _cache(other, tmp_path)
    assert other.calls == 1 and model.weight.shape == (2, 4)


def test_failed_training_leaves_no_entry(tmp_path):
    def broken(model):
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        zoo.cached("toy", CONFIG, Recipe().build, broken, root=tmp_path, verbose=False)
    assert not list(tmp_path.glob("toy-*"))
    recipe = Recipe()
    _cache(recipe, tmp_path)
    assert recipe.calls == 1


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    recipe = Recipe()
    _cache(recipe, tmp_path)
    pt, meta_path = _entry(tmp_path)
    before = pt.read_bytes(), meta_path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("no space left on device")

    with monkeypatch.context() as m:
        m.setattr(kdedu._io.os, "replace", failing_replace)
        with pytest.raises(OSError, match="no space"):
            kdedu._io.atomic_write(pt, b"new weights")
    assert (pt.read_bytes(), meta_path.read_bytes()) == before
    assert _no_temp_files(tmp_path)


def test_cached_config_must_be_a_dict(tmp_path):
    with pytest.raises(TypeError, match="config"):
        zoo.cached("toy", [("lr", 0.1)], Recipe().build, Recipe().train, root=tmp_path)


# ------------------------------------------------------------------------------------------
# teacher
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,overrides", [
    ("digits-mlp", {"num_epochs": 3, "hidden": [16], "lr": 1e-2}),
    ("digits-cnn", {"num_epochs": 2, "channels": [8, 16], "lr": 1e-2}),
])
def test_teacher_trains_caches_and_loads(tmp_path, name, overrides, monkeypatch):
    root = tmp_path / "zoo"
    t = zoo.teacher(name, root=root, verbose=False, **overrides)
    metrics = t.meta["metrics"]
    assert set(metrics) >= {"val_acc", "test_acc"}
    assert 0.3 < metrics["val_acc"] <= 1.0 and 0.3 < metrics["test_acc"] <= 1.0  # well above chance (0.1)
    assert t.meta["config"] == {**zoo.RECIPES[name], **overrides, "seed": 0, "data": "digits"}
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert t(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    # the second call loads: training is not run again
    from kdedu import train as train_module

    def no_fit(*args, **kwargs):
        raise AssertionError("the cached teacher was retrained")

    monkeypatch.setattr(train_module, "fit", no_fit)
    again = zoo.teacher(name, root=root, verbose=False, **overrides)
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), again.state_dict().values(), strict=True))
    assert again.meta["metrics"] == metrics


def test_teacher_seed_is_part_of_the_key(tmp_path):
    a = zoo.teacher("digits-mlp", seed=0, root=tmp_path, verbose=False, num_epochs=1, hidden=[8])
    b = zoo.teacher("digits-mlp", seed=1, root=tmp_path, verbose=False, num_epochs=1, hidden=[8])
    assert len(list(tmp_path.glob("digits-mlp-*.pt"))) == 2
    assert not torch.equal(a.net[1].weight, b.net[1].weight)


def test_teacher_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="name.*digits-resnet"):
        zoo.teacher("digits-resnet", root=tmp_path)
    with pytest.raises(ValueError, match=r"unknown recipe entries.*\['epochs'\]"):
        zoo.teacher("digits-cnn", root=tmp_path, epochs=3)  # the recipe calls it num_epochs
    assert not list(tmp_path.iterdir())  # nothing was trained or written
