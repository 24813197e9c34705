"""sdpa_rows (models/hf_attention.py): a left-padded batch attends row by row on the causal fast path.

Checked against transformers' own mask builder (which masks it recognises, which it refuses) and on
the real tiny families: each padded row's logits equal the same prompt run alone, under ``sdpa``."""

from __future__ import annotations

import pytest
import torch

from models import hf_attention
from tests.hf_tiny import build_tiny_hf


def _padding(lengths: list[int], n: int) -> torch.Tensor:
    padding = torch.zeros(len(lengths), n, dtype=torch.bool)
    for row, length in enumerate(lengths):
        padding[row, n - length:] = True
    return padding


@pytest.mark.parametrize("lengths", [[7, 3, 5], [1, 7], [7, 6, 2, 4]])
def test_the_mask_builder_records_left_padding_of_a_causal_prefill(lengths):
    """It returns transformers' own sdpa mask, and records each row's padding for that tensor only."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    padding = _padding(lengths, 7)
    mask = hf_attention.sdpa_rows_mask(len(lengths), 7, 7, mask_function=causal_mask_function, attention_mask=padding)
    assert torch.equal(mask, sdpa_mask(batch_size=len(lengths), q_length=7, kv_length=7, attention_mask=padding))
    assert hf_attention.pads_of(mask) == [7 - n for n in lengths]
    assert hf_attention.pads_of(mask.clone()) is None  # a mask a model rebuilt goes to plain sdpa


def test_other_masks_are_left_to_sdpa():
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    padding = _padding([7, 5], 7)
    cases = [dict(q_length=7, kv_length=7, mask_function=sliding_window_causal_mask_function(3), local_size=3,
                  attention_mask=padding),
             dict(q_length=7, kv_length=7, mask_function=causal_mask_function, attention_mask=padding.flip(-1)),
             dict(q_length=7, kv_length=7, mask_function=causal_mask_function,
                  attention_mask=torch.tensor([[True] * 7, [False, True, False, True, True, True, True]])),
             dict(q_length=1, kv_length=7, q_offset=6, mask_function=causal_mask_function, attention_mask=padding)]
    for kw in cases:
        mask = hf_attention.sdpa_rows_mask(2, **kw)
        assert mask is not None and hf_attention.pads_of(mask) is None, kw
    # no padding: transformers passes no mask at all (is_causal), as for a batch of one
    assert hf_attention.sdpa_rows_mask(2, 7, 7, mask_function=causal_mask_function,
                                       attention_mask=_padding([7, 7], 7)) is None


def _row_logits(model, ids: list[list[int]]) -> list[torch.Tensor]:
    n = max(map(len, ids))
    batch = torch.zeros(len(ids), n, dtype=torch.long)
    mask = torch.zeros(len(ids), n, dtype=torch.long)
    for row, seq in enumerate(ids):
        batch[row, n - len(seq):] = torch.tensor(seq)
        mask[row, n - len(seq):] = 1
    with torch.inference_mode():
        logits = model(input_ids=batch, attention_mask=mask).logits
    return [logits[row, n - len(seq):] for row, seq in enumerate(ids)]


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3", "gemma3"])
def test_padded_rows_equal_each_prompt_alone(family, tmp_path):
    """Text prompts of different lengths through the real tiny model: with sdpa_rows every row's
    logits equal that prompt alone (sdpa, no padding) to float rounding, and the rows took the
    fast path (Gemma3's sliding-window layers too: these prompts are shorter than its window)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(build_tiny_hf(family, tmp_path / family))).eval()
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(10, 100, (n,), generator=gen).tolist() for n in (23, 9, 17, 23, 4)]
    alone = [_row_logits(model, [seq])[0] for seq in ids]
    padded_sdpa = _row_logits(model, ids)
    assert hf_attention.use_row_attention(model)
    hf_attention._known.clear()
    padded_rows = _row_logits(model, ids)
    assert [pads for _, pads in hf_attention._known] == [[0, 14, 6, 0, 19]]  # the fast path
    for a, s, r in zip(alone, padded_sdpa, padded_rows):
        torch.testing.assert_close(r, a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s, a, atol=1e-5, rtol=1e-5)


def test_the_adapter_uses_it_unless_told_otherwise(tmp_path):
    from harness.registry import get_model_class

    path = build_tiny_hf("qwen2_vl", tmp_path / "q")
    hf = get_model_class("hf")
    assert hf({"path": str(path)}).model.config._attn_implementation == "sdpa_rows"
    assert hf({"path": str(path), "attn_implementation": "sdpa"}).model.config._attn_implementation == "sdpa"
    assert hf({"path": str(path), "attn_implementation": "sdpa_rows"}).model.config._attn_implementation == "sdpa_rows"
