"""Tokenize a batch of rendered prompts, left-padded, straight through the fast tokenizer's backend.

``tokenizer(texts, padding="longest", return_tensors="pt")`` spends about as long in Python
(building per-row dicts, flattening them, converting lists to tensors) as the Rust backend
spends tokenizing 8 prompts of 32 shots. Here the backend's ``encode_batch`` (the call
Hugging Face makes, with the same special-token handling) gives the ids and numpy pads them:
the same ids and mask (tests/test_decoding.py checks it). Tokenizers that override Hugging
Face's encoding, slow (Python) tokenizers and ``split_special_tokens`` take the ordinary call.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def _backend(tokenizer: Any) -> Any | None:
    """The Rust tokenizer when Hugging Face would encode with nothing but its ``encode_batch``."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    plain = (isinstance(tokenizer, TokenizersBackend) and cls._encode_plus is TokenizersBackend._encode_plus
             and cls.__call__ is TokenizersBackend.__call__)
    if not plain or getattr(tokenizer, "split_special_tokens", False):
        return None
    return tokenizer.backend_tokenizer


def encode_left_padded(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``texts`` with special tokens, left-padded to the longest:
    what ``tokenizer(texts, padding="longest", return_tensors="pt")`` returns for a left-padding tokenizer."""
    backend = _backend(tokenizer)
    if backend is None or tokenizer.padding_side != "left":
        enc = tokenizer(list(texts), padding="longest", return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"]
    # the backend keeps padding/truncation from Hugging Face's last call; pad here instead
    if backend.padding is not None:
        backend.no_padding()
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.encode_special_tokens:
        backend.encode_special_tokens = False
    rows = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=True)]
    width = max(map(len, rows))
    ids = np.full((len(rows), width), tokenizer.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
