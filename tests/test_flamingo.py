"""The reference Flamingo: architecture properties, generation, save/load, the adapter and the
bundled checkpoint. Models are tiny and built from configs (random weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from harness.errors import HarnessError, MediaError  # noqa: E402
from harness.types import Chunk, GenerateRequest, GenerationConfig, Image, LoglikelihoodRequest, Prompt, Video  # noqa: E402
from models.flamingo.config import FlamingoConfig, LMConfig, ResamplerConfig, VisionConfig  # noqa: E402
from models.flamingo.model import FlamingoModel, load_tokenizer  # noqa: E402
from models.flamingo.tokenizer import build_word_tokenizer  # noqa: E402
from models.flamingo.xattn import media_time  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
WORDS = ["Question: what color is the shape? Short answer: red blue green yes no circle triangle"]
LM_CONFIGS = {
    "gpt2": dict(model_type="gpt2", n_embd=32, n_layer=3, n_head=2, n_positions=256),
    "opt": dict(model_type="opt", hidden_size=32, num_hidden_layers=3, num_attention_heads=2, ffn_dim=64,
                max_position_embeddings=256, word_embed_proj_dim=32),
    "llama": dict(model_type="llama", hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256),
}


def tiny_config(family: str = "gpt2", every: int = 1, tok=None) -> FlamingoConfig:
    hf = dict(LM_CONFIGS[family], vocab_size=len(tok))
    return FlamingoConfig(
        vision=VisionConfig(image_size=32, channels=(8, 16)),
        resampler=ResamplerConfig(num_latents=4, depth=1, heads=2, dim_head=8, ff_mult=2, max_frames=4),
        lm=LMConfig(hf_config=hf, frozen=False, cross_attn_every=every, xattn_heads=2, xattn_dim_head=8,
                    xattn_ff_mult=2),
    )


def tiny_model(family: str = "gpt2", every: int = 1, open_gates: bool = True, seed: int = 0) -> FlamingoModel:
    tok = build_word_tokenizer(WORDS)
    torch.manual_seed(seed)
    model = FlamingoModel(tiny_config(family, every, tok), tok).eval()
    if open_gates:  # trained-like gates, so the visual path matters
        with torch.no_grad():
            for block in model.xattn:
                block.attn_gate.fill_(1.0)
                block.ff_gate.fill_(0.5)
            model.resampler.time_emb.normal_()
    return model


def two_image_prompt(model: FlamingoModel) -> list[int]:
    return (model.chunk_ids(0, "Question:what color", True)
            + model.chunk_ids(1, "Question:what color is the shape? Short answer:red", True)
            + model.chunk_ids(1, "Question:what color is the shape? Short answer:", False))


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama"])
def test_gates_at_zero_give_the_bare_lm_exactly(family):
    model = tiny_model(family, every=2, open_gates=False)
    assert model.xattn_at == [0, 2]
    ids = torch.tensor([two_image_prompt(model)])
    media = model.encode_media(torch.randn(2, 3, 32, 32))[None]
    with torch.no_grad():
        flamingo = model(ids, media).logits
        bare = model.lm(input_ids=ids).logits
        assert torch.equal(flamingo, bare)
        # ...and opening a gate changes them: the check above is not vacuous.
        model.xattn[0].attn_gate.fill_(1.0)
        assert not torch.allclose(model(ids, media).logits, bare)


def test_per_media_masking():
    model = tiny_model()
    ids = torch.tensor([two_image_prompt(model)])
    text_time = media_time(ids, model.media_token_id)
    first, second = (ids[0] == model.media_token_id).nonzero().flatten().tolist()
    x = model.lm.get_input_embeddings()(ids)
    attn = model.xattn[0].attn
    img = torch.randn(2, 3, 32, 32)
    other = img.clone()
    other[0] = torch.randn(3, 32, 32)  # change only the earlier image
    with torch.no_grad():
        out_a = attn(x, model.encode_media(img)[None], text_time)
        out_b = attn(x, model.encode_media(other)[None], text_time)
    assert torch.equal(out_a[0, second:], out_b[0, second:])  # text after the later image: unchanged
    assert not torch.allclose(out_a[0, first:second], out_b[0, first:second])  # after the earlier one: changed
    assert torch.count_nonzero(out_a[0, :first]) == 0  # text before any media attends to nothing


def test_video_input_of_f_frames():
    model = tiny_model()
    frames = torch.randn(2, 4, 3, 32, 32)  # 2 videos x 4 frames
    with torch.no_grad():
        feats = model.encode_media(frames)
        assert feats.shape == (2, 4, 16)  # num_latents x dim: fixed whatever the frame count
        assert model.encode_media(frames[:, :2]).shape == (2, 4, 16)
        # Learned time embeddings: frame order matters.
        assert not torch.allclose(feats, model.encode_media(frames.flip(1)))
        ids = [model.chunk_ids(1, "Question:what color is the shape? Short answer:", False)] * 2
        assert len(model.generate(ids, pixels=[frames[:1], frames[1:]], num_beams=2)) == 2
    with pytest.raises(ValueError, match="at most 4"):
        model.encode_media(torch.randn(1, 5, 3, 32, 32))


def test_encode_media_then_generate_equals_generate_from_pixels():
    model = tiny_model()
    ids = [two_image_prompt(model), model.chunk_ids(1, "Question:what color? Short answer:", False)]
    pixels = [torch.randn(2, 3, 32, 32), torch.randn(1, 3, 32, 32)]
    feats = [model.encode_media(p) for p in pixels]
    for beams in (1, 3):
        assert model.generate(ids, media_features=feats, num_beams=beams) == model.generate(
            ids, pixels=pixels, num_beams=beams)


def naive_greedy(model, ids, feats, steps):
    """Greedy decoding that recomputes the whole sequence each step (no cache, no padding)."""
    ids = list(ids)
    out = []
    for _ in range(steps):
        logits = model(torch.tensor([ids]), feats[None]).logits[0, -1]
        logits[[model.media_token_id, model.pad_token_id]] = float("-inf")
        tok = int(logits.argmax())
        if tok in (model.eoc_token_id, model.tokenizer.eos_token_id):
            break
        ids.append(tok)
        out.append(tok)
    return out


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama"])
def test_kv_cached_batched_greedy_matches_naive_decoding(family):
    model = tiny_model(family, seed=3)
    prompts = [two_image_prompt(model), model.chunk_ids(1, "Question:what? Short answer:", False)]
    pixels = [torch.randn(2, 3, 32, 32), torch.randn(1, 3, 32, 32)]
    feats = [model.encode_media(p) for p in pixels]
    with torch.no_grad():
        expected = [naive_greedy(model, p, f, 6) for p, f in zip(prompts, feats)]
    got = model.generate(prompts, media_features=feats, num_beams=1, max_new_tokens=6)  # left-padded batch
    assert got == expected
    beams = model.generate(prompts, media_features=feats, num_beams=3, max_new_tokens=6)
    alone = [model.generate([p], media_features=[f], num_beams=3, max_new_tokens=6)[0] for p, f in zip(prompts, feats)]
    assert beams == alone


def test_save_load_round_trip(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "ck")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "ck").iterdir()}
    loaded = FlamingoModel.load(tmp_path / "ck")
    ids = torch.tensor([two_image_prompt(model)])
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(ids, model.encode_media(img)[None]).logits,
                           loaded(ids, loaded.encode_media(img)[None]).logits)
    with pytest.raises(HarnessError, match="config.json"):
        FlamingoModel.load(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def pretrained_dirs(tmp_path_factory):
    """A tiny random GPT-2 (with tokenizer) and CLIP vision tower saved like downloaded checkpoints."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("pretrained")
    tok = build_word_tokenizer(WORDS + ["what is the blue shape ? does image contain a rectangle"])
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=512, vocab_size=len(tok))).save_pretrained(
        root / "lm")
    tok.save_pretrained(root / "lm")
    CLIPVisionModel(CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=2)).save_pretrained(root / "vision")
    return root


@pytest.mark.slow
def test_paper_recipe_frozen_pretrained_parts(pretrained_dirs, tmp_path):
    """Train a few steps with frozen local LM + vision: only resampler, xattn and embeddings change;
    the checkpoint omits the frozen weights and loads back identical."""
    from safetensors.torch import load_file

    out = tmp_path / "ck"
    cmd = [PY, "-m", "models.flamingo.train", "--output", str(out), "--steps", "3", "--chunks-per-batch", "6",
           "--max-demos", "2", "--lm-path", str(pretrained_dirs / "lm"), "--vision-path",
           str(pretrained_dirs / "vision"), "--image-size", "32", "--latents", "4", "--xattn-heads", "2",
           "--xattn-dim-head", "8", "--log-every", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = load_file(str(out / "model.safetensors"))
    assert not any(k.startswith("vision.") for k in saved)  # frozen vision tower stays in its folder
    lm_keys = {k for k in saved if k.startswith("lm.")}
    assert lm_keys and all("wte" in k or "lm_head" in k for k in lm_keys)  # only the (trainable) embeddings
    model = FlamingoModel.load(out)
    from transformers import GPT2LMHeadModel

    original = GPT2LMHeadModel.from_pretrained(pretrained_dirs / "lm")
    block = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(model.lm.state_dict()[block], original.state_dict()[block])
    assert any(float(b.attn_gate.detach().abs()) > 0 for b in model.xattn)  # the gates did train
    assert "--lm-path" in (out / "TRAINING.md").read_text() and (out / "loss_curve.png").stat().st_size > 0


def _adapter(path):
    from models.flamingo.adapter import Flamingo

    return Flamingo({"path": str(path)})


def test_adapter_renders_openflamingo_prompts_and_takes_video_folders(tmp_path):
    from PIL import Image as PILImage

    model = tiny_model()
    model.save(tmp_path / "ck")
    adapter = _adapter(tmp_path / "ck")
    assert adapter.fingerprint.startswith("flamingo-") and "video" in adapter.media_kinds
    paths = []
    for i, color in enumerate(["red", "blue", "green"]):
        PILImage.new("RGB", (32, 32), color).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    # The openflamingo template's "\n" separator is not used: the bundled checkpoint was trained without it.
    prompt = Prompt((Chunk((Image(paths[0]),), "Question:what color is the shape? Short answer:red"),
                     Chunk((Image(paths[1]),), "Question:what color is the shape? Short answer:")), separator="\n")
    text = adapter.render_prompt(prompt)
    assert adapter.config()["demo_separator"] == ""
    assert text == ("<image>Question:what color is the shape? Short answer:red<|endofchunk|>"
                    "<image>Question:what color is the shape? Short answer:")
    # Piecewise tokenisation equals tokenising the rendered text (word-level tokenizer).
    assert adapter.prompt_ids(prompt) == adapter.model.tokenizer(text, add_special_tokens=False)["input_ids"]
    req = GenerateRequest(prompt, GenerationConfig(), query=None)  # type: ignore[arg-type]
    assert adapter.generate([req, req]) == adapter.generate([req]) * 2
    assert len(adapter._cache) == 2  # each image encoded once
    lls = adapter.loglikelihood([LoglikelihoodRequest(prompt, c, query=None) for c in ("red", "blue")])  # type: ignore[arg-type]
    assert all(x < 0 for x in lls)
    frames = tmp_path / "clip"
    frames.mkdir()
    for i, p in enumerate(paths):
        (frames / f"{i:03d}.png").write_bytes(Path(p).read_bytes())
    video_prompt = Prompt((Chunk((Video(str(frames)),), "Question:what color is the shape? Short answer:"),))
    assert len(adapter.generate([GenerateRequest(video_prompt, GenerationConfig(), query=None)])) == 1  # type: ignore[arg-type]
    with pytest.raises(MediaError, match="video not found"):  # video files are decoded by harness.data.video
        adapter.encode_media([Video(str(tmp_path / "clip.mp4"))])
    with pytest.raises(MediaError, match="not found"):
        adapter.encode_media([Image(str(tmp_path / "missing.png"))])


def test_bundled_checkpoint_answers_easyvqa_test_questions(tmp_path):
    from harness.evaluation.runner import CellSpec, Runner
    from models.flamingo.adapter import BUNDLED_CHECKPOINT
    from tasks.vqa import EasyVQA

    assert (BUNDLED_CHECKPOINT / "model.safetensors").is_file()
    size = sum(p.stat().st_size for p in BUNDLED_CHECKPOINT.iterdir())
    assert size < 25 * 2**20
    adapter = _adapter(BUNDLED_CHECKPOINT)
    result = Runner(adapter, tmp_path, progress=False).run_cell(EasyVQA(), CellSpec(shots=4, seed=0, limit=24))
    assert result["n_failed"] == 0
    # Far above the baselines (demo-majority ~33, support-prior ~60 at 4 shots); see docs/flamingo.md.
    assert result["metrics"]["accuracy"] >= 70, result["metrics"]


@pytest.mark.slow
def test_listing_models_does_not_import_torch():
    code = ("import sys; from harness.plugins import load_builtins; from harness.registry import model_names; "
            "load_builtins(); names = model_names(); "
            "assert 'flamingo' in names, names; assert 'torch' not in sys.modules; print('ok')")
    proc = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_bundled_flamingo_runs_a_video_task_from_mp4_files(tmp_path):
    """Video files go through harness.data.video (PyAV, the task's frame selection); the selection is
    part of the feature-cache key, and more frames than the resampler's time embeddings is a clear error."""
    import json

    from conftest_video import write_msqa
    from tests.conftest import run_cli

    write_msqa(tmp_path / "data", "msrvtt_qa", "video{video_id}.mp4")
    out = tmp_path / "res"
    args = ["run", "--model", "flamingo", "--tasks", "msrvtt_qa", "--data-dir", str(tmp_path / "data"),
            "--shots", "2", "--seeds", "0", "--output", str(out), "-q"]
    run_cli(*args, "--frames", "4")
    metrics = json.loads(next(out.rglob("metrics.json")).read_text())
    assert metrics["n"] == 4 and metrics["n_failed"] == 0
    assert metrics["config"]["task"]["options"]["frames"] == 4
    proc = run_cli(*args, "--frames", "16", "--output", str(tmp_path / "res16"), check=False)  # own cell folder
    assert proc.returncode == 2 and "takes at most 8" in proc.stderr and "--frames 8" in proc.stderr
