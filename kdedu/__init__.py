"""kdedu: knowledge distillation, taught in code. The companion package of the kdedu book."""

from kdedu import check, data, experiment, losses, methods, models, profile, viz, widgets, zoo
from kdedu.train import Distiller, History, evaluate, fit, predict, seed_everything

__version__ = "0.1.0"

__all__ = ["losses", "models", "data", "methods", "zoo", "profile", "check", "viz", "widgets", "experiment",
           "Distiller", "History", "fit", "evaluate", "predict", "seed_everything", "__version__"]
