"""Chapter 15's `full`-profile cell, run offline with stand-ins (as tests/test_full_profile.py does for 07 and 08).

A tiny random Marian model with a word-level tokenizer, saved as a local checkpoint, stands in for
``Helsinki-NLP/opus-mt-en-ro``; JSON Lines copies of a few grammar sentence pairs stand in for WMT16 en-ro (read
through ``kdedu.data.translation_pairs``' own ``data_files`` path); the zoo's tiny seq2seq teacher stands in for the
chapter's three-language teacher in the setup cell. The BLEU scores mean nothing: the test checks that the cell
runs, distils through the teacher, trains both NATs and times both decoders.
"""

from __future__ import annotations

import json

import pytest
from stand_ins import BOOK, code_cells, run_full_profile

import kdedu.data
import kdedu.models
import kdedu.zoo


def _stand_in_marian(path, words):
    """A 1-layer Marian model of width 16 and a word-level tokenizer over ``words``, saved to ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import MarianConfig, MarianMTModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=128, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                          forced_eos_token_id=1)
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(path)


@pytest.mark.slow  # ~30 s of CPU: imports transformers and datasets, distils 48 sentences, trains two NATs
def test_chapter15_full_profile_cell_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    pytest.importorskip("datasets")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    files = {}
    for split, n in (("train", 48), ("test", 12)):
        s = kdedu.data.translation(split, target="fr", limit=n)
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("\n".join(json.dumps({"translation": {"en": a, "ro": b}})
                                          for a, b in zip(s.sources, s.targets, strict=True)))
    words = [w for split in ("train", "test") for s in (kdedu.data.translation(split, target="fr"),)
             for line in s.sources + s.targets for w in line.split()]
    checkpoint = tmp_path / "tiny-marian"
    _stand_in_marian(checkpoint, words)

    loaded, real_load_encoder, real_pairs = [], kdedu.models.load_encoder, kdedu.data.translation_pairs
    real_teacher = kdedu.zoo.seq2seq_teacher

    def load_encoder(name, **kwargs):
        loaded.append((name, kwargs.get("auto_class")))
        return real_load_encoder(checkpoint if name == "Helsinki-NLP/opus-mt-en-ro" else name, **kwargs)

    def translation_pairs(name, config, split, source_lang, target_lang, limit=None, **kwargs):
        assert (name, config, source_lang, target_lang) == ("wmt16", "ro-en", "en", "ro")
        return real_pairs(split=split, source_lang=source_lang, target_lang=target_lang, data_files=files[split],
                          limit=limit)

    monkeypatch.setattr(kdedu.models, "load_encoder", load_encoder)
    monkeypatch.setattr(kdedu.data, "translation_pairs", translation_pairs)
    monkeypatch.setattr(kdedu.zoo, "seq2seq_teacher", lambda name, **kw: real_teacher("tiny", verbose=False))
    cells = code_cells(BOOK / "15-non-autoregressive.md")
    full = [c for c in cells if c.startswith('if kdedu.profile.current() == "full":')]
    assert len(full) == 1, "the chapter should have exactly one full-profile cell"
    namespace = run_full_profile(monkeypatch, tmp_path, "15-non-autoregressive", [cells[0], full[0]])
    out = capsys.readouterr().out
    assert loaded == [("Helsinki-NLP/opus-mt-en-ro", "AutoModelForSeq2SeqLM")]
    assert set(namespace["real_scores"]) == {"Marian teacher, beam 4", "NAT, raw targets", "NAT, distilled targets"}
    assert all(0.0 <= v <= 100.0 for v in namespace["real_scores"].values())
    distilled = namespace["real_distilled"]
    assert distilled.sources == namespace["real_train"].sources and distilled.targets != namespace["real_train"].targets
    assert "one sentence at a time on cpu: Marian greedy" in out
