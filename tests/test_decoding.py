"""The built-in search (models/decoding.py) gives the tokens Hugging Face's generate gives.

On a tiny random-weight OpenFlamingo (tests/conftest.py ``synthetic_openflamingo``), the
``openflamingo`` adapter's two routes, ``beam_search=builtin`` and ``beam_search=hf``
(transformers' own ``generate``), decode the same prompts with the same ``generate`` kwargs
over many seeded random cases: batch 1-8, 1-4 beams (1 = greedy), length_penalty in
{-1, 0, 0.5, 1, 2}, early_stopping False/True/"never", min_new_tokens 0-2, max_new_tokens
1-12, prompts with no image, one or several (left-padded batches), and an end token picked
among the tokens the model actually produces (alone, or with ``<|endofchunk|>``) so that
hypotheses do end early and compete. The new token ids must be identical.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from harness.errors import HarnessError  # noqa: E402
from harness.prompts import PromptBuilder  # noqa: E402
from harness.types import Example, GenerationConfig  # noqa: E402
from tasks.vqa import VQA_TEMPLATES  # noqa: E402

N_CASES = 48
WORDS = ["red", "blue", "circle", "cat", "dog", "bench", "two", "yes", "shape", "color"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def routes(synthetic_openflamingo):
    from models.openflamingo import OpenFlamingo

    opts, images = synthetic_openflamingo
    return OpenFlamingo(opts), OpenFlamingo({**opts, "beam_search": "hf"}), images


def random_prompts(rng: random.Random, images, batch: int):
    """VQA prompts of 0-4 shots; a third of the queries have no image (some prompts then have none)."""
    ex = [Example(id=str(i), media=(im,), fields={"question": f"What {rng.choice(WORDS)} is the {rng.choice(WORDS)}?"},
                  answers=(a,), target=a) for i, (im, a) in enumerate(zip(images, rng.choices(WORDS, k=len(images))))]
    builder = PromptBuilder(VQA_TEMPLATES["openflamingo"])
    prompts = []
    for _ in range(batch):
        q = rng.randrange(len(ex))
        query = ex[q] if rng.random() < 0.67 else Example(id="t", media=(), fields=ex[q].fields, answers=("red",))
        shots = rng.choice([0, 1, 2, 3, 4])
        demos = rng.sample([e for e in ex if e.id != str(q)], shots or 2)
        prompts.append(builder.build(demos, query, text_only_demos=shots == 0))
    return prompts


def random_case(seed: int, ours, hf, images):
    """(ids, mask, media, kwargs, extra end token) of case ``seed``."""
    rng = random.Random(seed)
    prompts = random_prompts(rng, images, rng.randint(1, 8))
    ids, mask = ours._encode_texts([ours.render_prompt(p) for p in prompts])
    media = ours.batch_media(prompts)
    cfg = GenerationConfig(max_new_tokens=rng.randint(1, 12), num_beams=rng.randint(1, 4),
                           length_penalty=rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0]),
                           min_new_tokens=rng.choice([0, 0, 0, 0, 0, 1, 2]))
    kwargs = ours.generation_kwargs(cfg)
    if cfg.num_beams > 1:
        kwargs["early_stopping"] = rng.choice([False, True, "never"])
    # an end token the model produces: a token of Hugging Face's own output where an end may come
    # (past min_new_tokens, and not earlier in its row: min_new_tokens would ban it there and change the path)
    pad, eoc = ours.tokenizer.pad_token_id, ours.net.eoc_token_id
    rows = [[t for t in row if t != pad] for row in hf.generate_ids(ids, mask, media, kwargs).tolist()]
    first = rng.random() < 0.5  # half the cases: the first token where an end may come (ends the best path)
    produced = [t for row in rows for i, t in enumerate(row)
                if (i == cfg.min_new_tokens if first else i >= cfg.min_new_tokens) and t not in row[:i]]
    end = rng.choice(produced or [t for row in rows for t in row[cfg.min_new_tokens:]] or [eoc])
    kwargs["eos_token_id"] = [end, eoc] if rng.random() < 0.5 and end != eoc else end
    return ids, mask, media, kwargs, end


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")  # cases with min_new_tokens > max_new_tokens
def test_builtin_search_equals_hugging_face_generate(routes):
    ours, hf, images = routes
    mismatches, ended, stopped, beams, greedy = [], 0, 0, 0, 0
    for seed in range(N_CASES):
        ids, mask, media, kwargs, end = random_case(seed, ours, hf, images)
        expected = hf.generate_ids(ids, mask, media, kwargs)
        got = ours.generate_ids(ids, mask, media, kwargs)
        if got.shape != expected.shape or not torch.equal(got, expected):
            mismatches.append(f"case {seed} {kwargs}: builtin {got.tolist()} != hf {expected.tolist()}")
        ended += any(end in row for row in expected.tolist())
        stopped += expected.shape[1] < kwargs["max_new_tokens"]  # every row ended before max_new_tokens
        beams += kwargs["num_beams"] > 1
        greedy += kwargs["num_beams"] == 1
    assert not mismatches, "\n".join(mismatches)
    # not vacuous: the end token ends the answer in most cases, whole batches stop early in some,
    # and both searches are exercised (34, 12, 36 and 12 of the 48 when written)
    assert ended >= N_CASES * 0.6 and stopped >= N_CASES / 8 and beams >= N_CASES / 2 and greedy >= N_CASES / 8


def test_adapter_texts_equal_hugging_face_routes(routes):
    """Through generate_batch (tokenize, media, decode, cut at <|endofchunk|>): the texts of the
    production settings (3 beams, 5 tokens, length_penalty 0) are those of Hugging Face's route."""
    ours, hf, images = routes
    prompts = random_prompts(random.Random(99), images, 8)
    for beams in (1, 3):
        cfg = GenerationConfig(max_new_tokens=5, num_beams=beams, length_penalty=0.0)
        texts = ours.generate_batch(prompts, cfg)
        assert texts == hf.generate_batch(prompts, cfg)
        assert len(set(texts)) > 1


def test_reorder_beams_moves_only_generated_positions():
    """The partial reorder equals Hugging Face's whole-cache reorder, in place, when beams share the prompt."""
    from transformers import DynamicCache

    from models.decoding import reorder_beams

    g = torch.Generator().manual_seed(0)
    batch, beams, heads, prompt, new, dim = 3, 4, 2, 7, 3, 5
    caches = []
    for _ in range(2):
        cache = DynamicCache()
        for layer in range(2):
            shared = torch.randn(batch, heads, prompt, dim, generator=torch.Generator().manual_seed(layer))
            k = torch.cat([shared.repeat_interleave(beams, 0), torch.zeros(batch * beams, heads, new, dim)], dim=2)
            cache.update(k.clone(), k.clone() + 1, layer)
        caches.append(cache)
    tails = [torch.randn(batch * beams, heads, new, dim, generator=g) for _ in range(2)]
    for cache in caches:
        for layer, tail in zip(cache.layers, tails):
            layer.keys[:, :, prompt:] = tail
            layer.values[:, :, prompt:] = tail * 2
    picks = torch.randint(0, beams, (batch, beams), generator=g)  # each row continues a beam of its own prompt
    beam_idx = (picks + torch.arange(batch)[:, None] * beams).flatten()
    full, partial = caches
    full.reorder_cache(beam_idx)
    before = [layer.keys.data_ptr() for layer in partial.layers]
    reorder_beams(partial, beam_idx, prompt)
    for a, b in zip(full.layers, partial.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert [layer.keys.data_ptr() for layer in partial.layers] == before  # in place


def test_what_the_builtin_search_lacks_is_a_clear_error(routes, synthetic_openflamingo):
    from models.openflamingo import OpenFlamingo

    ours, hf, images = routes
    opts, _ = synthetic_openflamingo
    with pytest.raises(HarnessError, match="prefill_once=false .* needs beam_search=hf"):
        OpenFlamingo({"prefill_once": "false"})  # before any file is read
    with pytest.raises(HarnessError, match="'builtin', 'hf'|builtin, hf"):
        OpenFlamingo({**opts, "beam_search": "fast"})
    prompts = random_prompts(random.Random(5), images, 2)
    cfg = GenerationConfig(max_new_tokens=3, num_beams=2)
    other = OpenFlamingo(opts)
    other.net.lm.generation_config.repetition_penalty = 1.3
    with pytest.raises(HarnessError, match="repetition_penalty=1.3.*beam_search=hf"):
        other.generate_batch(prompts, cfg)


def test_backend_tokenization_equals_the_tokenizer_call(routes):
    """encode_left_padded (the fast tokenizer's Rust backend, numpy padding) gives the ids and mask
    of ``tokenizer(texts, padding="longest")``, whatever state Hugging Face's last call left."""
    from models.openflamingo.text import encode_left_padded

    ours, _, images = routes
    tok = ours.tokenizer
    texts = [ours.render_prompt(p) for p in random_prompts(random.Random(3), images, 6)] + ["", "Question: <image>"]
    for state in ({"padding": "longest"}, {"padding": "max_length", "max_length": 3, "truncation": True}, {}):
        tok(texts[:2], **state)  # leaves its padding/truncation on the backend
        ids, mask = encode_left_padded(tok, texts)
        expected = tok(texts, padding="longest", return_tensors="pt")
        assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])
    assert ids.shape[1] > 50 and mask[:, 0].sum() < len(texts)  # few-shot prompts, left padding
