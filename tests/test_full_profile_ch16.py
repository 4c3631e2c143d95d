"""Chapter 16's `full`-profile cell (GPT-2 medium distilled into DistilGPT-2 on WikiText-2 through
``kdedu.hf.DistillationTrainer``), run offline on stand-ins, as tests/test_full_profile_ch13.py does for chapter 13:
two tiny random GPT-2 models (2 layers for the teacher, 1 for the student) built from ``transformers.GPT2Config``
with a word-level tokenizer made here from the grammar corpus, saved as local checkpoints, stand in for
``gpt2-medium`` and ``distilgpt2``, and a few hundred grammar sentences stand in for WikiText-2 (through a patched
``datasets.load_dataset``). The perplexities mean nothing."""

from __future__ import annotations

import math

import pytest
import torch
from stand_ins import BOOK, code_cells, run_full_profile

import kdedu.data


def _word_tokenizer(transformers, sentences):
    """A word-level fast tokenizer with GPT-2's conventions (an EOS token, no BOS added), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for s in sentences for w in s.split()})
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<pad>",
                                                unk_token="<unk>")


def test_chapter16_full_cell_runs_with_stand_ins(tmp_path, monkeypatch, capsys):
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")

    train, val = kdedu.data.translation("train", limit=150), kdedu.data.translation("test", limit=40)
    lines = {"train": [*train.sources, "", *train.targets], "validation": [*val.sources, *val.targets]}
    tokenizer = _word_tokenizer(transformers, lines["train"] + lines["validation"])
    checkpoints = {}
    for name, layers in (("gpt2-medium", 2), ("distilgpt2", 1)):
        config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=16, n_layer=layers,
                                         n_head=2, eos_token_id=tokenizer.eos_token_id,
                                         bos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(layers)
        path = tmp_path / name
        transformers.GPT2LMHeadModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        checkpoints[name] = path

    loaded = []
    real_tokenizer, real_model = transformers.AutoTokenizer.from_pretrained, \
        transformers.AutoModelForCausalLM.from_pretrained

    def local(real):
        def load(name, *args, **kwargs):
            loaded.append(name)
            return real(checkpoints[name], *args, **kwargs)
        return load

    def load_dataset(name, config=None, *args, **kwargs):
        assert (name, config) == ("wikitext", "wikitext-2-raw-v1")
        return {split: {"text": texts} for split, texts in lines.items()}

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", local(real_tokenizer))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", local(real_model))
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cells = code_cells(BOOK / "16-llm-distillation.md")
    full = [c for c in cells if 'if kdedu.profile.current() == "full":' in c]
    assert len(full) == 1
    # the first cell has the imports; the full cell closes the chapter's per-section timing
    namespace = run_full_profile(monkeypatch, tmp_path, "16-llm-distillation", [cells[0], full[0]],
                                 {"section_s": {}, "t_section": 0.0})
    capsys.readouterr()
    assert loaded == ["distilgpt2", "gpt2-medium", "distilgpt2", "distilgpt2", "distilgpt2"]
    rows = namespace["full_rows"]
    assert list(rows) == ["teacher (GPT-2 medium)", "student before (DistilGPT-2)", "fine-tuned on the text (α = 0)",
                          "distilled (α = 0.5, T = 2)"]
    assert all(math.isfinite(ppl) and ppl > 1 for ppl, _ in rows.values())
    # the blocks: every one 128 tokens, the text's tokens in order with an EOS after each line
    blocks = namespace["train_blocks"]
    assert blocks and all(b["input_ids"].shape == (128,) and torch.equal(b["input_ids"], b["labels"]) for b in blocks)
    first = tokenizer(lines["train"][0])["input_ids"] + [tokenizer.eos_token_id]
    assert blocks[0]["input_ids"][:len(first)].tolist() == first
    # perplexity is exp of the mean next-token cross-entropy: recomputed here for the teacher, token by token
    teacher = namespace["full_teacher"]
    eval_blocks = namespace["eval_blocks"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in eval_blocks:
            log_p = teacher(input_ids=b["input_ids"][None]).logits[0].log_softmax(-1)
            for i in range(127):
                nll -= log_p[i, b["input_ids"][i + 1]].item()
                count += 1
    assert math.isclose(rows["teacher (GPT-2 medium)"][0], math.exp(nll / count), rel_tol=1e-4)
    assert not any(p.requires_grad for p in teacher.parameters())  # frozen by DistillationTrainer
