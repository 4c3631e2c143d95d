"""Chapter 13's `full`-profile cell (WMT16 English-Romanian, the Marian teacher opus-mt-en-ro, a 6-3 student),
run offline on stand-ins, as tests/test_full_profile.py does for other chapters: a tiny random Marian model with 6
encoder and 6 decoder layers, saved as a local checkpoint with the offline MiniLM (WordPiece) tokenizer, stands in
for ``Helsinki-NLP/opus-mt-en-ro``, and a local JSON Lines file of grammar pairs stands in for WMT16 (read through
``kdedu.data.translation_pairs``' own ``data_files`` path). The BLEU scores mean nothing."""

from __future__ import annotations

import json

import pytest
import torch
from stand_ins import BOOK, code_cells, run_full_profile

import kdedu.data
import kdedu.models


def test_chapter13_full_cell_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")

    _, tokenizer = kdedu.models.load_minilm()
    config = transformers.MarianConfig(
        vocab_size=tokenizer.vocab_size, d_model=16, encoder_layers=6, decoder_layers=6, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=160,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny-marian"
    transformers.MarianMTModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    for split, n in (("train", 40), ("test", 12)):
        s = kdedu.data.translation(split, limit=n)
        rows = [{"translation": {"en": a, "ro": b}} for a, b in zip(s.sources, s.targets, strict=True)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    loaded = []
    real_tokenizer, real_model = transformers.AutoTokenizer.from_pretrained, \
        transformers.AutoModelForSeq2SeqLM.from_pretrained
    real_pairs = kdedu.data.translation_pairs

    def local(real):
        def load(name, *args, **kwargs):
            loaded.append(name)
            return real(checkpoint if name == "Helsinki-NLP/opus-mt-en-ro" else name, *args, **kwargs)
        return load

    def pairs(name, config, split, source_lang, target_lang, limit=None, lowercase=True):
        assert (name, config, source_lang, target_lang) == ("wmt16", "ro-en", "en", "ro")
        return real_pairs(split=split, source_lang="en", target_lang="ro", data_files=tmp_path / f"{split}.jsonl",
                          limit=limit, lowercase=lowercase)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", local(real_tokenizer))
    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained", local(real_model))
    monkeypatch.setattr(kdedu.data, "translation_pairs", pairs)
    cells = code_cells(BOOK / "13-sequence-kd.md")
    full = [c for c in cells if 'if kdedu.profile.current() == "full":' in c]
    assert len(full) == 1
    # the first cell has the imports; the full cell needs BEAM, bleu, WordKD, Markdown from earlier cells
    namespace = run_full_profile(monkeypatch, tmp_path, "13-sequence-kd", [cells[0], full[0]], {"BEAM": 2})
    out = capsys.readouterr().out
    assert loaded == ["Helsinki-NLP/opus-mt-en-ro"] * 2  # the tokenizer and the teacher, from the stand-in
    rows = namespace["full_rows"]
    assert list(rows) == ["baseline (references)", "Seq-KD (teacher's beam)"]
    assert all(set(r) == {"greedy", "beam"} for r in rows.values())
    assert len(namespace["distilled"]) == 40 and "teacher beams on 40 sources" in out
    student = namespace["shrunk_student"]()
    assert len(student.get_decoder().layers) == 3 and student.config.decoder_layers == 3
    assert len(namespace["full_teacher"].get_decoder().layers) == 6  # the teacher is untouched
