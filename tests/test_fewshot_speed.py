"""The fast few-shot path (issue 11) computes what the old one computed.

- per-image cross-attention = the masked form (1e-5, fp32) on random inputs: no image, one,
  several, text before the first image, left padding, beams sharing a media row;
- the whole model: logits equal, and predictions of the old path (masked attention, Hugging
  Face expanding the prompt to the beams before the prefill) and the new one (per-image
  attention, one prefill per query) identical for greedy and 3 beams, batch 1 and 8;
- the LM-conditioning hooks both models share (models/conditioning.py): derived media rows,
  text-only batches, plain vs strict calls outside a scope;
- the vision-feature cache: a byte budget, disk persistence across instances, counters that
  the runner writes into metrics.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from harness.prompts import PromptBuilder  # noqa: E402
from harness.types import Example, GenerationConfig  # noqa: E402
from models.crossattn import media_rows_for  # noqa: E402
from tasks.vqa import VQA_TEMPLATES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

MEDIA = 7  # the media token id in the module-level tests

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_batch(seed: int = 0):
    """Token rows (left-padded with id 0) covering: no image at all, text before the first image,
    one image, several images, an image right at the start, a row of only padding + text."""
    rows = [
        [3, 4, 5, 6, 3, 4],                                  # no image
        [3, 4, MEDIA, 5, 6, MEDIA, 4, 4, 5, MEDIA, 3],       # text first, then 3 images
        [MEDIA, 5, 6, 3],                                    # one image at the start
        [4, MEDIA, 3, MEDIA, MEDIA, 5, 6],                   # consecutive images (one gets no text)
        [5, 5, MEDIA, 3, 4, 5, 6, 3, 4, 5, 6, 3],            # one image after text
    ]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)  # left padding
    text_time = (ids == MEDIA).cumsum(-1)
    return ids, text_time, max(int((ids == MEDIA).sum(-1).max()), 1)


def xattn_modules():
    from models.flamingo.xattn import MaskedCrossAttention as FlamingoXAttn
    from models.openflamingo.modules import MaskedCrossAttention as OpenFlamingoXAttn

    torch.manual_seed(0)
    return {"openflamingo": OpenFlamingoXAttn(48, 24, dim_head=16, heads=4).eval(),
            "flamingo": FlamingoXAttn(48, 24, heads=4, dim_head=16).eval()}


@pytest.mark.parametrize("kind", ["openflamingo", "flamingo"])
def test_per_image_attention_equals_masked(kind):
    attn = xattn_modules()[kind]
    ids, text_time, n_img = random_batch()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(ids.shape[0], ids.shape[1], 48, generator=g)
    media = torch.randn(ids.shape[0], n_img, 5, 24, generator=g)
    with torch.no_grad():
        masked = attn(x, media, text_time)
        fast = attn.per_image(x, attn.project(media), n_img, text_time)
    assert (masked - fast).abs().max() <= 1e-5
    assert torch.count_nonzero(fast[text_time == 0]) == 0  # no image before: no visual input
    assert fast[text_time > 0].abs().min() > 0  # and every token after an image gets some
    # a decode step: one new token per row, which follows the prompt's last image
    step = torch.randn(ids.shape[0], 1, 48, generator=g)
    last = text_time[:, -1:]
    with torch.no_grad():
        assert (attn(step, media, last) - attn.per_image(step, attn.project(media), n_img, last)).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["openflamingo", "flamingo"])
def test_beams_share_their_prompts_media_rows(kind):
    """3 beams per prompt read the prompt's keys/values through media_rows: the same as expanding the media."""
    attn = xattn_modules()[kind]
    _, text_time, n_img = random_batch()
    g = torch.Generator().manual_seed(2)
    media = torch.randn(text_time.shape[0], n_img, 5, 24, generator=g)
    rows = media_rows_for(3 * text_time.shape[0], text_time.shape[0], torch.device("cpu"))
    x = torch.randn(len(rows), text_time.shape[1], 48, generator=g)
    tt = text_time[rows]
    with torch.no_grad():
        expanded = attn(x, media[rows], tt)
        shared = attn.per_image(x, attn.project(media), n_img, tt, rows)
    assert (expanded - shared).abs().max() <= 1e-5


def test_shared_conditioning_rows_text_only_and_strictness():
    """models/conditioning.py, as each model sets it up: flamingo derives beams' media rows when
    not given and runs only the feed-forward on a text-only batch (both forms); an unconditioned
    call is flamingo's plain LM but an error for openflamingo's strict conditioning."""
    from models.conditioning import LMConditioning
    from models.openflamingo.modules import GatedCrossAttentionBlock
    from test_flamingo import tiny_model, two_image_prompt

    model = tiny_model("gpt2", seed=1)
    ids = torch.tensor([two_image_prompt(model)] * 2)
    media = model.encode_media(torch.randn(4, 3, 32, 32)).unflatten(0, (2, 2))
    beams = ids.repeat_interleave(3, 0)
    with torch.no_grad():
        explicit = model(beams, media, media_rows=media_rows_for(6, 2, ids.device)).logits
        assert torch.equal(model(beams, media).logits, explicit)
        text = ids[:, :3]
        assert (text != model.media_token_id).all()
        for per_image in (True, False):
            model.per_image_xattn = per_image
            for empty in (None, media[:, :0]):
                out = model(text, empty).logits
                assert not torch.equal(out, model.lm(input_ids=text).logits)  # the gated feed-forward ran
                assert torch.equal(out, model(text, None).logits)
        model.per_image_xattn = True
        model.lm(input_ids=ids)  # plain LM: no error
    torch.manual_seed(0)
    emb, layer, block = torch.nn.Embedding(10, 8), torch.nn.Identity(), GatedCrossAttentionBlock(8, 4, 4, 2)
    cond = LMConditioning([(layer, block)], MEDIA, emb, strict=True)
    tokens, img = torch.tensor([[1, MEDIA, 2, 3]]), torch.randn(1, 1, 3, 4)
    with pytest.raises(RuntimeError, match="without media conditioning"):
        layer(emb(tokens))
    with torch.no_grad(), cond.conditioned(img):
        out = layer(emb(tokens))
    with torch.no_grad():
        assert (out - block(emb.weight[tokens], img, (tokens == MEDIA).cumsum(-1))).abs().max() <= 1e-6


def test_flamingo_model_logits_and_beams_equal_masked():
    from test_flamingo import tiny_model, two_image_prompt

    model = tiny_model("llama", seed=5)
    prompts = [two_image_prompt(model), model.chunk_ids(1, "Question:what color? Short answer:", False),
               model.chunk_ids(0, "Question:what", True) + model.chunk_ids(1, "Question:what color?", False)]
    feats = [model.encode_media(torch.randn(2, 3, 32, 32)), model.encode_media(torch.randn(1, 3, 32, 32)),
             model.encode_media(torch.randn(1, 3, 32, 32))]
    ids, mask, media = model.collate(prompts, feats)
    outs = {}
    for per_image in (True, False):
        model.per_image_xattn = per_image
        with torch.no_grad():
            logits = model(ids, media, mask).logits
        gens = {beams: model.generate(prompts * 2, media_features=feats * 2, num_beams=beams, max_new_tokens=4)
                for beams in (1, 3)}
        outs[per_image] = (logits, gens)
    model.per_image_xattn = True
    real = mask.bool()
    assert (outs[True][0][real] - outs[False][0][real]).abs().max() <= 1e-5
    assert outs[True][1] == outs[False][1]
    assert any(outs[True][1][3]), "all generations empty: the comparison would be vacuous"


# ---- OpenFlamingo: old path vs new path, whole model ----------------------------------------


def of_prompts(images, n: int):
    """n prompts with 0, 1, 2, 4 shots in turn (a batch mixes lengths: left padding, zero-padded media)."""
    ex = [Example(id=str(i), media=(im,), fields={"question": f"What color is the shape {i}?"}, answers=("red",),
                  target="red") for i, im in enumerate(images)]
    builder = PromptBuilder(VQA_TEMPLATES["openflamingo"])
    out = []
    for q in range(n):
        shots = (0, 1, 2, 4)[q % 4]
        demos = [e for e in ex if e.id != str(q)][q % 3: q % 3 + (shots or 2)]
        out.append(builder.build(demos, ex[q], text_only_demos=shots == 0))
    return out


def test_openflamingo_old_and_new_paths_agree(synthetic_openflamingo):
    from models.openflamingo import OpenFlamingo
    from harness.types import LoglikelihoodRequest

    opts, images = synthetic_openflamingo
    new = OpenFlamingo(opts)
    old = OpenFlamingo({**opts, "xattn": "masked", "prefill_once": "false", "beam_search": "hf",
                        "feature_cache_size": "1024"})
    prompts = of_prompts(images, 8)
    for beams in (1, 3):
        cfg = GenerationConfig(max_new_tokens=5, num_beams=beams)
        batch_new = new.generate_batch(prompts, cfg)
        assert batch_new == old.generate_batch(prompts, cfg)  # batch 8
        for p, expected in zip(prompts[:4], batch_new):  # batch 1
            single = new.generate_batch([p], cfg)
            assert single == old.generate_batch([p], cfg)
        assert len({t for t in batch_new}) > 1, "every prompt gave the same text: the comparison would be vacuous"
    # logits through the whole LM, both forms, on the left-padded batch (0 to 4 images, text before the first)
    ids, mask = new._encode_texts([new.render_prompt(p) for p in prompts])
    media = new.batch_media(prompts)
    logits = []
    for per_image in (True, False):
        with torch.inference_mode(), new.net.conditioning.conditioned(media, incremental=False, per_image=per_image):
            logits.append(new.net.lm(input_ids=ids, attention_mask=mask, use_cache=False).logits)
    assert (logits[0] - logits[1])[mask.bool()].abs().max() <= 1e-5
    # loglikelihood: one forward pass over a left-padded batch
    reqs = [LoglikelihoodRequest(p, c, query=Example("q", (), {})) for p in prompts for c in ("red", "a circle")]
    a, b = np.array(new.loglikelihood(reqs)), np.array(old.loglikelihood(reqs))
    assert np.abs(a - b).max() <= 1e-4 and len(set(np.round(a, 3))) > 8


def test_new_path_prefills_each_prompt_once(synthetic_openflamingo):
    """With 3 beams the prompt goes through the LM at batch size B (not 3B); decode steps see 3B rows of one token."""
    from models.openflamingo import OpenFlamingo

    opts, images = synthetic_openflamingo
    calls = []
    for prefill_once in (True, False):
        model = OpenFlamingo({**opts, "prefill_once": prefill_once, "beam_search": "builtin" if prefill_once else "hf"})
        seen = []
        hook = model.net.lm.get_input_embeddings().register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
        model.generate_batch(of_prompts(images, 2), GenerationConfig(max_new_tokens=3, num_beams=3))
        hook.remove()
        calls.append(seen)
    new, old = calls
    assert new[0][0] == 2 and new[0][1] > 10 and all(s == (6, 1) for s in new[1:])
    assert old[0][0] == 6 and old[0][1] == new[0][1] + 1


# ---- the vision-feature cache ------------------------------------------------------------------


def test_feature_cache_byte_budget_disk_and_counters(synthetic_openflamingo, tmp_path):
    from models.openflamingo import OpenFlamingo

    opts, images = synthetic_openflamingo
    item = 64 * 64 * 4  # 64 latents x width 64, fp32
    small = OpenFlamingo({**opts, "feature_cache_mb": str(2.5 * item / 2**20), "feature_cache_dir": str(tmp_path)})
    first = small.encode_media(images[:3])
    assert len(small._features) == 2 and small._features.nbytes == 2 * item  # the budget, in bytes
    assert small.stats()["vision_encodes"] == 3 and small.stats()["feature_cache_evictions"] == 1
    assert torch.equal(small.encode_media([images[2]])[0], first[2])
    assert small.stats()["feature_cache_hits"] == 1
    # a new process (same fingerprint) reads them from disk instead of encoding
    other = OpenFlamingo({**opts, "feature_cache_dir": str(tmp_path)})
    again = other.encode_media(images[:3])
    assert torch.equal(again, first)
    assert other.stats()["vision_encodes"] == 0 and other.stats()["feature_cache_disk_hits"] == 3
    assert other.stats()["feature_cache_misses"] == 3 and small.stats()["feature_cache_misses"] == 3
    assert torch.equal(first, small.encode_pixels(small.pixels(images[:3])))  # exact


def test_bad_cache_budget_is_a_clear_error_before_loading(tmp_path):
    from harness.errors import HarnessError
    from models.flamingo.adapter import Flamingo
    from models.openflamingo import OpenFlamingo

    with pytest.raises(HarnessError, match="feature_cache_mb must be >= 0"):
        OpenFlamingo({"feature_cache_mb": "-1"})  # no files given: it fails before any loading
    with pytest.raises(HarnessError, match="feature_cache_mb and feature_cache must be >= 0"):
        Flamingo({"feature_cache_mb": "-1", "path": str(tmp_path)})


def test_runner_records_cache_counters_in_metrics(synthetic_openflamingo, tmp_path):
    from conftest import write_vqa_fixture

    from harness.registry import get_task_class
    from harness.plugins import load_builtins
    from harness.evaluation.runner import CellSpec, Runner
    from models.openflamingo import OpenFlamingo

    opts, _ = synthetic_openflamingo
    write_vqa_fixture(tmp_path / "data", "vqav2", n_train=9, n_val=4)
    load_builtins()
    task = get_task_class("vqav2")(str(tmp_path / "data"), {"max_new_tokens": "2", "num_beams": "1"})
    model = OpenFlamingo(opts)
    runner = Runner(model, tmp_path / "out", progress=False)
    first = runner.run_cell(task, CellSpec(shots=4, seed=0, limit=4))["model_stats"]
    second = runner.run_cell(task, CellSpec(shots=4, seed=1, limit=4))["model_stats"]
    metrics = json.loads(next((tmp_path / "out").rglob("4shot_seed1/metrics.json")).read_text())
    assert metrics["model_stats"] == second
    third = runner.run_cell(task, CellSpec(shots=8, seed=2, limit=4))["model_stats"]
    # 13 distinct images (9 support, 4 queries): each encoded once over all cells; 8-shot demos are all hits
    assert first["vision_encodes"] + second["vision_encodes"] + third["vision_encodes"] <= 13 and first["vision_encodes"] >= 8
    assert third["feature_cache_hits"] + third["vision_encodes"] == 4 * 9 and third["vision_encodes"] <= 1


def test_a_cell_encodes_its_distinct_images_up_front_in_large_batches(synthetic_openflamingo, tmp_path, monkeypatch):
    """A fresh cell encodes every distinct image it shows before its first batch, PREFETCH_BATCH a vision
    call, and none after; the predictions equal a model that encodes batch by batch."""
    from conftest import write_vqa_fixture

    from harness.registry import get_task_class
    from harness.plugins import load_builtins
    from harness.evaluation.runner import CellSpec, Runner
    from models.openflamingo import OpenFlamingo

    opts, _ = synthetic_openflamingo
    write_vqa_fixture(tmp_path / "data", "vqav2", n_train=9, n_val=6)
    load_builtins()
    task = get_task_class("vqav2")(str(tmp_path / "data"), {"max_new_tokens": "2", "num_beams": "1"})
    monkeypatch.setattr(OpenFlamingo, "PREFETCH_BATCH", 4)
    model, calls = OpenFlamingo({**opts, "prefetch": "true"}), []
    encode = model.encode_pixels
    model.encode_pixels = lambda pixels: (calls.append(len(pixels)), encode(pixels))[1]
    res = Runner(model, tmp_path / "a", progress=False).run_cell(task, CellSpec(shots=4, seed=0, limit=6, batch_size=2))
    n = res["model_stats"]["vision_encodes"]
    assert n >= 10 and calls == [4] * (n // 4) + ([n % 4] if n % 4 else [])

    plain = OpenFlamingo(opts)  # the default: batch by batch
    Runner(plain, tmp_path / "b", progress=False).run_cell(task, CellSpec(shots=4, seed=0, limit=6, batch_size=2))
    read = lambda root: [json.loads(line)["raw_output"] for line in next(root.rglob("predictions.jsonl")).read_text().splitlines()]
    assert read(tmp_path / "a") == read(tmp_path / "b")
    assert plain.stats()["vision_encodes"] == n


def test_idefics_one_prefill_equals_hugging_face_beams(synthetic_openflamingo, tiny_idefics_dir):
    """IDEFICS: prefilling once and expanding the cache gives Hugging Face's own predictions
    (greedy and 3 beams, batch 8 and 1), with the prompt run at batch B, not B x beams."""
    from harness.types import GenerateRequest
    from models.idefics import Idefics

    _, images = synthetic_openflamingo
    ex = [Example(id=str(i), media=(im,), fields={"question": f"what color is the shape {i}?"}, answers=("red",),
                  target="red") for i, im in enumerate(images)]
    builder = PromptBuilder(VQA_TEMPLATES["flamingo"])
    prompts = [builder.build([e for e in ex if e.id != str(q)][: (0, 1, 2, 4)[q % 4] or 2], ex[q],
                             text_only_demos=q % 4 == 0) for q in range(8)]
    new = Idefics({"path": str(tiny_idefics_dir)})
    old = Idefics({"path": str(tiny_idefics_dir), "prefill_once": "false"})
    seen = []
    hook = new.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    for beams in (1, 3):
        reqs = [GenerateRequest(p, GenerationConfig(max_new_tokens=4, num_beams=beams), ex[0], ()) for p in prompts]
        fast = new.generate(reqs)
        assert fast == old.generate(reqs)
        assert [new.generate([r])[0] for r in reqs[:2]] == old.generate(reqs[:1]) + old.generate(reqs[1:2])
        assert len(set(fast)) > 1, "every prompt gave the same text: the comparison would be vacuous"
    hook.remove()
    assert seen[0][0] == 8 and seen[1] == (8, 1)  # greedy: prefill at B, then the last token
    three = [s for s in seen if s[0] == 24]
    assert three and all(s[1] == 1 for s in three)  # 3 beams: only single-token steps run at 3B rows
