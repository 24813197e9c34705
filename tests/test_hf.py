"""The `hf` adapter on tiny random-weight models of five transformers families, built offline.

Each family's model directory is built once per session (tests/hf_tiny.py); the real CLI runs on a
few easy-VQA questions at 0 and 2 shots, batched and one prompt at a time, and on MSRVTT-QA videos
(native video for Qwen2-VL and LLaVA-OneVision, frames as images on request).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from hf_tiny import build_tiny_hf  # noqa: E402

from harness.cli import main  # noqa: E402

FAMILIES = ["idefics3", "qwen2_vl", "llava_onevision", "gemma3", "smolvlm"]
#: the text each image is written as in the prompt (before the processor expands it)
PLACEHOLDER = {"idefics3": "<image>", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
               "llava_onevision": "<image>", "gemma3": "<start_of_image>", "smolvlm": "<image>"}
#: the text each native video is written as
VIDEO = {"qwen2_vl": "<|vision_start|><|video_pad|><|vision_end|>", "llava_onevision": "<video>"}
#: families whose vision features are cached per image (models/hf_features.py)
FEATURES = ["idefics3", "qwen2_vl", "gemma3", "smolvlm"]
#: how each family's chat template opens an assistant turn
ASSISTANT = {"idefics3": "Assistant:", "qwen2_vl": "<|im_start|>assistant\n",
             "llava_onevision": "<|im_start|>assistant", "gemma3": "<start_of_turn>model\n", "smolvlm": "Assistant:"}
LIMIT = 4


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_models")
    return {f: build_tiny_hf(f, root / f) for f in FAMILIES}


def _run(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()  # drop what the test printed before
    rc = main(["run", "-q", *args])
    err = capsys.readouterr().err
    # transformers' own weight-loading progress bar may come first; the harness's error is one line
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    return rc, "\n".join(errors) if errors else err


def _predictions(out: Path, shots: int) -> dict[str, dict]:
    (path,) = out.glob(f"*/easyvqa/{shots}shot_seed0/predictions.jsonl")
    return {r["query_id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="session")
def family_runs(hf_dirs, tmp_path_factory):
    """Each family through the CLI at 0 and 2 shots, batch 4 and batch 1: {family: (batched, unbatched)}."""
    runs = {}
    for fam, d in hf_dirs.items():
        outs = []
        for batch in (4, 1):
            out = tmp_path_factory.mktemp(f"run_{fam}_b{batch}")
            rc = main(["run", "-q", "--model", "hf", "--model-arg", f"path={d}", "--tasks", "easyvqa",
                       "--shots", "0", "2", "--seeds", "0", "--limit", str(LIMIT), "--batch-size", str(batch),
                       "--output", str(out)])
            assert rc == 0, f"{fam} batch {batch}: exit {rc}"
            outs.append(out)
        runs[fam] = tuple(outs)
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_runs_each_family_with_image_demos(family, family_runs):
    batched, _ = family_runs[family]
    for shots in (0, 2):
        (metrics_file,) = batched.glob(f"*/easyvqa/{shots}shot_seed0/metrics.json")
        metrics = json.loads(metrics_file.read_text())
        assert metrics["n"] == LIMIT and metrics["n_failed"] == 0
        assert metrics["config"]["model"]["prompt_format"] == "chat"
        assert metrics["config"]["model"]["model_type"] == family
        stats = metrics["model_stats"]
        assert stats["media_cache_misses"] > 0 and stats["media_cache_hits"] > 0
        # every distinct image encoded once: the demos recur, so some lookups are hits
        assert (stats["vision_encodes"] > 0) if family in FEATURES else ("vision_encodes" not in stats)
        preds = _predictions(batched, shots)
        assert len(preds) == LIMIT
        for r in preds.values():
            prompt = r["prompt"]
            # zero-shot: two text-only demos, so the query's image only; 2 shots: 2 demo images + the query's
            assert prompt.count(PLACEHOLDER[family]) == (1 if shots == 0 else 3), prompt
            # each demo is a user turn and an assistant turn; the prompt ends opening the model's turn
            assert prompt.count(ASSISTANT[family]) == 3, prompt
            assert prompt.rstrip().endswith(ASSISTANT[family].rstrip())
            assert len(r["demo_ids"]) == 2
            assert r["raw_output"] != "" or r["prediction"] == ""


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_generation_equals_one_prompt_at_a_time(family, family_runs):
    batched, unbatched = family_runs[family]
    for shots in (0, 2):
        a, b = _predictions(batched, shots), _predictions(unbatched, shots)
        assert {k: (r["prompt"], r["raw_output"]) for k, r in a.items()} == \
               {k: (r["prompt"], r["raw_output"]) for k, r in b.items()}


def test_generations_equal_model_generate_on_hand_built_inputs(hf_dirs):
    """Parity: the adapter's output is model.generate on the processor's inputs for the same chat."""
    import torch

    from harness.prompts import PromptBuilder
    from harness.registry import get_task_class
    from harness.types import GenerateRequest, GenerationConfig
    from harness.data.media import load_image
    from models.hf import HF

    adapter = HF({"path": str(hf_dirs["qwen2_vl"])})
    task = get_task_class("easyvqa")()
    demos, query = task.support_examples()[:2], task.eval_examples()[0]
    _, template = task.template(adapter.template_style)
    prompt = PromptBuilder(template).build(demos, query)
    cfg = GenerationConfig(max_new_tokens=6, num_beams=2, length_penalty=0.0)
    got = adapter.generate([GenerateRequest(prompt, cfg, query, tuple(demos))])[0]

    def user(ex):
        return {"role": "user", "content": [{"type": "image"},
                                            {"type": "text", "text": f"Question: {ex.fields['question']} Answer:"}]}

    messages = []
    for d in demos:
        messages += [user(d), {"role": "assistant", "content": [{"type": "text", "text": d.target}]}]
    messages.append(user(query))
    proc, model = adapter.processor, adapter.model
    text = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == adapter.render_prompt(prompt)
    images = [load_image(e.media[0].path) for e in (*demos, query)]
    inputs = proc(text=[text], images=[images], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=6, num_beams=2, length_penalty=0.0, do_sample=False,
                             eos_token_id=[proc.tokenizer.convert_tokens_to_ids("<|im_end|>")])
    want = proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    assert got == want


def test_loglikelihood_scores_the_answer_after_the_assistant_prefix(hf_dirs):
    """Idefics3 writes an assistant answer as 'Assistant: yes': the candidate is scored as ' yes' after
    'Assistant:', from one forward pass, and a candidate's score does not depend on the others."""
    import torch

    from harness.prompts import PromptBuilder
    from harness.registry import get_task_class
    from harness.types import LoglikelihoodRequest
    from models.hf import HF

    adapter = HF({"path": str(hf_dirs["idefics3"])})
    task = get_task_class("easyvqa")()
    demos, query = task.support_examples()[:2], task.eval_examples()[0]
    prompt = PromptBuilder(task.template(adapter.template_style)[1]).build(demos, query)
    reqs = [LoglikelihoodRequest(prompt, c, query) for c in (" yes", " no", " red circle")]
    together = adapter.loglikelihood(reqs)
    alone = [adapter.loglikelihood([r])[0] for r in reqs]
    assert together == pytest.approx(alone, abs=1e-4)

    context = adapter.render_prompt(prompt)
    assert context.endswith("Assistant:")
    images, _ = adapter._prompt_media(prompt)
    proc = adapter.processor
    ctx = proc(text=[context], images=[images], return_tensors="pt")
    full = proc(text=[context + " red circle"], images=[images], return_tensors="pt")
    n = ctx["input_ids"].shape[1]
    assert full["input_ids"][0, :n].tolist() == ctx["input_ids"][0].tolist()
    with torch.inference_mode():
        logp = adapter.model(**full).logits.float().log_softmax(-1)[0]
    ids = full["input_ids"][0]
    want = sum(float(logp[j - 1, ids[j]]) for j in range(n, len(ids)))
    assert together[2] == pytest.approx(want, abs=1e-4)
    assert all(s < 0 for s in together)


def test_hateful_memes_ranks_candidates_through_the_cli(hf_dirs, tmp_path, capsys):
    from conftest_video import write_hateful

    data = write_hateful(tmp_path / "data")
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={hf_dirs['gemma3']}", "--tasks", "hateful_memes",
                   "--data-dir", str(data), "--shots", "2", "--seeds", "0", "--limit", "3",
                   "--output", str(tmp_path / "out"))
    assert rc == 0, err
    (path,) = (tmp_path / "out").glob("*/hateful_memes/2shot_seed0/predictions.jsonl")
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert set(r["candidate_logprobs"]) == {"yes", "no"}
        assert r["prompt"].count("<start_of_image>") == 3 and r["prompt"].count("<start_of_turn>model") == 3


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_plain_format_interleaves_placeholders_and_stops_at_the_separator(family, hf_dirs, tmp_path, capsys):
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={hf_dirs[family]}",
                   "--model-arg", "prompt_format=plain", "--tasks", "easyvqa", "--shots", "2", "--seeds", "0",
                   "--limit", "2", "--output", str(tmp_path))
    assert rc == 0, err
    for r in _predictions(tmp_path, 2).values():
        chunks = r["prompt"].split("\n")
        assert len(chunks) == 3 and all(c.startswith(PLACEHOLDER[family] + "Question: ") for c in chunks)
        assert chunks[0].endswith("Answer: " + r["prompt"].split("Answer: ")[1].split("\n")[0])
        assert "\n" not in r["raw_output"]


def test_system_prompt_and_demo_images_decoded_and_processed_once(hf_dirs):
    from harness.prompts import PromptBuilder
    from harness.registry import get_task_class
    from harness.types import GenerateRequest, GenerationConfig
    from models.hf import HF

    adapter = HF({"path": str(hf_dirs["gemma3"]), "system": "Answer in one word."})
    task = get_task_class("easyvqa")()
    demos = task.support_examples()[:2]
    builder = PromptBuilder(task.template(adapter.template_style)[1])
    cfg = GenerationConfig(max_new_tokens=2, num_beams=1)
    reqs = [GenerateRequest(builder.build(demos, q), cfg, q, tuple(demos)) for q in task.eval_examples()[:3]]
    adapter.generate(reqs)
    paths = [m.path for r in reqs for m in r.prompt.media]
    assert len(paths) == 9
    # each distinct image decoded once and processed once; every other use (demos recur in all three
    # prompts) is a hit
    assert adapter._cache.misses == 2 * len(set(paths))
    assert adapter._cache.hits >= 2 * (len(paths) - len(set(paths)))
    assert adapter.render_prompt(reqs[0].prompt).startswith("<bos><start_of_turn>user\nAnswer in one word.\n\n")


# ---- errors: one line naming the model and the fix, exit 2, before any work ------------------
def test_error_path_is_not_a_model_directory(tmp_path, capsys):
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={tmp_path}", "--tasks", "easyvqa",
                   "--shots", "0", "--limit", "1", "--output", str(tmp_path / "out"))
    assert rc == 2
    assert err.startswith("error: model hf") and "not a model directory" in err and "save_pretrained" in err
    assert len(err.strip().splitlines()) == 1


def test_error_architecture_takes_no_images(tmp_path, capsys):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_tiny import tiny_tokenizer

    tok = tiny_tokenizer([], bos="<s>", eos="</s>", pad="<pad>")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={tmp_path / 'llama'}", "--tasks", "easyvqa",
                   "--shots", "0", "--limit", "1", "--output", str(tmp_path / "out"))
    assert rc == 2
    assert err.startswith(f"error: model hf ({tmp_path / 'llama'})") and "takes no images" in err
    assert "vision-language model" in err and len(err.strip().splitlines()) == 1


def test_error_more_images_than_max_images_before_the_model_loads(hf_dirs, tmp_path, capsys):
    """The directory holds a config and nothing else (no weights, no processor): the max_images error
    comes from the early validation, since loading the model would fail first."""
    import shutil

    bare = tmp_path / "config_only"
    bare.mkdir()
    shutil.copy(hf_dirs["qwen2_vl"] / "config.json", bare)
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={bare}", "--model-arg", "max_images=2",
                   "--tasks", "easyvqa", "--shots", "0", "2", "--limit", "1", "--seeds", "0",
                   "--output", str(tmp_path / "out"))
    assert rc == 2
    assert err.startswith(f"error: model hf ({bare}): a prompt (easyvqa at 2 shots) holds 3 images"), err
    assert "max_images=2" in err and "--shots" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    # within the limit, the same directory fails at loading (no weights): the check above came first
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={bare}", "--model-arg", "max_images=3",
                   "--tasks", "easyvqa", "--shots", "2", "--limit", "1", "--seeds", "0",
                   "--output", str(tmp_path / "out"))
    assert rc == 2 and "max_images" not in err


def test_max_images_counts_video_frames_before_the_model_loads(tmp_path, capsys):
    from conftest_video import write_msqa

    data = write_msqa(tmp_path / "data", "msrvtt_qa", "video{video_id}.mp4")
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={tmp_path / 'nothing'}", "--model-arg",
                   "max_images=8", "--tasks", "msrvtt_qa", "--data-dir", str(data), "--frames", "4",
                   "--shots", "2", "--limit", "1", "--seeds", "0", "--output", str(tmp_path / "out"))
    assert rc == 2 and "(msrvtt_qa at 2 shots) holds 12 images (video frames count)" in err, err


def test_video_goes_in_as_its_frames(hf_dirs, tmp_path):
    from conftest_video import write_video

    from harness.types import Chunk, GenerateRequest, GenerationConfig, Example, Prompt
    from harness.data.video import FrameSelection, SampledVideo
    from models.hf import HF

    video = SampledVideo(str(write_video(tmp_path / "v.mp4")), selection=FrameSelection(frames=3, size=32))
    adapter = HF({"path": str(hf_dirs["qwen2_vl"]), "video_as_frames": "true"})
    prompt = Prompt((Chunk((video,), "Question: what moves? Answer: a square", answer=" a square"),
                     Chunk((video,), "Question: what moves? Answer:")))
    text = adapter.render_prompt(prompt)
    assert text.count(PLACEHOLDER["qwen2_vl"]) == 6
    query = Example("q", (video,), {"question": "what moves?"})
    (out,) = adapter.generate([GenerateRequest(prompt, GenerationConfig(max_new_tokens=2, num_beams=1), query)])
    assert isinstance(out, str)
    # a family without native video refuses a video unless it may go in as frames
    with pytest.raises(Exception, match="video_as_frames=true"):
        HF({"path": str(hf_dirs["idefics3"])}).render_prompt(prompt)


def test_list_models_documents_the_options(capsys):
    assert main(["list", "models", "-v"]) == 0
    out = capsys.readouterr().out
    hf = out[out.index("\nhf ") :]
    for option in ("path", "dtype", "device_map", "attn_implementation", "trust_remote_code", "max_images",
                   "prompt_format", "system", "image_size", "processor_args", "video_as_frames", "cache_mb",
                   "feature_cache_mb"):
        assert f"{option}: " in hf and f"{option} (" in hf


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_pixels_equal_the_processor_own(family, hf_dirs):
    """The per-image pixel cache rebuilds exactly the processor's batch output (mixed image counts
    and sizes per sample), and a repeated image is processed once."""
    import numpy as np
    import torch
    from PIL import Image as PILImage

    from models.hf import HF
    from models.hf_cache import KEY, CachedImageProcessor

    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for h, w in ((64, 64), (40, 60), (64, 32), (30, 64))]
    for i, im in enumerate(images):
        im.info[KEY] = f"image {i}"
    adapter = HF({"path": str(hf_dirs[family])})
    # generation stops at the token closing an assistant turn; the generic probe of the chat
    # template (for families without a hook) finds the same token as the family's hook
    assert adapter.tokenizer.convert_tokens_to_ids(adapter.family.end_of_turn) in adapter._stop_ids
    assert adapter._probe_end_of_turn() == adapter.family.end_of_turn
    proc = adapter.processor
    assert isinstance(proc.image_processor, CachedImageProcessor)
    ph = adapter._placeholder()
    texts = [f"{ph}{ph}a b", f"{ph}c", f"{ph}{ph}{ph}d"]
    batch = [[images[0], images[1]], [images[2]], [images[3], images[0], images[2]]]
    got = proc(text=texts, images=batch, return_tensors="pt", padding=True)
    misses = adapter._cache.misses
    again = proc(text=texts, images=batch, return_tensors="pt", padding=True)
    assert adapter._cache.misses == misses  # all from the cache the second time
    proc.image_processor = proc.image_processor._inner
    want = proc(text=texts, images=batch, return_tensors="pt", padding=True)
    assert set(got) == set(want) == set(again)
    for k in want:
        for out in (got, again):
            same = torch.equal(out[k], want[k]) if isinstance(want[k], torch.Tensor) else out[k] == want[k]
            assert same, k


def test_image_size_and_processor_args_reach_the_processor(hf_dirs):
    from harness.errors import HarnessError
    from harness.data.media import load_image
    from models.hf import HF

    import easy_vqa

    image = load_image(easy_vqa.get_test_image_paths()[0])  # 64 x 64

    def n_tokens(family, **options):
        adapter = HF({"path": str(hf_dirs[family]), **options})
        out = adapter.processor(text=[adapter._placeholder() + "hi"], images=[[image]], return_tensors="pt")
        return out["input_ids"].shape[1]

    assert n_tokens("qwen2_vl", image_size="32") < n_tokens("qwen2_vl")  # max_pixels 32^2: 4 tokens, not 16
    assert n_tokens("idefics3", processor_args="do_image_splitting=false") < n_tokens("idefics3")  # 1 tile, not 5
    with pytest.raises(HarnessError, match="gemma3 has a fixed image size"):
        HF({"path": str(hf_dirs["gemma3"]), "image_size": "32"})
    with pytest.raises(HarnessError, match="has no setting 'bogus'"):
        HF({"path": str(hf_dirs["idefics3"]), "processor_args": "bogus=1"})


def test_demo_chunks_carry_their_answer_for_chat_turns(hf_dirs):
    from harness.errors import HarnessError
    from harness.prompts import PromptBuilder, PromptTemplate
    from harness.types import Chunk, Example, Image, Prompt
    from models.hf import HF
    from tasks.vqa import VQA_TEMPLATES

    demo = Example("d", (Image("a.png"),), {"question": "what color?"}, target="red")
    query = Example("q", (Image("b.png"),), {"question": "what shape?"})
    for template in VQA_TEMPLATES.values():
        d, q = PromptBuilder(template).build([demo], query).chunks
        assert d.answer.strip() == "red" and d.stem + d.answer == d.text and d.stem.rstrip().lower().endswith("answer:")
        assert q.answer is None and q.stem == q.text
    # a template whose demo does not end with its answer cannot be split into turns
    odd = PromptTemplate(demo="{answer} is the answer to: {question}", query="Answer to: {question}")
    d, _ = PromptBuilder(odd).build([demo], query).chunks
    assert d.answer is None
    adapter = HF({"path": str(hf_dirs["idefics3"])})
    with pytest.raises(HarnessError, match="use prompt_format=plain"):
        adapter.render_prompt(Prompt((d, Chunk((), "Answer to: what shape?"))))


# ---- video ------------------------------------------------------------------------------------
VIDEO_LIMIT = 3
VIDEO_ARGS = ("--tasks", "msrvtt_qa", "--frames", "4", "--task-arg", "frame_size=32", "--shots", "0", "2",
              "--seeds", "0", "--limit", str(VIDEO_LIMIT))
#: (family, video_as_frames): native video for the two families that take it, and frames forced
VIDEO_MODES = [("qwen2_vl", False), ("llava_onevision", False), ("qwen2_vl", True)]


@pytest.fixture(scope="session")
def video_data(tmp_path_factory) -> Path:
    from conftest_video import write_msqa

    return write_msqa(tmp_path_factory.mktemp("video_data"), "msrvtt_qa", "video{video_id}.mp4")


@pytest.fixture(scope="session")
def video_runs(hf_dirs, video_data, tmp_path_factory):
    """MSRVTT-QA through the CLI, batch 3 and batch 1: {(family, frames): (batched, unbatched)}."""
    runs = {}
    for fam, frames in VIDEO_MODES:
        outs = []
        for batch in (VIDEO_LIMIT, 1):
            out = tmp_path_factory.mktemp(f"video_{fam}_{frames}_b{batch}")
            rc = main(["run", "-q", "--model", "hf", "--model-arg", f"path={hf_dirs[fam]}", "--model-arg",
                       f"video_as_frames={str(frames).lower()}", "--data-dir", str(video_data), *VIDEO_ARGS,
                       "--batch-size", str(batch), "--output", str(out)])
            assert rc == 0, f"{fam} frames={frames} batch {batch}: exit {rc}"
            outs.append(out)
        runs[fam, frames] = tuple(outs)
    return runs


def _video_predictions(out: Path, shots: int) -> dict[str, dict]:
    (path,) = out.glob(f"*/msrvtt_qa/{shots}shot_seed0/predictions.jsonl")
    return {r["query_id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.parametrize("family,frames", VIDEO_MODES)
def test_cli_video_task_gets_videos_natively_or_as_frames(family, frames, video_runs):
    batched, unbatched = video_runs[family, frames]
    for shots in (0, 2):
        (metrics_file,) = batched.glob(f"*/msrvtt_qa/{shots}shot_seed0/metrics.json")
        metrics = json.loads(metrics_file.read_text())
        assert metrics["n"] == VIDEO_LIMIT and metrics["n_failed"] == 0
        assert metrics["config"]["model"]["video"] == ("frames" if frames else "native")
        videos = 1 if shots == 0 else 3  # zero-shot demos are text-only
        for r in _video_predictions(batched, shots).values():
            prompt = r["prompt"]
            if frames:  # each video as its 4 frames, as images
                assert prompt.count(PLACEHOLDER[family]) == 4 * videos and VIDEO[family] not in prompt, prompt
            else:
                assert prompt.count(VIDEO[family]) == videos and PLACEHOLDER[family] not in prompt, prompt
            assert prompt.count(ASSISTANT[family]) == 3
        a, b = _video_predictions(batched, shots), _video_predictions(unbatched, shots)
        assert {k: (r["prompt"], r["raw_output"]) for k, r in a.items()} == \
               {k: (r["prompt"], r["raw_output"]) for k, r in b.items()}


def test_video_generations_equal_model_generate_on_hand_built_inputs(hf_dirs, video_data):
    """Parity for native video: the adapter's output is model.generate on processor(videos=...) of the
    same chat, its videos written as {"type": "video"}."""
    import numpy as np
    import torch

    from harness.data.video import decode_frames
    from harness.prompts import PromptBuilder
    from harness.registry import get_task_class
    from harness.types import GenerateRequest, GenerationConfig
    from models.hf import HF

    adapter = HF({"path": str(hf_dirs["qwen2_vl"])})
    task = get_task_class("msrvtt_qa")(video_data, {"frames": "4", "frame_size": "32"})
    support, evals = task.support_examples(), task.eval_examples()
    demos, queries = [support[0], support[1]], evals[:2]
    builder = PromptBuilder(task.template(adapter.template_style)[1])
    cfg = GenerationConfig(max_new_tokens=4, num_beams=2, length_penalty=0.0)
    got = adapter.generate([GenerateRequest(builder.build(demos, q), cfg, q, tuple(demos)) for q in queries])

    def user(ex):
        return {"role": "user", "content": [{"type": "video"},
                                            {"type": "text", "text": f"Question: {ex.fields['question']} Answer:"}]}

    proc, model = adapter.processor, adapter.model
    texts, videos = [], []
    for q in queries:
        messages = []
        for d in demos:
            messages += [user(d), {"role": "assistant", "content": [{"type": "text", "text": d.target}]}]
        texts.append(proc.apply_chat_template(messages + [user(q)], tokenize=False, add_generation_prompt=True))
        videos += [list(decode_frames(e.media[0].path, e.media[0].selection)) for e in (*demos, q)]
    assert all(isinstance(f, np.ndarray) and f.shape == (32, 32, 3) for v in videos for f in v)
    inputs = proc(text=texts, videos=videos, return_tensors="pt", padding=True, padding_side="left")
    assert "pixel_values_videos" in inputs and "pixel_values" not in inputs
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, num_beams=2, length_penalty=0.0, do_sample=False,
                             eos_token_id=[proc.tokenizer.convert_tokens_to_ids("<|im_end|>")],
                             pad_token_id=proc.tokenizer.pad_token_id)
    want = [t.strip() for t in proc.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    assert got == want


def test_video_multiple_choice_ranks_candidates_with_native_video(hf_dirs, tmp_path, capsys):
    from conftest_video import write_nextqa

    data = write_nextqa(tmp_path / "data")
    rc, err = _run(capsys, "--model", "hf", "--model-arg", f"path={hf_dirs['llava_onevision']}", "--tasks",
                   "nextqa_mc", "--data-dir", str(data), "--frames", "4", "--task-arg", "frame_size=32",
                   "--shots", "2", "--seeds", "0", "--limit", "2", "--output", str(tmp_path / "out"))
    assert rc == 0, err
    (path,) = (tmp_path / "out").glob("*/nextqa_mc/2shot_seed0/predictions.jsonl")
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert len(r["candidate_logprobs"]) == 5 and all(v < 0 for v in r["candidate_logprobs"].values())
        assert r["prompt"].count(VIDEO["llava_onevision"]) == 3 and "<image>" not in r["prompt"]


# ---- vision-feature cache ---------------------------------------------------------------------
@pytest.mark.parametrize("family", FEATURES)
def test_cached_vision_features_give_the_uncached_outputs(family, hf_dirs):
    """Generations (beam search, batched) and log-likelihoods with per-image cached features equal
    those of the model encoding the pixels itself; each distinct image is encoded once, and a budget
    too small for them all evicts and still gives the same outputs."""
    from harness.prompts import PromptBuilder
    from harness.registry import get_task_class
    from harness.types import GenerateRequest, GenerationConfig, LoglikelihoodRequest
    from models.hf import HF

    task = get_task_class("easyvqa")()
    support, evals = task.support_examples(), task.eval_examples()
    # distinct images: easy-VQA asks several questions per image
    demos = list({e.media[0].identity: e for e in support[:60]}.values())[:4]
    queries = list({e.media[0].identity: e for e in evals[:60]}.values())[:3]
    cfg = GenerationConfig(max_new_tokens=4, num_beams=3, length_penalty=0.0)

    def outputs(feature_cache_mb: str):
        adapter = HF({"path": str(hf_dirs[family]), "feature_cache_mb": feature_cache_mb})
        builder = PromptBuilder(task.template(adapter.template_style)[1])
        reqs = [GenerateRequest(builder.build(demos[i:i + 2], q), cfg, q) for i, q in enumerate(queries)]
        gen = adapter.generate(reqs) + adapter.generate(reqs[::-1])
        ll = adapter.loglikelihood([LoglikelihoodRequest(reqs[0].prompt, c, queries[0]) for c in (" yes", " red")])
        return gen, ll, adapter.stats()

    plain, cached, tight = outputs("0"), outputs("64"), outputs("0.0001")
    assert "vision_encodes" not in plain[2]
    assert cached[:2] == plain[:2] and tight[:2] == plain[:2]
    n_images = len({m.identity for r in demos[:4] + queries for m in r.media})
    assert cached[2]["vision_encodes"] == n_images and cached[2]["feature_cache_hits"] > 0
    assert tight[2]["feature_cache_evictions"] > 0 and tight[2]["vision_encodes"] > n_images


def test_grouped_calls_once_per_key_and_keeps_order():
    """The one grouping rule (by generation config, by shared prompt): one call per key, first seen
    first, each result back at its item's place."""
    from harness.model import grouped

    calls = []

    def call(key, members):
        calls.append((key, members))
        return [f"{key}:{m}" for m in members]

    assert grouped(["a1", "b1", "a2", "c1", "b2"], lambda s: s[0], call) == ["a:a1", "b:b1", "a:a2", "c:c1", "b:b2"]
    assert calls == [("a", ["a1", "a2"]), ("b", ["b1", "b2"]), ("c", ["c1"])]
    with pytest.raises(RuntimeError, match="1 results for a group of 2"):
        grouped(["a1", "a2"], lambda s: s[0], lambda k, m: ["x"])


@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_a_batch_of_mixed_generation_configs_gives_each_request_its_own(family, hf_dirs, tmp_path):
    """generate() on requests with different GenerationConfigs: each output is what its own config gives
    alone (before, the hf adapter applied the first request's config to the whole batch)."""
    from harness.evaluation.runner import CellSpec, Runner
    from harness.prompts import PromptBuilder
    from harness.registry import get_model_class, get_task_class
    from harness.types import GenerateRequest, GenerationConfig

    model = get_model_class("hf")({"path": str(hf_dirs[family])})
    plan = Runner(model, tmp_path, progress=False).plan(get_task_class("easyvqa")(None, {}),
                                                        CellSpec(shots=2, seed=0, limit=4))
    builder = PromptBuilder(plan.template)
    prompts = [builder.build(plan.sampler.demos(q, 2), q, False) for q in plan.queries]
    short, long = GenerationConfig(max_new_tokens=1, num_beams=1), GenerationConfig(max_new_tokens=8, num_beams=2)
    configs = [short, long, short, long]
    requests = [GenerateRequest(p, c, q, ()) for p, c, q in zip(prompts, configs, plan.queries)]
    mixed = model.generate(requests)
    alone = [model.generate([r])[0] for r in requests]
    assert mixed == alone
    # the two configs really give different outputs here, so the test can tell them apart
    assert model.generate([GenerateRequest(prompts[0], long, plan.queries[0], ())]) != [mixed[0]]
