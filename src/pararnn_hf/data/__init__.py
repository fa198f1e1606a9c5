"""Corpora, tokenizer and packing for training (docs/design.md#data)."""

from .corpus import Corpus, builtin_corpus, hf_corpus, load_corpus, local_corpus
from .packing import PackedDataset, tokenize_documents
from .tokenizer import load_or_train_tokenizer, train_tokenizer

__all__ = [
    "Corpus",
    "PackedDataset",
    "builtin_corpus",
    "hf_corpus",
    "load_corpus",
    "load_or_train_tokenizer",
    "local_corpus",
    "tokenize_documents",
    "train_tokenizer",
]
