"""The cache behind every ``kdedu.zoo`` recipe: files keyed by configuration, checked on load."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kdedu._io import atomic_write, cache_dir

__all__ = ["cache_dir", "cached"]

FORMAT = 1  # bump when the file layout changes: every old entry becomes stale


def _key(name: str, config: dict) -> str:
    blob = json.dumps({"name": name, "config": config, "format": FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _try_load(model: nn.Module, pt: Path, meta_path: Path, config: dict) -> dict | None:
    """The stored metadata if the entry is complete, intact and current; else None (with a warning)."""
    if not meta_path.exists() or not pt.exists():
        return None  # never written, or interrupted before the metadata was committed
    try:
        meta = json.loads(meta_path.read_text())
        data = pt.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise ValueError("checksum mismatch (the weights file is corrupt or was modified)")
        if json.loads(json.dumps(config, default=str)) != meta.get("config"):
            raise ValueError("the stored configuration differs from the requested one (stale entry)")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
        return meta
    except Exception as err:  # corrupt JSON, bad checksum, stale config, wrong keys or shapes
        warnings.warn(f"kdedu.zoo: ignoring cache entry {pt.name}: {err}; retraining", stacklevel=3)
        return None


def cached(name: str, config: dict, build: Callable[[], nn.Module],
           train: Callable[[nn.Module], dict], root: str | os.PathLike | None = None,
           verbose: bool = True) -> tuple[nn.Module, dict]:
    """Return ``(model, meta)``: loaded from the cache if a valid entry exists, else built and trained.

    Args:
        name: a readable prefix for the files (``"digits-cnn"``).
        config: everything that determines the trained weights (architecture, epochs, seed, ...);
            JSON-serialisable. Its hash is the cache key.
        build: returns a fresh, untrained model.
        train: trains the model in place and returns a dict of metrics (stored in ``meta``).
        root: the cache folder (default :func:`cache_dir`).
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    root = Path(root) if root is not None else cache_dir()
    stem = f"{name}-{_key(name, config)}"
    pt, meta_path = root / f"{stem}.pt", root / f"{stem}.json"
    model = build()
    attempted = meta_path.exists() and pt.exists()
    meta = _try_load(model, pt, meta_path, config)
    if meta is not None:
        if verbose:
            print(f"kdedu.zoo: loaded {name} from {pt}")
        return model.eval(), meta
    if attempted:
        model = build()  # a failed load may have left partial weights behind
    t0 = time.perf_counter()
    metrics = train(model)
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    data = buf.getvalue()
    meta = {"name": name, "config": json.loads(json.dumps(config, default=str)), "metrics": metrics or {},
            "train_time_s": time.perf_counter() - t0, "sha256": hashlib.sha256(data).hexdigest(),
            "torch": torch.__version__}
    atomic_write(pt, data)
    atomic_write(meta_path, json.dumps(meta, indent=2).encode())  # written last: the commit marker
    if verbose:
        print(f"kdedu.zoo: trained {name} in {meta['train_time_s']:.1f} s, cached at {pt}")
    return model.eval(), meta


def _recipe_config(recipes: dict, name: str, overrides: dict, seed: int, data: str) -> dict:
    """A recipe with its overrides applied: the configuration that keys the cache."""
    if name not in recipes:
        raise ValueError(f"name must be one of {sorted(recipes)}, got {name!r}")
    unknown = set(overrides) - set(recipes[name])
    if unknown:
        raise ValueError(f"unknown recipe entries for {name!r}: {sorted(unknown)}; known: {sorted(recipes[name])}")
    return {**recipes[name], **overrides, "seed": seed, "data": data}

