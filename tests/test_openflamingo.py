"""The ``openflamingo`` adapter: parity with the real ``open-flamingo`` package on a tiny
random-weight model, prompt format, stopping, precision, loading errors.

Parity setup (see tests/openflamingo_reference.py): the package's own
``create_model_and_transforms`` builds a tiny OpenFlamingo (a tiny open_clip ViT config
registered locally, no pretrained weights; a tiny LLaMA and BPE tokenizer saved to a temp
dir; cross-attention before every 2nd of 4 decoder layers; gates set non-zero). Its parts
are saved the way OpenFlamingo is published (open_clip vision state dict, LM directory,
tokenizer directory, checkpoint.pt with resampler + cross-attention + embeddings), and our
adapter loads those files. Both sides get the same preprocessed pixel tensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import openflamingo_reference as ref  # noqa: E402

torch = pytest.importorskip("torch")

from harness.errors import HarnessError, MediaError  # noqa: E402
from harness.prompts import PromptBuilder  # noqa: E402
from harness.types import Chunk, Example, GenerationConfig, Image, LoglikelihoodRequest, Prompt, Video  # noqa: E402
from tasks.vqa import VQA_TEMPLATES  # noqa: E402

IMAGE_SIZE = 32
QUESTIONS = [("What color is the shape?", "red"), ("Is there a circle in the image?", "yes"),
             ("What color is the cat?", "black"), ("Is there a dog?", "no"), ("What is on the bench?", "a cat"),
             ("What color is the dog?", "brown")]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("openflamingo")
    model, tokenizer, paths = ref.build_reference(root / "model")
    images = []
    for i in range(len(QUESTIONS)):
        from PIL import Image as PILImage

        path = root / f"img{i}.png"
        PILImage.fromarray(np.random.RandomState(i).randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(path)
        images.append(Image(str(path)))
    return {"model": model, "tokenizer": tokenizer, "paths": paths, "images": images}


def adapter_options(paths, **extra):
    return dict(vision_encoder=str(paths["vision_config"]), vision_weights=str(paths["vision_weights"]),
                lang_model=str(paths["lang_model"]), tokenizer=str(paths["tokenizer"]),
                checkpoint=str(paths["checkpoint"]), cross_attn_every_n_layers=2, **extra)


@pytest.fixture(scope="module")
def adapter(reference):
    from models.openflamingo import OpenFlamingo

    return OpenFlamingo(adapter_options(reference["paths"]))


def examples(images) -> list[Example]:
    return [Example(id=str(i), media=(img,), fields={"question": q}, answers=(a,), target=a)
            for i, ((q, a), img) in enumerate(zip(QUESTIONS, images))]


def vqa_prompt(images, shots: int, query: int) -> Prompt:
    """An OpenFlamingo VQA prompt built by the harness; 0 shots = two text-only demos (Flamingo)."""
    ex = examples(images)
    demos = [e for e in ex if e.id != str(query)][: shots or 2]
    return PromptBuilder(VQA_TEMPLATES["openflamingo"]).build(demos, ex[query], text_only_demos=shots == 0)


def package_pixels(adapter, prompts):
    """vision_x (B, T_img, 1, C, H, W), zero-padded as OpenFlamingo's eval does, from our preprocessing."""
    per = [adapter.pixels(p.media) for p in prompts]
    t_max = max(x.shape[0] for x in per)
    out = torch.zeros(len(prompts), t_max, 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    for i, x in enumerate(per):
        out[i, : x.shape[0], 0] = x
    return out


def package_generate(reference, adapter, prompts, cfg: GenerationConfig) -> list[str]:
    model, tok = reference["model"], reference["tokenizer"]
    enc = tok([adapter.render_prompt(p) for p in prompts], padding="longest", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(package_pixels(adapter, prompts), enc["input_ids"], attention_mask=enc["attention_mask"],
                             **adapter.generation_kwargs(cfg))
    return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def package_loglikelihood(reference, adapter, prompt: Prompt, continuation: str) -> float:
    """The package's Flamingo.forward on one unpadded sequence: context ids + continuation ids."""
    model, tok = reference["model"], reference["tokenizer"]
    ctx = tok(adapter.render_prompt(prompt))["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logits = model(package_pixels(adapter, [prompt]), ids).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)[0, len(ctx) - 1 : -1]
    return float(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum())


SHOTS = (0, 1, 2, 4)


def parity_prompts(images):
    return [vqa_prompt(images, shots, query=5 - i) for i, shots in enumerate(SHOTS)]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_equals_package_generate(reference, adapter, num_beams):
    cfg = GenerationConfig(max_new_tokens=8, num_beams=num_beams)
    prompts = parity_prompts(reference["images"])
    batched = adapter.generate_batch(prompts, cfg)
    # batch of 4 (mixed shot counts, so padded text and zero-padded images) ...
    assert batched == package_generate(reference, adapter, prompts, cfg)
    # ... and one at a time
    for p, b in zip(prompts, batched):
        single = adapter.generate_batch([p], cfg)
        assert single == package_generate(reference, adapter, [p], cfg)
    assert any(t.strip() for t in batched), "all generations empty: the comparison would be vacuous"


def test_loglikelihood_equals_package_forward(reference, adapter):
    prompts = parity_prompts(reference["images"])
    conts = ["red", "yes", "a cat sitting"]
    reqs = [LoglikelihoodRequest(p, c, query=Example("q", (), {})) for p in prompts for c in conts]
    ours = adapter.loglikelihood(reqs)  # one padded batch of 12
    theirs = [package_loglikelihood(reference, adapter, r.prompt, r.continuation) for r in reqs]
    assert np.allclose(ours, theirs, atol=1e-4, rtol=0), (ours, theirs)
    assert len(set(np.round(ours, 3))) > 6  # the scores really differ across prompts and continuations


def test_images_change_the_scores(reference, adapter):
    """Cross-attention is live: the same text with another image scores differently."""
    imgs = reference["images"]
    a = vqa_prompt(imgs, 1, query=2)
    b = Prompt(tuple(Chunk((imgs[4],), c.text) if i == len(a.chunks) - 1 else c for i, c in enumerate(a.chunks)))
    ra, rb = (LoglikelihoodRequest(p, "black", query=Example("q", (), {})) for p in (a, b))
    la, lb = adapter.loglikelihood([ra, rb])
    assert abs(la - lb) > 1e-3
    assert abs(lb - package_loglikelihood(reference, adapter, b, "black")) < 1e-4


def test_encode_media_equals_package_features(reference, adapter):
    """encode_media = the package's vision encoder + resampler output, per image."""
    model, imgs = reference["model"], reference["images"][:3]
    pixels = adapter.pixels(imgs)
    with torch.inference_mode():
        model._encode_vision_x(pixels[None, :, None])
        theirs = model.lang_encoder._get_decoder_layers()[1].vis_x[0].clone()
        model.lang_encoder.clear_conditioned_layers()
    ours = adapter.encode_media(imgs)
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert torch.allclose(ours, theirs, atol=1e-5)
    from harness.store.identity import media_key

    assert adapter.encode_media(imgs[:1]) is not None
    assert media_key(imgs[0]) in adapter._features  # cached by (path, size, mtime)


def test_two_shot_vqa_prompt_renders_as_openflamingo(reference, adapter):
    imgs = reference["images"]
    ex = examples(imgs)
    prompt = PromptBuilder(VQA_TEMPLATES["openflamingo"]).build(ex[:2], ex[2])
    (q1, a1), (q2, a2), (q3, _) = QUESTIONS[:3]
    # Current OpenFlamingo evaluate.py: "\n" after each VQA demo's <|endofchunk|>.
    expected = (f"<image>Question:{q1} Short answer:{a1}<|endofchunk|>\n"
                f"<image>Question:{q2} Short answer:{a2}<|endofchunk|>\n"
                f"<image>Question:{q3} Short answer:")
    assert adapter.render_prompt(prompt) == expected
    ids = adapter.tokenizer(expected)["input_ids"]
    assert ids.count(adapter.net.media_token_id) == 3 and ids.count(adapter.net.eoc_token_id) == 2
    # 0-shot: Flamingo's two text-only demos lose their <image>, as OpenFlamingo's eval does
    zero = vqa_prompt(imgs, 0, query=2)
    assert adapter.render_prompt(zero).count("<image>") == 1
    assert adapter.render_prompt(zero).endswith("<|endofchunk|>\n<image>Question:What color is the cat? Short answer:")


def test_generation_stops_at_end_of_chunk(reference):
    """Make <|endofchunk|> the argmax from the third new token on (a real weight edit; min_new_tokens=2
    keeps it out of the first two): generation emits two tokens, then the marker, and stops short of max_new_tokens; the text has no marker."""
    from models.openflamingo import OpenFlamingo

    model = OpenFlamingo(adapter_options(reference["paths"]))
    net = model.net
    prompt = vqa_prompt(reference["images"], 2, query=3)
    ids, mask = model._encode_texts([model.render_prompt(prompt)])
    media = model.batch_media([prompt])

    def run(max_new_tokens: int, min_new_tokens: int = 0):
        cfg = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=1, min_new_tokens=min_new_tokens)
        with torch.inference_mode(), net.conditioning.conditioned(media, incremental=True):
            return net.lm.generate(input_ids=ids, attention_mask=mask, **model.generation_kwargs(cfg))[0, ids.shape[1]:]

    first_two = run(2)
    assert net.eoc_token_id not in first_two.tolist()
    # the final hidden state that predicts the 3rd new token; point the (untied) output row of the marker at it
    full = torch.cat([ids, first_two[None]], dim=1)
    with torch.inference_mode(), net.conditioning.conditioned(media, incremental=False):
        h = net.lm(input_ids=full, attention_mask=torch.ones_like(full), output_hidden_states=True).hidden_states[-1][0, -1]
    head = net.lm.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    with torch.no_grad():
        head.weight[net.eoc_token_id] = h * (1000.0 / h.dot(h))
    seq = run(10, min_new_tokens=2)  # the marker may not come earlier
    assert seq.tolist() == first_two.tolist() + [net.eoc_token_id]  # stopped right after the marker
    text = model.generate_batch([prompt], GenerationConfig(max_new_tokens=10, num_beams=1, min_new_tokens=2))[0]
    assert "<|endofchunk|>" not in text
    assert text == model.tokenizer.decode(first_two)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_low_precision_casts_weights_never_token_ids(reference, adapter, precision, dtype):
    from models.openflamingo import OpenFlamingo

    bf16 = OpenFlamingo(adapter_options(reference["paths"], precision=precision))
    net = bf16.net
    assert net.dtype == dtype
    for module in (net.lm, net.vision, net.perceiver, net.cross_attn):
        assert {p.dtype for p in module.parameters()} == {dtype}
    seen = []
    hook = net.lm.get_input_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        prompt = vqa_prompt(reference["images"], 2, query=1)
        bf16.generate_batch([prompt], GenerationConfig(max_new_tokens=3, num_beams=1))
        (ll,) = bf16.loglikelihood([LoglikelihoodRequest(prompt, "yes", query=Example("q", (), {}))])
    finally:
        hook.remove()
    assert seen and all(x.dtype == torch.long for x in seen)
    expected = adapter.tokenizer(adapter.render_prompt(prompt))["input_ids"]
    # the prompt is prefilled once, then generate feeds its last token: ids above 256 (<image>=360) intact
    assert seen[0][0].tolist() + seen[1][0].tolist() == expected
    assert max(expected) > 256
    (ll32,) = adapter.loglikelihood([LoglikelihoodRequest(prompt, "yes", query=Example("q", (), {}))])
    assert np.isfinite(ll) and abs(ll - ll32) < 0.5 * max(1.0, abs(ll32))


def test_feature_cache_is_exact_and_bounded(reference):
    from models.openflamingo import OpenFlamingo

    model = OpenFlamingo(adapter_options(reference["paths"], feature_cache_size=2))
    imgs = reference["images"]
    first = model.encode_media(imgs[:3])
    assert len(model._features) == 2
    again = model.encode_media(imgs[:3])
    assert torch.equal(first, again)
    assert torch.equal(model.encode_media([imgs[1]])[0], model.encode_pixels(model.pixels([imgs[1]]))[0])


def test_loading_errors_name_the_problem(reference, tmp_path):
    from models.openflamingo import OpenFlamingo

    paths = reference["paths"]
    with pytest.raises(HarnessError, match="checkpoint file not found"):
        OpenFlamingo({**adapter_options(paths), "checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(HarnessError, match="cross_attn_every_n_layers"):
        OpenFlamingo({**adapter_options(paths), "cross_attn_every_n_layers": 1})
    with pytest.raises(HarnessError, match="not a local directory"):
        OpenFlamingo({**adapter_options(paths), "lang_model": "anas-awadalla/mpt-1b-redpajama-200b"})
    with pytest.raises(HarnessError, match="neither a known open_clip tower"):
        OpenFlamingo({**adapter_options(paths), "vision_encoder": "ViT-Q-99"})
    with pytest.raises(HarnessError, match="vision encoder"):
        OpenFlamingo({**adapter_options(paths), "vision_encoder": "ViT-B-32"})
    with pytest.raises(HarnessError, match="precision"):
        OpenFlamingo({**adapter_options(paths), "precision": "fp8"})
    pickle = tmp_path / "not_weights.pt"
    torch.save({"x": object()}, pickle)
    with pytest.raises(HarnessError, match="weights-only"):
        OpenFlamingo({**adapter_options(paths), "checkpoint": str(pickle)})


def test_video_is_a_per_sample_error(adapter, tmp_path):
    prompt = Prompt((Chunk((Video(str(tmp_path / "v.mp4")),), "Output:"),))
    with pytest.raises(MediaError, match="images only"):
        adapter.generate_batch([prompt], GenerationConfig(max_new_tokens=2, num_beams=1))


def test_preprocessing_matches_torchvision_arithmetic():
    from models.openflamingo.preprocess import center_crop_box, preprocess, resized_size
    from PIL import Image as PILImage

    assert resized_size(640, 480, 224) == (298, 224)  # int(224 * 640 / 480) = 298
    assert resized_size(480, 640, 224) == (224, 298)
    assert resized_size(333, 500, 224) == (224, 336)
    assert center_crop_box(298, 224, 224) == (37, 0, 261, 224)  # round(37.0)
    assert center_crop_box(225, 225, 224) == (0, 0, 224, 224)  # round(0.5) = 0, Python rounding
    x = preprocess(PILImage.new("RGB", (50, 40), (255, 0, 128)), 32)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, 0, 0], (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(
        [0.48145466, 0.4578275, 0.40821073])) / torch.tensor([0.26862954, 0.26130258, 0.27577711]), atol=1e-6)


def test_preprocessing_equals_open_clip_eval_transform():
    """The PIL reimplementation gives open_clip's own eval transform (torchvision) pixel for pixel,
    on landscape, portrait and odd sizes."""
    from models.openflamingo.preprocess import preprocess
    from PIL import Image as PILImage

    open_clip, _ = ref.import_open_flamingo()
    transform = open_clip.image_transform(224, is_train=False)
    rng = np.random.default_rng(0)
    for w, h in ((640, 480), (333, 500), (225, 225), (301, 257)):
        image = PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        assert torch.allclose(preprocess(image, 224), transform(image), atol=1e-6), (w, h)


@pytest.mark.slow
def test_cli_run_with_local_files(reference, tmp_path):
    """A real `run_eval.py run` subprocess: easyvqa 0 and 2 shots, predictions with OpenFlamingo prompts."""
    import json
    import os
    import subprocess

    paths = reference["paths"]
    args = [f"--model-arg={k}={v}" for k, v in adapter_options(paths).items()]
    proc = subprocess.run(
        [sys.executable, str(ref.ROOT / "run_eval.py"), "run", "--model", "openflamingo", *args, "--tasks", "easyvqa",
         "--limit", "3", "--shots", "0", "2", "--seeds", "0", "--threads", "1", "--output", str(tmp_path / "out")],
        cwd=ref.ROOT, env={**os.environ, "PYTHONPATH": str(ref.ROOT), "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for f in sorted((tmp_path / "out").rglob("predictions.jsonl")) for line in f.read_text().splitlines()]
    assert len(records) == 6 and not any(r.get("error") for r in records)
    two_shot = [r for r in records if len(r["demo_ids"]) == 2 and r["prompt"].count("<image>") == 3]
    assert two_shot and all(r["prompt"].endswith(" Short answer:") for r in two_shot)
    assert all("<|endofchunk|>" not in r["raw_output"] for r in records)


def test_full_state_dict_checkpoint_loads_every_key_form(reference, adapter, tmp_path):
    """The package's whole state dict as checkpoint.pt (vision_encoder.*, FlamingoLayer-wrapped
    decoder layers, old_decoder_blocks.*, both cross-attention names), no vision_weights: same scores."""
    from models.openflamingo import OpenFlamingo

    full = tmp_path / "full_checkpoint.pt"
    sd = reference["model"].state_dict()
    assert any(".decoder_layer." in k for k in sd) and any(k.startswith("vision_encoder.") for k in sd)
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}}, full)  # as a DDP training run saves it
    model = OpenFlamingo({**adapter_options(reference["paths"]), "checkpoint": str(full), "vision_weights": ""})
    prompt = vqa_prompt(reference["images"], 2, query=4)
    req = LoglikelihoodRequest(prompt, "a cat", query=Example("q", (), {}))
    assert model.loglikelihood([req]) == pytest.approx(adapter.loglikelihood([req]), abs=1e-5)


@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14"])
def test_named_towers_have_open_clips_parameters(arch):
    """Our table of towers builds exactly open_clip's parameter names and shapes (on the meta device)."""
    from models.openflamingo.modules import VisionTransformer
    from models.openflamingo.weights import vision_config

    open_clip, _ = ref.import_open_flamingo()
    with torch.device("meta"):
        theirs = open_clip.create_model(arch, pretrained=None, device="meta").visual.state_dict()
        ours = VisionTransformer(vision_config(arch, None)).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
