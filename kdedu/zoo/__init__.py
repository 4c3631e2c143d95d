"""Train once, load in seconds: a cache of trained teachers keyed by their configuration.

Each entry is two files under ``$KDEDU_CACHE`` (default ``~/.cache/kdedu``):

* ``<name>-<key>.pt``: the model's ``state_dict``, written atomically (temp file + ``os.replace``);
* ``<name>-<key>.json``: the configuration, metrics and the SHA-256 of the ``.pt`` file, written
  last, so a half-written entry never looks complete.

``key`` hashes the configuration, so a changed recipe gets a new entry. On load the checksum, the
stored configuration and the state dict's keys and shapes are all checked; a corrupt or stale
entry is reported with a warning and retrained, never silently used.

The recipes live by part: :mod:`kdedu.zoo.vision` (digits), :mod:`kdedu.zoo.text` (sentiment teachers, the
masked LM), :mod:`kdedu.zoo.sequences` (translation teachers) and :mod:`kdedu.zoo.lm` (GPT teachers);
:mod:`kdedu.zoo._cache` is the cache.
"""

from kdedu.zoo._cache import cache_dir, cached
from kdedu.zoo.lm import LM_RECIPES, gpt_teacher
from kdedu.zoo.sequences import SEQ_RECIPES, seq2seq_teacher
from kdedu.zoo.text import (
    CONSTRUCTION_RECIPES,
    MLM_RECIPES,
    TEXT_RECIPES,
    construction_teacher,
    masked_lm,
    text_teacher,
)
from kdedu.zoo.vision import RECIPES, teacher

__all__ = ["cache_dir", "cached", "teacher", "RECIPES", "text_teacher", "TEXT_RECIPES", "masked_lm", "MLM_RECIPES",
           "seq2seq_teacher", "SEQ_RECIPES", "gpt_teacher", "LM_RECIPES", "construction_teacher",
           "CONSTRUCTION_RECIPES"]
