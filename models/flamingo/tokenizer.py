"""A word-level tokenizer built locally (no download) for the from-scratch checkpoint.

Words and punctuation are tokens (``Whitespace`` pre-tokenizer: ``\\w+|[^\\w\\s]+``);
decoding joins them with spaces, which is how VQA answers are written anyway.
"""

from __future__ import annotations

from typing import Iterable

from .config import END_OF_CHUNK, MEDIA_TOKEN

SPECIALS = ["<PAD>", "<UNK>", "<|endoftext|>", MEDIA_TOKEN, END_OF_CHUNK]


def build_word_tokenizer(texts: Iterable[str]):
    """A PreTrainedTokenizerFast whose vocabulary is every word/punctuation mark in ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<UNK>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<PAD>", unk_token="<UNK>", eos_token="<|endoftext|>",
        additional_special_tokens=[MEDIA_TOKEN, END_OF_CHUNK],
    )
