"""A byte-level BPE tokenizer trained on the corpus with ``tokenizers``, cached on disk and
returned as a ``PreTrainedTokenizerFast`` that saves with the model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def cache_dir() -> Path:
    """``$PARARNN_HF_CACHE``, else ``~/.cache/pararnn_hf``."""
    return Path(os.environ.get("PARARNN_HF_CACHE") or Path.home() / ".cache" / "pararnn_hf")


def train_tokenizer(documents: list[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Byte-level BPE with ``<|endoftext|>`` (bos/eos, id 0) and ``<|pad|>`` (id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + 2:
        raise ValueError(f"vocab_size must be at least 258 (256 bytes + 2 special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer, length=len(documents))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        padding_side="left",  # causal LM: generate() on a padded batch needs left padding
    )


def load_or_train_tokenizer(corpus, vocab_size: int = 4096):
    """The tokenizer for ``corpus`` from the disk cache, training and caching it if needed."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = cache_dir() / "tokenizers" / f"{corpus.fingerprint()}-v{vocab_size}-tok{tokenizers.__version__}"
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder, padding_side="left")
    tokenizer = train_tokenizer(corpus.train, vocab_size)
    # write aside then rename, so a concurrent run never reads a half-written folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process cached it first
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
