"""One adapter between kdedu and any model: what a batch holds, how a model is called, what it returned.

kdedu's methods work with three kinds of model and two kinds of batch (DESIGN.md, principle 4):

* a model may return a plain tensor of logits (``MLP``, ``SmallCNN``, a ``SequenceClassifier`` asked for
  nothing more), an object with ``logits``/``hidden_states``/``attentions`` attributes (kdedu's
  ``ClassifierOutput``), or a Hugging Face ``ModelOutput`` (``BertForSequenceClassification``,
  ``GPT2LMHeadModel``; a bare ``BertModel`` has hidden states but no logits);
* a batch is an ``(x, y)`` tuple or a Hugging Face-style dict (``input_ids``, ``attention_mask``,
  ``labels``; ``-100`` marks a label to ignore).

:func:`split_batch` separates a batch into the model's inputs and the labels, :func:`run` calls a model on
those inputs (asking for hidden states or attention maps only when needed) and :func:`model_outputs` turns
whatever came back into one :class:`Outputs`. :func:`num_layers` and :func:`hidden_size` read a
transformer's shape from its configuration, wherever the model keeps it. This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Outputs", "model_outputs", "run", "split_batch", "to_device", "batch_size", "model_config",
           "num_layers", "hidden_size", "input_ids_of", "attention_mask_of", "pad_token_id"]


@dataclass
class Outputs:
    """A model's outputs, whatever the model.

    ``logits``: ``[..., C]`` (None for a model without a head, such as ``BertModel``).
    ``hidden_states``: tuple of ``(B, L, H)``; index 0 is the embedding output, index k the output of block k.
    ``attentions``: tuple of ``(B, heads, L, L)`` softmax attention maps, one per block.
    """

    logits: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def require_logits(self, who: str = "the model") -> torch.Tensor:
        if self.logits is None:
            raise ValueError(f"{who} returned no logits (a transformers BertModel has no head: use "
                             f"BertForSequenceClassification or kdedu.models.SequenceClassifier)")
        return self.logits


def model_outputs(out) -> Outputs:
    """Normalise a model's return value: a tensor (the logits), a ``ModelOutput``, or any object or dict
    with ``logits``/``hidden_states``/``attentions`` (a ``BertModel``'s ``last_hidden_state`` alone gives
    ``hidden_states=(last_hidden_state,)`` only when no ``hidden_states`` were returned)."""
    if isinstance(out, torch.Tensor):
        return Outputs(out)
    get = out.get if isinstance(out, Mapping) else (lambda k, d=None: getattr(out, k, d))
    logits, hidden, attn = get("logits", None), get("hidden_states", None), get("attentions", None)
    if logits is None and hidden is None and get("last_hidden_state", None) is None:
        raise TypeError(f"cannot read the outputs of a model that returned {type(out).__name__}: expected a "
                        f"tensor of logits or an object with .logits / .hidden_states (a Hugging Face ModelOutput)")
    if hidden is None and get("last_hidden_state", None) is not None:
        hidden = (get("last_hidden_state"),)
    return Outputs(logits, tuple(hidden) if hidden is not None else None, tuple(attn) if attn is not None else None)


def input_ids_of(inputs) -> torch.Tensor | None:
    """The token ids of a model's inputs (the tensor itself, or ``inputs["input_ids"]``), else None."""
    if isinstance(inputs, Mapping):
        return inputs.get("input_ids")
    return inputs if isinstance(inputs, torch.Tensor) and not inputs.is_floating_point() else None


def attention_mask_of(inputs, model: nn.Module | None = None) -> torch.Tensor | None:
    """The ``(B, L)`` attention mask of text inputs: ``inputs["attention_mask"]`` if given, else built from
    the model's padding id (``pad_token_id`` of the model or its config), else None."""
    if isinstance(inputs, Mapping) and inputs.get("attention_mask") is not None:
        return inputs["attention_mask"]
    ids = input_ids_of(inputs)
    if ids is None or model is None:
        return None
    pad = pad_token_id(model)
    return None if pad is None else (ids != pad).long()


def pad_token_id(model: nn.Module) -> int | None:
    """The padding id of a text model: ``model.pad_token_id`` or its configuration's (None if neither)."""
    pad = getattr(model, "pad_token_id", None)
    return pad if pad is not None else getattr(model_config(model), "pad_token_id", None)


def run(model: nn.Module, inputs, hidden_states: bool = False, attentions: bool = False) -> Outputs:
    """Call ``model`` on ``inputs`` (a tensor, or a dict of keyword arguments) and return its :class:`Outputs`.

    Hidden states and attention maps are asked for (``output_hidden_states=True`` ...) only when wanted, so
    plain modules that take one tensor work unchanged. A Hugging Face model given a bare ``input_ids`` tensor
    gets the attention mask its padding id implies (Hugging Face would otherwise attend to padding).
    """
    flags = {}
    if hidden_states:
        flags["output_hidden_states"] = True
    if attentions:
        flags["output_attentions"] = True
    if isinstance(inputs, Mapping):
        out = model(**inputs, **flags)
    elif _is_hf(model) and input_ids_of(inputs) is not None:
        mask = attention_mask_of(inputs, model)
        out = model(input_ids=inputs, **({"attention_mask": mask} if mask is not None else {}), **flags)
    else:
        out = model(inputs, **flags)
    result = model_outputs(out)
    if hidden_states and result.hidden_states is None:
        raise ValueError(f"{type(model).__name__} returned no hidden states although output_hidden_states=True "
                         f"was passed")
    if attentions and not result.attentions:
        raise ValueError(f"{type(model).__name__} returned no attention maps: load it with "
                         f"attn_implementation='eager' (SDPA and flash attention do not return them)")
    return result


def _is_hf(model) -> bool:
    return hasattr(model, "config") and hasattr(model, "get_input_embeddings")


def split_batch(batch) -> tuple[object, torch.Tensor | None]:
    """``(inputs, labels)`` of a batch: ``(x, y)`` for a tuple or list of two, and for a dict the dict without
    its ``"labels"`` entry and that entry (None if absent)."""
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
    raise TypeError(f"a batch must be an (x, y) pair or a dict with 'input_ids' (and 'labels'), got "
                    f"{type(batch).__name__}{length}")


def to_device(obj, device):
    """Move a tensor, a dict or tuple of tensors, or anything with ``.to`` (a ``TeacherBatch``) to ``device``."""
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj.to(device) if hasattr(obj, "to") else obj


def batch_size(inputs, labels=None) -> int:
    """The number of examples in a batch (the first dimension of its labels or of its first tensor)."""
    if isinstance(labels, torch.Tensor) and labels.dim() > 0:
        return labels.shape[0]
    if isinstance(inputs, Mapping):
        inputs = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return len(inputs)


def model_config(model: nn.Module):
    """A transformer's configuration: ``model.config`` (Hugging Face), or ``model.encoder.config`` (kdedu's
    ``SequenceClassifier``); None when there is none."""
    for owner in (model, getattr(model, "encoder", None)):
        config = getattr(owner, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            return config
    return None


def _config_or_error(model: nn.Module, role: str):
    config = model_config(model)
    if config is None:
        raise TypeError(f"{role} must be a transformer with a configuration (a Hugging Face model such as "
                        f"BertForSequenceClassification, or a kdedu.models.SequenceClassifier), got "
                        f"{type(model).__name__}")
    return config


def num_layers(model: nn.Module, role: str = "model") -> int:
    """The number of transformer blocks N of ``model`` (its hidden states are indices 0..N)."""
    return int(_config_or_error(model, role).num_hidden_layers)


def hidden_size(model: nn.Module, role: str = "model") -> int:
    """The width H of ``model``'s hidden states."""
    return int(_config_or_error(model, role).hidden_size)
