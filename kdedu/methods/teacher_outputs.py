"""Run a transformer teacher once per transfer set; every layer-distillation method reads the stored outputs.

A frozen teacher gives the same logits, hidden states and attention maps for an input at every epoch,
so the transformer methods of Part III (DistilBERT, PKD, TinyBERT, CKD, ALP-KD) never re-run it:
:func:`precompute_teacher` stores what the method needs, once, and returns a loader whose batches are

    ``(TeacherBatch, y)``

``TeacherBatch`` holds the inputs and the teacher's outputs for the batch (see its docstring) and has
``.to(device)``, so :func:`kdedu.train.fit` moves it like a tensor. Each method says what it needs in
``method.teacher_needs``; ``precompute_teacher(teacher, loader, **method.teacher_needs)`` stores exactly
that: only the requested layers, and only their [CLS] vectors when the loss looks at [CLS] alone
(PKD, CKD, ALP-KD): 7 layers x 384 floats per sentence for MiniLM instead of 7 x L x 384.

Layer indices follow ``outputs.hidden_states`` of ``transformers``: 0 is the embedding output, k the
output of block k (negative indices count from the end: -1 is the last layer). Attention maps are
indexed by block: ``attention_layers=(k,)`` stores the map *inside* block k (1-based, like hidden
state k, which that block produces).

Every method also accepts a plain ``input_ids`` tensor as ``x`` when it was given a live ``teacher``:
it then runs the teacher on the batch with :func:`teacher_outputs`, the same function that
:func:`precompute_teacher` uses, so both paths give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdedu.data.text import batch_loader, trim_padding
from kdedu.outputs import attention_mask_of, hidden_size, input_ids_of, num_layers, pad_token_id, run, split_batch
from kdedu.train import Distiller

__all__ = ["TeacherBatch", "teacher_outputs", "precompute_teacher", "TransformerDistiller", "skip_map",
           "uniform_map"]


@dataclass
class TeacherBatch:
    """A batch of inputs with the teacher's outputs on them.

    Attributes:
        input_ids, attention_mask: (B, L) integer tensors.
        logits: (B, C) teacher logits.
        hidden: (B, n, H) [CLS] vectors (``cls_only``) or (B, n, L, H) token states of the stored
            layers ``hidden_layers`` (hidden-state indices, 0 = embeddings), or ``None``.
        attentions: (B, m, heads, L, L) softmax attention maps of the blocks ``attention_layers``, or ``None``.
        num_layers: the teacher's number of blocks N (its hidden states are indices 0..N).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    attentions: torch.Tensor | None = None
    hidden_layers: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()
    cls_only: bool = True
    num_layers: int = 0

    def to(self, device) -> TeacherBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def _index(self, k: int, stored: tuple[int, ...], what: str) -> int:
        k = k + self.num_layers + 1 if k < 0 else k  # -1 = the last layer
        if k not in stored:
            raise KeyError(f"the teacher's {what} {k} was not stored (stored: {stored}); precompute with "
                           f"precompute_teacher(teacher, loader, **method.teacher_needs)")
        return stored.index(k)

    def hidden_at(self, k: int) -> torch.Tensor:
        """Hidden state ``k`` (0 = embeddings, -1 = last): (B, H) [CLS] or (B, L, H) tokens."""
        if self.hidden is None:
            raise KeyError("no teacher hidden states were stored (hidden_layers=())")
        return self.hidden[:, self._index(k, self.hidden_layers, "hidden state")]

    def cls_at(self, k: int) -> torch.Tensor:
        """The (B, H) [CLS] vector of hidden state ``k``, whether [CLS] alone or every token was stored."""
        h = self.hidden_at(k)
        return h if self.cls_only else h[:, 0]

    def attention_at(self, k: int) -> torch.Tensor:
        """The (B, heads, L, L) attention map of block ``k`` (1..N, -1 = last)."""
        if self.attentions is None:
            raise KeyError("no teacher attention maps were stored (attention_layers=())")
        return self.attentions[:, self._index(k, self.attention_layers, "attention map of block")]


def _resolve(layers, n: int, low: int, what: str) -> tuple[int, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"{what} must be a sequence of layer indices, got {layers!r}")
    out = []
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"{what} must hold integers, got {layers!r}")
        r = k + n + 1 if k < 0 else k
        if not low <= r <= n:
            raise ValueError(f"{what}: index {k} is out of range for a teacher with {n} layers ({low}..{n}, or "
                             f"negative from the end)")
        if r not in out:
            out.append(r)
    return tuple(out)


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    hidden_layers: Sequence[int] = (), cls_only: bool = True,
                    attention_layers: Sequence[int] = ()) -> TeacherBatch:
    """Run ``teacher`` (a :class:`~kdedu.models.SequenceClassifier`, in eval mode) on one batch and keep
    the logits, the hidden states ``hidden_layers`` ([CLS] only if ``cls_only``) and the attention maps
    of the blocks ``attention_layers``. Returns a :class:`TeacherBatch`."""
    # the number of blocks matters only for stored layers: a teacher of logits alone may be any classifier
    n = num_layers(teacher, "teacher") if (hidden_layers or attention_layers) else 0
    hidden_layers = _resolve(hidden_layers, n, 0, "hidden_layers")
    attention_layers = _resolve(attention_layers, n, 1, "attention_layers")
    was_training = teacher.training
    teacher.eval()
    if attention_mask is None:
        attention_mask = attention_mask_of(input_ids, teacher)
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    out = run(teacher, {"input_ids": input_ids, "attention_mask": attention_mask},
              hidden_states=bool(hidden_layers), attentions=bool(attention_layers))
    teacher.train(was_training)
    if not (hidden_layers or attention_layers):
        return TeacherBatch(input_ids, attention_mask.long(), out.require_logits("the teacher"), num_layers=n)
    hidden = None
    if hidden_layers:
        states = [out.hidden_states[k] for k in hidden_layers]                  # each (B, L, H)
        hidden = torch.stack([h[:, 0] if cls_only else h for h in states], 1)  # (B, n, H) or (B, n, L, H)
    attentions = torch.stack([out.attentions[k - 1] for k in attention_layers], 1) if attention_layers else None
    return TeacherBatch(input_ids, attention_mask.long(), out.require_logits("the teacher"), hidden, attentions,
                        hidden_layers, attention_layers, bool(cls_only), n)


class _Collate:
    """Slices the stored tensors for a list of example indices."""

    def __init__(self, store: TeacherBatch, y: torch.Tensor, dtype: torch.dtype):
        self.store, self.y, self.dtype = store, y, dtype

    def __call__(self, idx: list[int]):
        i = torch.as_tensor(idx)
        s = self.store
        part = {f.name: getattr(s, f.name)[i] for f in fields(s) if isinstance(getattr(s, f.name), torch.Tensor)}
        for name in ("logits", "hidden", "attentions"):  # stored compactly, computed with in float32
            if name in part:
                part[name] = part[name].float()
        width = trim_padding(part["attention_mask"])  # drop the columns that are padding in every row
        part["input_ids"], part["attention_mask"] = part["input_ids"][:, :width], part["attention_mask"][:, :width]
        if part.get("hidden") is not None and not s.cls_only:
            part["hidden"] = part["hidden"][:, :, :width]
        if part.get("attentions") is not None:
            part["attentions"] = part["attentions"][..., :width, :width]
        return replace(s, **part), self.y[i]


def precompute_teacher(teacher: nn.Module, loader: DataLoader, hidden_layers: Sequence[int] = (),
                       cls_only: bool = True, attention_layers: Sequence[int] = (), batch_size: int | None = None,
                       shuffle: bool = True, seed: int | None = 0, dtype: torch.dtype = torch.float32,
                       device=None, group_by_length: bool = False) -> DataLoader:
    """Run the frozen ``teacher`` once over ``loader`` and return a loader of ``(TeacherBatch, y)``.

    Args:
        teacher: a :class:`~kdedu.models.SequenceClassifier` (MiniLM from :func:`kdedu.zoo.text_teacher`).
        loader: batches of ``(input_ids (B, L), y)``, e.g. :func:`kdedu.data.text_loader`; the attention
            mask is rebuilt from the padding id. Batches may differ in width (right padding). The store
            keeps the loader's order: pass an unshuffled, ungrouped loader so that stored example i is
            dataset example i (then a ``text_loader`` and this loader draw the same batches for the same
            ``fit`` seed).
        hidden_layers, cls_only, attention_layers: what to keep (pass ``**method.teacher_needs``).
        batch_size, shuffle, seed: of the returned loader (default: the input loader's batch size;
            shuffled with a seeded generator, so runs repeat). ``seed=None`` leaves the order to torch's
            global RNG, which ``fit(..., seed=s)`` seeds: precompute once per transfer set, then train
            every method and seed on the same loader.
        dtype: storage type of logits/states/maps (``torch.float16`` halves the memory); batches come
            back in float32.
        group_by_length: batch sentences of similar length together
            (:class:`kdedu.data.text.LengthGroupedBatches`). Every batch is cut to its longest sentence
            either way (the padding columns are dropped from the ids, mask, token states and maps; a
            BERT's outputs on the real tokens do not depend on them).

    Memory: N x (C + n x H) floats with ``cls_only``, N x (C + n x L x H) without, plus
    N x m x heads x L x L for attention maps.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a torch DataLoader of (input_ids, y), got {type(loader).__name__}")
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    parts, ys = [], []
    for batch in loader:
        x, y = split_batch(batch)
        if isinstance(x, TeacherBatch):
            raise TypeError("loader already yields TeacherBatch objects: it is precomputed")
        ids = input_ids_of(x)
        if ids is None:
            raise TypeError(f"loader must yield (input_ids, y) pairs or dicts with 'input_ids', got {type(x).__name__}")
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        out = teacher_outputs(teacher, ids.to(device), None if mask is None else mask.to(device), hidden_layers,
                              cls_only, attention_layers)
        parts.append(out.to("cpu"))
        ys.append(y)
    if not parts:
        raise ValueError("loader is empty")
    width = max(p.input_ids.shape[1] for p in parts)  # batches may differ in width: right-pad them to one
    pad_id = pad_token_id(teacher) or 0
    token_dims = {"input_ids": (1,), "attention_mask": (1,), "hidden": () if cls_only else (2,),
                  "attentions": (3, 4), "logits": ()}

    def cat(name):
        values = [getattr(p, name) for p in parts]
        if values[0] is None:
            return None
        padded = []
        for t in values:
            for d in token_dims[name]:
                extra = width - t.shape[d]
                if extra:
                    shape = list(t.shape)
                    shape[d] = extra
                    t = torch.cat([t, t.new_full(shape, pad_id if name == "input_ids" else 0)], d)
            padded.append(t)
        t = torch.cat(padded)
        return t.to(dtype) if t.is_floating_point() else t

    store = replace(parts[0], **{name: cat(name) for name in ("input_ids", "attention_mask", "logits", "hidden",
                                                              "attentions")})
    batch_size = batch_size or loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 32
    return batch_loader(list(range(len(store))), store.attention_mask.sum(1), batch_size, shuffle, seed,
                        group_by_length, _Collate(store, torch.cat(ys), dtype))


def skip_map(num_student: int, num_teacher: int, last: bool = False) -> dict[int, int]:
    """PKD-Skip's layer map ``{j: j * N / M}`` for student layers ``j = 1..M-1`` (``..M`` with ``last``).

    Sun et al. (2019) leave the last layer to the KD loss on the logits (``last=False``): for a 6-layer
    teacher, a 3-layer student gets ``{1: 2, 2: 4}`` (``{1: 2, 2: 4, 3: 6}`` with ``last=True``).
    """
    for name, v in (("num_student", num_student), ("num_teacher", num_teacher)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if num_teacher % num_student:
        raise ValueError(f"num_teacher ({num_teacher}) must be a multiple of num_student ({num_student}) for a "
                         f"skip map; pass layer_map explicitly")
    step = num_teacher // num_student
    return {j: j * step for j in range(1, num_student + (1 if last else 0))}


def uniform_map(num_student: int, num_teacher: int) -> dict[int, int]:
    """TinyBERT's uniform mapping ``g(m) = m * N / M`` for ``m = 0..M`` (0 = embeddings, M -> N)."""
    return {0: 0, **skip_map(num_student, num_teacher, last=True)}


class TransformerDistiller(Distiller):
    """Base of the Part III methods: the batch ``x`` is a :class:`TeacherBatch` (precomputed) or
    ``input_ids`` (then the live ``teacher`` is run). Subclasses set :attr:`teacher_needs`."""

    teacher_needs: dict

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None):
        super().__init__(student, teacher)
        self.num_student_layers = num_layers(student, "student")

    def _batch(self, x) -> TeacherBatch:
        """The batch with the teacher's outputs: as stored, or computed now by the live teacher."""
        if isinstance(x, TeacherBatch):
            return x
        ids = input_ids_of(x)
        if ids is not None and self.teacher is not None:
            mask = x.get("attention_mask") if isinstance(x, dict) else None
            return teacher_outputs(self.teacher, ids, mask, **self.teacher_needs)
        raise TypeError(f"{type(self).__name__} needs x to be a TeacherBatch (from precompute_teacher), or input_ids "
                        f"(a tensor, or a dict with 'input_ids') with a live teacher; got {type(x).__name__} and "
                        f"teacher={type(self.teacher).__name__}")

    def _student(self, b: TeacherBatch, attentions: bool = False):
        """The student's :class:`~kdedu.outputs.Outputs` on the batch, with every hidden state (and the
        attention maps if asked)."""
        out = run(self.student, {"input_ids": b.input_ids, "attention_mask": b.attention_mask},
                  hidden_states=True, attentions=attentions)
        out.require_logits("the student")
        return out

    def _width(self, model: nn.Module | None, given: int | None, role: str) -> int:
        """The hidden size of ``model`` if it is there, else ``given`` (for a precomputed teacher)."""
        if model is not None:
            return hidden_size(model, role)
        if isinstance(given, bool) or not isinstance(given, int) or given < 1:
            raise ValueError(f"without a live teacher, give teacher_width (a positive integer), got {given!r}")
        return given
