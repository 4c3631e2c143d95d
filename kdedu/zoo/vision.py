"""Part I's teachers: a CNN and a wide MLP on the 8x8 digits."""

from __future__ import annotations

import os

import torch
from torch import nn

from kdedu.zoo._cache import _recipe_config, cached

__all__ = ["RECIPES", "teacher"]

# ------------------------------------------------------------------------------------------
# the book's standard teachers
# ------------------------------------------------------------------------------------------
RECIPES: dict[str, dict] = {
    # the default teacher of Part I: a small CNN on 8x8 digits
    "digits-cnn": {"arch": "cnn", "channels": [32, 64], "num_epochs": 30, "lr": 3e-3, "batch_size": 64},
    # a wide MLP teacher (same family as the students)
    "digits-mlp": {"arch": "mlp", "hidden": [512, 512], "dropout": 0.2, "num_epochs": 40, "lr": 1e-3,
                   "batch_size": 64},
}


def _build(config: dict) -> nn.Module:
    from kdedu.models import MLP, SmallCNN

    if config["arch"] == "cnn":
        return SmallCNN(in_channels=1, channels=tuple(config["channels"]), num_classes=10)
    if config["arch"] == "mlp":
        return MLP(64, tuple(config["hidden"]), 10, dropout=config.get("dropout", 0.0))
    raise ValueError(f"unknown arch {config['arch']!r}")



def teacher(name: str = "digits-cnn", seed: int = 0, root: str | os.PathLike | None = None,
            verbose: bool = True, **overrides) -> nn.Module:
    """A trained, frozen teacher from :data:`RECIPES`, trained on the digits' train split once per
    ``(recipe, seed, overrides)`` and cached. Its validation and test accuracy are in ``model.meta``.

    ``overrides`` change recipe entries, e.g. ``teacher("digits-mlp", hidden=[64])``.
    """
    config = _recipe_config(RECIPES, name, overrides, seed, "digits")

    def train(model: nn.Module) -> dict:
        from kdedu.data import digits_loaders
        from kdedu.methods import Supervised
        from kdedu.train import evaluate, fit

        loaders = digits_loaders(batch_size=config["batch_size"])
        fit(Supervised(model), loaders["train"], None, num_epochs=config["num_epochs"], lr=config["lr"],
            seed=seed, device="cpu", progress=None if verbose else False, desc=f"training teacher {name}")
        return {"val_acc": evaluate(model, loaders["val"])["acc"], "test_acc": evaluate(model, loaders["test"])["acc"]}

    def build() -> nn.Module:
        torch.manual_seed(seed)  # the initial weights are part of the recipe, too
        return _build(config)

    model, meta = cached(name, config, build, train, root=root, verbose=verbose)
    model.requires_grad_(False)
    model.meta = meta
    return model


