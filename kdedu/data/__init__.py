"""Data sets: embedded ones that work offline, and online loaders used when a network is there."""

from kdedu.data.augment import inject_noise, replace_words
from kdedu.data.cifar import as_tensors, cifar
from kdedu.data.complexity import conditional_entropy, corpus_conditional_entropy, in_grammar, modes, true_logprob
from kdedu.data.digits import Split, digits, digits_loaders, make_loader, translate
from kdedu.data.retrieval import embed, knn, sentiment_pool
from kdedu.data.seq_batches import SeqVocab, translation_loader, translation_pairs, translation_vocab
from kdedu.data.text import TextSplit, WordTokenizer, sentiment, sst2, text_loader, tokenize, word_tokenizer
from kdedu.data.translation import THREE_LANGUAGES, TranslationSplit, languages_of, mixes_languages, translation

__all__ = ["Split", "digits", "digits_loaders", "make_loader", "translate", "cifar", "as_tensors",
           "TextSplit", "sentiment", "sst2", "tokenize", "text_loader", "WordTokenizer", "word_tokenizer"]
__all__ += ["TranslationSplit", "translation", "THREE_LANGUAGES", "conditional_entropy", "corpus_conditional_entropy",
            "in_grammar", "languages_of", "mixes_languages", "SeqVocab", "translation_vocab", "translation_loader",
            "translation_pairs", "true_logprob", "modes"]
__all__ += ["replace_words", "inject_noise", "sentiment_pool", "embed", "knn"]
