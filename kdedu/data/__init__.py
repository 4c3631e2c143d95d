"""Data sets: embedded ones that work offline, and online loaders used when a network is there."""

from kdedu.data.cifar import as_tensors, cifar
from kdedu.data.digits import Split, digits, digits_loaders, make_loader, translate

__all__ = ["Split", "digits", "digits_loaders", "make_loader", "translate", "cifar", "as_tensors"]
