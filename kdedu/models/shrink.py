"""Shrink a trained Transformer by copying some of its layers: the "shrink" of shrink-and-fine-tune (SFT; Shleifer &
Rush 2020, "Pre-trained Summarization Distillation"; seed deck 002, "Pretraining and Sequence Distillation?").

A student initialised from the teacher's own weights starts where the teacher is, minus the layers it lacks;
plain fine-tuning on the data then often matches KD and Seq-KD at a fraction of their cost (the deck's table).
Shleifer & Rush's ``make_student`` copies the embeddings, the whole encoder and a few *spaced-out* decoder layers,
always the first and the last: for a 12-layer decoder, 3 layers are copies of layers 0, 6 and 11.
:func:`layers_to_copy` gives their choice for 6-, 12- and 16-layer teachers and evenly spaced layers (first and last
included) for the others; :func:`shrink_decoder` builds the student for kdedu's :class:`~kdedu.models.Seq2Seq`
(decoder, and optionally the encoder) and :class:`~kdedu.models.GPT` (its one stack).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["layers_to_copy", "shrink_decoder", "SHLEIFER_RUSH_LAYERS"]

# Shleifer & Rush's make_student: {teacher layers: {student layers: teacher layers copied}}, 0-based
SHLEIFER_RUSH_LAYERS = {
    6: {1: [0], 2: [0, 5], 3: [0, 2, 5], 4: [0, 1, 3, 5], 6: list(range(6))},
    12: {1: [0], 2: [0, 6], 3: [0, 6, 11], 4: [0, 4, 8, 11], 6: [0, 2, 4, 7, 9, 11], 9: [0, 1, 2, 4, 5, 7, 9, 10, 11],
         12: list(range(12))},
    16: {1: [0], 2: [0, 15], 3: [0, 8, 15], 4: [0, 5, 10, 15], 6: [0, 3, 6, 9, 12, 15],
         8: [0, 2, 4, 6, 8, 10, 12, 15], 9: [0, 1, 3, 5, 7, 9, 11, 13, 15],
         12: [0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 13, 15], 16: list(range(16))},
}


def layers_to_copy(num_student: int, num_teacher: int) -> list[int]:
    """Which of ``num_teacher`` layers a ``num_student``-layer student copies (0-based, increasing): Shleifer &
    Rush's table when it has the pair, else ``round(i (N - 1) / (M - 1))`` for ``i = 0..M-1`` (first and last
    layers kept, the others evenly spaced; one layer: the first, as in their table)."""
    for name, v in (("num_student", num_student), ("num_teacher", num_teacher)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if num_student > num_teacher:
        raise ValueError(f"num_student ({num_student}) cannot exceed num_teacher ({num_teacher})")
    table = SHLEIFER_RUSH_LAYERS.get(num_teacher, {})
    if num_student in table:
        return list(table[num_student])
    if num_student == 1:
        return [0]
    return [round(i * (num_teacher - 1) / (num_student - 1)) for i in range(num_student)]


def _resolve(layers, num_layers, total: int, what: str) -> list[int]:
    if layers is None:
        return layers_to_copy(total if num_layers is None else num_layers, total)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise ValueError(f"{what} must be a non-empty sequence of layer indices, got {layers!r}")
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in layers):
        raise TypeError(f"{what} must hold integers, got {layers!r}")
    if any(not 0 <= k < total for k in layers) or any(a >= b for a, b in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"{what} must be strictly increasing indices in [0, {total - 1}] (the teacher has {total}), "
                         f"got {tuple(layers)}")
    if num_layers is not None and num_layers != len(layers):
        raise ValueError(f"num_layers={num_layers} disagrees with {what}={tuple(layers)}")
    return list(layers)


def _copy_stack(src: nn.Module, dst: nn.Module, layers: list[int]) -> None:
    """Block ``layers[i]`` of the teacher's stack becomes block ``i`` of the student's; the final norm is copied."""
    for i, k in enumerate(layers):
        dst.layers[i].load_state_dict(src.layers[k].state_dict())
    if getattr(src, "norm", None) is not None:
        dst.norm.load_state_dict(src.norm.state_dict())


def shrink_decoder(teacher: nn.Module, layers: Sequence[int] | None = None, num_layers: int | None = None,
                   encoder_layers: Sequence[int] | None = None) -> nn.Module:
    """A shallower copy of a trained :class:`~kdedu.models.Seq2Seq` or :class:`~kdedu.models.GPT`.

    ``layers`` (0-based teacher decoder blocks, increasing) or ``num_layers`` (then :func:`layers_to_copy` picks
    them) set the student's decoder; the default keeps every layer. For a Seq2Seq the embeddings (and the tied
    output layer), the encoder (all of it, or ``encoder_layers``) and the final norms are copied too; a GPT's one
    stack is its "decoder". The student has the teacher's settings otherwise, is trainable and in train mode.
    """
    from kdedu.models.gpt import GPT
    from kdedu.models.seq2seq import Seq2Seq

    if isinstance(teacher, Seq2Seq):
        dec = _resolve(layers, num_layers, len(teacher.decoder.layers), "layers")
        enc = _resolve(encoder_layers, None, len(teacher.encoder.layers), "encoder_layers")
        student = Seq2Seq(**{**teacher.settings, "num_encoder_layers": len(enc), "num_decoder_layers": len(dec)})
        student.embed.load_state_dict(teacher.embed.state_dict())
        _copy_stack(teacher.encoder, student.encoder, enc)
        _copy_stack(teacher.decoder, student.decoder, dec)
    elif isinstance(teacher, GPT):
        if encoder_layers is not None:
            raise ValueError("a GPT has no encoder: encoder_layers must be None")
        dec = _resolve(layers, num_layers, len(teacher.blocks.layers), "layers")
        student = GPT(**{**teacher.settings, "num_layers": len(dec)})
        student.embed.load_state_dict(teacher.embed.state_dict())
        _copy_stack(teacher.blocks, student.blocks, dec)
    else:
        raise TypeError(f"teacher must be a kdedu.models.Seq2Seq or GPT, got {type(teacher).__name__} (for a BERT "
                        f"use kdedu.models.student_from_teacher)")
    student.requires_grad_(True)
    if hasattr(teacher, "vocab"):
        student.vocab = teacher.vocab
    return student.train()
