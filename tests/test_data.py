"""kdedu.data: the fixed digits split, translations, loaders, and the CIFAR loader on a local fixture."""

from __future__ import annotations

import hashlib
import importlib
import pickle
import socket
import urllib.error

import numpy as np
import pytest
import torch

from kdedu.data import digits, digits_loaders, make_loader, translate

# kdedu.data re-exports the functions `cifar` and `digits` under their modules' names: reach the modules
cifar_module = importlib.import_module("kdedu.data.cifar")
digits_module = importlib.import_module("kdedu.data.digits")

N_DIGITS = 1797


# ------------------------------------------------------------------------------------------
# the digits split
# ------------------------------------------------------------------------------------------
def _rows(split) -> np.ndarray:
    return split.x.reshape(len(split), 64).numpy()


def test_split_shapes_and_types():
    for name in ("train", "val", "test"):
        s = digits(name)
        assert s.x.shape == (len(s), 1, 8, 8) and s.y.shape == (len(s),)
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert 0.0 <= s.x.min() and s.x.max() <= 1.0
        assert len(s.dataset()) == len(s)


def test_splits_partition_the_data_set():
    from sklearn.datasets import load_digits

    splits = {name: digits(name) for name in ("train", "val", "test")}
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == N_DIGITS
    assert abs(sizes["train"] - 0.6 * N_DIGITS) <= 1
    assert abs(sizes["val"] - 0.2 * N_DIGITS) <= 1 and abs(sizes["test"] - 0.2 * N_DIGITS) <= 1
    # pairwise disjoint, compared by image content (the 1797 images are all distinct)
    row_sets = {k: {r.tobytes() for r in _rows(v)} for k, v in splits.items()}
    assert all(len(row_sets[k]) == sizes[k] for k in sizes)
    assert not row_sets["train"] & row_sets["val"]
    assert not row_sets["train"] & row_sets["test"]
    assert not row_sets["val"] & row_sets["test"]
    # together they are exactly scikit-learn's digits (pixels / 16) with the right labels
    bunch = load_digits()
    ref = {(r / 16.0).astype(np.float32).tobytes(): int(t) for r, t in zip(bunch.data, bunch.target, strict=True)}
    for s in splits.values():
        for r, t in zip(_rows(s), s.y.tolist(), strict=True):
            assert ref[r.tobytes()] == t


def test_splits_are_stratified():
    totals = np.bincount(torch.cat([digits(n).y for n in ("train", "val", "test")]).numpy(), minlength=10)
    for name, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        counts = np.bincount(digits(name).y.numpy(), minlength=10)
        assert np.all(counts > 0), f"a class is missing from {name}"
        np.testing.assert_allclose(counts / totals, frac, atol=0.02)


def test_splits_are_deterministic_and_not_aliased():
    a = digits("val")
    a.x.zero_()  # mutating a returned split must not corrupt the cache
    b = digits("val")
    assert b.x.sum() > 0
    digits_module._all_splits.cache_clear()  # recompute from scratch: same split
    c = digits("val")
    assert torch.equal(b.x, c.x) and torch.equal(b.y, c.y)


def test_limit():
    full = digits("train")
    small = digits("train", limit=100)
    assert len(small) == 100
    assert torch.equal(small.x, full.x[:100]) and torch.equal(small.y, full.y[:100])
    assert len(digits("test", limit=10**6)) == len(digits("test"))


@pytest.mark.parametrize("kwargs,name", [
    ({"split": "training"}, "split"), ({"split": "TRAIN"}, "split"),
    ({"shift": -1}, "shift"), ({"shift": 8}, "shift"), ({"shift": 1.5}, "shift"),
    ({"limit": 0}, "limit"), ({"limit": -5}, "limit"), ({"limit": 2.5}, "limit"), ({"limit": "10"}, "limit"),
])
def test_digits_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        digits(**kwargs)


# ------------------------------------------------------------------------------------------
# translate
# ------------------------------------------------------------------------------------------
def ref_translate_loop(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Pixel by pixel: out[r, c] = img[r - dy, c - dx] when inside, else 0."""
    c_, h, w = img.shape
    out = np.zeros_like(img)
    for r in range(h):
        for c in range(w):
            sr, sc = r - dy, c - dx
            if 0 <= sr < h and 0 <= sc < w:
                out[:, r, c] = img[:, sr, sc]
    return out


def ref_translate_slices(img: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The same with slices (fast enough for a brute-force search)."""
    _, h, w = img.shape
    out = np.zeros_like(img)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_translate_matches_reference_random_offsets():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 2, 6, 7, generator=g)
    dx = torch.randint(-8, 9, (12,), generator=g)
    dy = torch.randint(-7, 8, (12,), generator=g)
    out = translate(x, dx, dy)
    assert out.shape == x.shape and out.dtype == x.dtype
    for i in range(12):
        ref = ref_translate_loop(x[i].numpy(), int(dx[i]), int(dy[i]))
        np.testing.assert_array_equal(out[i].numpy(), ref)
        np.testing.assert_array_equal(ref, ref_translate_slices(x[i].numpy(), int(dx[i]), int(dy[i])))


@pytest.mark.parametrize("dx,dy", [(0, 0), (1, 0), (0, -2), (3, 3), (-7, 1), (9, 0)])
def test_translate_scalar_offsets(dx, dy):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = translate(x, dx, dy)
    for i in range(3):
        np.testing.assert_array_equal(out[i].numpy(), ref_translate_loop(x[i].numpy(), dx, dy))
    # torch.roll with the wrapped-around border zeroed is the same thing
    rolled = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        rolled[:, :, :dy] = 0
    elif dy < 0:
        rolled[:, :, dy:] = 0
    if dx > 0:
        rolled[:, :, :, :dx] = 0
    elif dx < 0:
        rolled[:, :, :, dx:] = 0
    if abs(dx) < 8:
        assert torch.equal(out, rolled)


def test_translate_bad_images():
    with pytest.raises(ValueError, match="images"):
        translate(torch.rand(8, 8), 1, 0)
    with pytest.raises(ValueError, match="images"):
        translate(torch.rand(2, 8, 8), 1, 0)


def test_translate_bad_offsets_name_the_argument():
    x = torch.rand(5, 1, 8, 8)
    with pytest.raises(ValueError, match="dx"):
        translate(x, torch.tensor([1, 2, 3]), 0)  # 3 offsets for 5 images
    with pytest.raises(ValueError, match="dy"):
        translate(x, 0, torch.tensor([1, 2]))
    with pytest.raises((TypeError, ValueError), match="dx"):
        translate(x, 0.5, 0)  # whole pixels only


@pytest.mark.parametrize("k", [1, 2, 3])
def test_digits_shift_moves_every_image_by_k(k):
    base, moved = digits("test", limit=150), digits("test", shift=k, seed=3, limit=150)
    assert torch.equal(base.y, moved.y)
    offsets = []
    for a, b in zip(base.x.numpy(), moved.x.numpy(), strict=True):
        hits = [(dx, dy) for dx in range(-k, k + 1) for dy in range(-k, k + 1)
                if np.array_equal(ref_translate_slices(a, dx, dy), b)]
        assert hits, "the shifted image is not a whole-pixel translation of the original"
        assert any(max(abs(dx), abs(dy)) == k for dx, dy in hits), f"moved by {hits}, expected max-norm {k}"
        if len(hits) == 1:
            offsets.append(hits[0])
    # the offsets are random: both axes, both signs
    assert len(set(offsets)) > 4
    assert {np.sign(dx) for dx, _ in offsets} >= {-1, 1} and {np.sign(dy) for _, dy in offsets} >= {-1, 1}


def test_digits_shift_is_seeded():
    a, b = digits("val", shift=2, seed=0), digits("val", shift=2, seed=0)
    c = digits("val", shift=2, seed=1)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    assert not torch.equal(a.x, digits("val").x)


# ------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------
def test_make_loader():
    s = digits("val")
    loader = make_loader(s, batch_size=100)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [100, 100, 100, len(s) - 300]
    assert torch.equal(torch.cat([x for x, _ in batches]), s.x)  # no shuffle: the split's order
    torch.manual_seed(0)
    shuffled = torch.cat([y for _, y in make_loader(s, 100, shuffle=True)])
    assert not torch.equal(shuffled, s.y) and torch.equal(shuffled.sort().values, s.y.sort().values)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(s, batch_size=0)


def test_digits_loaders():
    loaders = digits_loaders(batch_size=32, limit=50)
    assert set(loaders) == {"train", "val", "test"}
    assert len(loaders["train"].dataset) == 50
    assert len(loaders["val"].dataset) == len(digits("val"))
    assert len(loaders["test"].dataset) == len(digits("test"))
    x, y = next(iter(loaders["train"]))
    assert x.shape == (32, 1, 8, 8) and y.shape == (32,)


# ------------------------------------------------------------------------------------------
# CIFAR on a tiny local fixture in torchvision's format (never touches the network)
# ------------------------------------------------------------------------------------------
CIFAR_LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "meta_key": "label_names", "labels": "labels",
                "classes": 10},
    "cifar100": {"folder": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "meta_key": "fine_label_names", "labels": "fine_labels", "classes": 100},
}


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_cifar_fixture(root, name, monkeypatch, per_file=3):
    """Write fake pickles in torchvision's layout and point the dataset class at their checksums."""
    import torchvision

    layout = CIFAR_LAYOUT[name]
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    folder = root / layout["folder"]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    content = {}
    for fname in layout["train"] + layout["test"]:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, layout["classes"], per_file).tolist()
        (folder / fname).write_bytes(pickle.dumps({"data": data, layout["labels"]: labels, "batch_label": fname}))
        content[fname] = (data, labels)
    names = [f"c{i}" for i in range(layout["classes"])]
    (folder / layout["meta"]).write_bytes(pickle.dumps({layout["meta_key"]: names}))
    monkeypatch.setattr(cls, "train_list", [[f, _md5(folder / f)] for f in layout["train"]])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(folder / f)] for f in layout["test"]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(folder / layout["meta"])})
    return cls, content


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_local_fixture(tmp_path, monkeypatch, name):
    _, content = make_cifar_fixture(tmp_path, name, monkeypatch)
    layout = CIFAR_LAYOUT[name]
    train = cifar_module.cifar(name, train=True, root=tmp_path, download=False, augment=False)
    test = cifar_module.cifar(name, train=False, root=tmp_path, download=False)
    assert len(train) == 3 * len(layout["train"]) and len(test) == 3
    mean = torch.tensor(cifar_module._MEAN[name]).view(3, 1, 1)
    std = torch.tensor(cifar_module._STD[name]).view(3, 1, 1)
    raw_data, raw_labels = content[layout["train"][0]]
    for i in range(3):
        img, label = train[i]
        assert img.shape == (3, 32, 32) and img.dtype == torch.float32
        assert isinstance(label, int) and label == raw_labels[i]
        expected = (torch.tensor(raw_data[i], dtype=torch.float32).view(3, 32, 32) / 255.0 - mean) / std
        torch.testing.assert_close(img, expected, rtol=1e-5, atol=1e-5)
    img, label = test[2]
    assert img.shape == (3, 32, 32) and label == content[layout["test"][0]][1][2]
    # the default for the training split augments (random crop + flip) but keeps the shape
    aug = cifar_module.cifar(name, train=True, root=tmp_path, download=False)
    assert aug[0][0].shape == (3, 32, 32)
    x, y = cifar_module.as_tensors(train, limit=2)
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.int64 and y.tolist() == raw_labels[:2]
    assert len(cifar_module.as_tensors(train)[1]) == len(train)


def test_cifar_missing_without_download_raises_file_not_found(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        cifar_module.cifar("cifar10", root=missing, download=False)
    assert str(missing) in str(info.value) and "KDEDU_DATA" in str(info.value)


def test_cifar_corrupted_file_is_reported(tmp_path, monkeypatch):
    make_cifar_fixture(tmp_path, "cifar10", monkeypatch)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(FileNotFoundError, match="corrupted"):
        cifar_module.cifar("cifar10", train=False, root=tmp_path, download=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_download_without_network_fails_fast_with_advice(tmp_path, monkeypatch, name):
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    seen = {}

    def offline_download(self):
        seen["timeout"] = socket.getdefaulttimeout()
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cls, "download", offline_download)
    before = socket.getdefaulttimeout()
    with pytest.raises(RuntimeError, match="could not download") as info:
        cifar_module.cifar(name, root=tmp_path / "data", download=True, timeout_s=3.0)
    msg = str(info.value)
    assert "URLError" in msg and "KDEDU_PROFILE=fast" in msg and str(tmp_path / "data") in msg
    assert seen["timeout"] == 3.0  # the download ran under the short timeout ...
    assert socket.getdefaulttimeout() == before  # ... which is restored afterwards


def test_cifar_bad_name_and_default_root(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="name"):
        cifar_module.cifar("cifar1000", root=tmp_path, download=False)
    monkeypatch.setenv("KDEDU_DATA", str(tmp_path / "d"))
    assert cifar_module.default_root() == tmp_path / "d"
