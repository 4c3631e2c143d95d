"""Plots the book uses more than once. Every function returns the matplotlib ``Axes`` it drew on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["plot_history", "plot_probs", "plot_results", "plot_similarity", "results_table"]


def _ax(ax):
    return ax if ax is not None else plt.subplots(figsize=(6, 3.5))[1]


def plot_history(histories: Mapping[str, object], key: str = "val_acc", ax=None):
    """One line per run: ``key`` (e.g. ``"val_acc"`` or ``"loss"``) against the epoch."""
    ax = _ax(ax)
    for name, h in histories.items():
        ax.plot(h["epoch"], h[key], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.legend()
    return ax


def plot_probs(probs, class_names: Sequence[str] | None = None, title: str | None = None, ax=None,
               log: bool = False):
    """A bar chart of one probability vector (e.g. a teacher's soft targets for one image)."""
    ax = _ax(ax)
    p = torch.as_tensor(probs).detach().float().cpu().numpy()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(p))]
    ax.bar(names, p, color="C0")
    ax.set_ylabel("probability")
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1)
    if title:
        ax.set_title(title)
    return ax


def plot_similarity(matrix, class_names: Sequence[str] | None = None, title: str | None = None, ax=None,
                    cmap: str = "viridis", annotate: bool = False, fmt: str = ".2f"):
    """A heat map of a square class-by-class matrix; ``annotate=True`` writes the values in the cells."""
    ax = _ax(ax)
    m = torch.as_tensor(matrix).detach().float().cpu().numpy()
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(m))]
    im = ax.imshow(m, cmap=cmap)
    if annotate:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    return ax


def results_table(results: Mapping[str, Sequence[float]], scale: float = 100.0, digits: int = 2) -> str:
    """A Markdown table of ``name -> per-seed values``: mean ± std (sample std), n, min, max."""
    rows = ["| method | mean ± std | n | min | max |", "|---|---|---|---|---|"]
    for name, vals in results.items():
        v = np.asarray(vals, dtype=float) * scale
        std = v.std(ddof=1) if len(v) > 1 else 0.0
        rows.append(f"| {name} | {v.mean():.{digits}f} ± {std:.{digits}f} | {len(v)} | "
                    f"{v.min():.{digits}f} | {v.max():.{digits}f} |")
    return "\n".join(rows)


def plot_results(results: Mapping[str, Sequence[float]], ylabel: str = "test accuracy (%)", scale: float = 100.0,
                 ax=None, title: str | None = None):
    """Mean ± std bars with every seed's value as a dot: the book's standard results figure."""
    ax = _ax(ax)
    names = list(results)
    for i, name in enumerate(names):
        v = np.asarray(results[name], dtype=float) * scale
        std = v.std(ddof=1) if len(v) > 1 else 0.0
        ax.bar(i, v.mean(), yerr=std, capsize=4, color=f"C{i}", alpha=0.6)
        ax.scatter(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, color="k", s=10, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    lo = min(np.min(np.asarray(results[n], dtype=float)) for n in names) * scale
    hi = max(np.max(np.asarray(results[n], dtype=float)) for n in names) * scale
    pad = max((hi - lo) * 0.5, 0.5)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax
