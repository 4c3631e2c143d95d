"""kdedu: knowledge distillation, taught in code. The companion package of the kdedu book.

Submodules are imported when first used (PEP 562), so ``import kdedu.losses`` needs only torch and numpy:
``kdedu.viz`` loads matplotlib, ``kdedu.experiment`` scipy, ``kdedu.data`` its loaders, each on first access.
``kdedu.fit`` and the other names of :mod:`kdedu.train` are re-exported the same way.
"""

import importlib as _importlib

__version__ = "0.1.0"

_SUBMODULES = ("losses", "kernels", "models", "data", "methods", "train", "zoo", "profile", "check", "viz",
               "widgets", "experiment", "outputs", "stats", "hf", "metrics")
_FROM_TRAIN = ("Distiller", "History", "fit", "evaluate", "predict", "seed_everything")

__all__ = ["losses", "models", "data", "methods", "zoo", "profile", "check", "viz", "widgets", "experiment",
           "Distiller", "History", "fit", "evaluate", "predict", "seed_everything", "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # which also sets it as an attribute
    if name in _FROM_TRAIN:
        value = getattr(_importlib.import_module(f"{__name__}.train"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES) | set(_FROM_TRAIN))
