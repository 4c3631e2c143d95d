"""Data sets: embedded ones that work offline, and online loaders used when a network is there."""

from kdedu.data.cifar import as_tensors, cifar
from kdedu.data.digits import Split, digits, digits_loaders, make_loader, translate
from kdedu.data.text import TextSplit, WordTokenizer, sentiment, sst2, text_loader, tokenize, word_tokenizer

__all__ = ["Split", "digits", "digits_loaders", "make_loader", "translate", "cifar", "as_tensors",
           "TextSplit", "sentiment", "sst2", "tokenize", "text_loader", "WordTokenizer", "word_tokenizer"]
