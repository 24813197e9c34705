"""RICES demo retrieval with a tiny random CLIP vision model saved to disk (a real HF checkpoint folder)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from harness.errors import HarnessError
from harness.evaluation.rices import HFVisionEncoder, RicesSampler
from harness.types import Example, Image


def save_tiny_clip(directory: Path, seed: int) -> Path:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)
    CLIPVisionModel(cfg).eval().save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def clip_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_clip")
    return save_tiny_clip(base / "a", 0), save_tiny_clip(base / "b", 1)


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """Real photos (scikit-image's samples), resized: distinct images, so features differ."""
    from PIL import Image as PILImage
    from skimage import data as skdata

    folder = tmp_path_factory.mktemp("photos")
    arrays = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.cat(),
              np.stack([skdata.camera()] * 3, -1), np.stack([skdata.moon()] * 3, -1), skdata.immunohistochemistry()]
    paths = []
    for i, a in enumerate(arrays):
        p = folder / f"p{i}.png"
        PILImage.fromarray(np.asarray(a)).convert("RGB").resize((40, 40)).save(p)
        paths.append(p)
    return paths


def reference_features(clip_dir: Path, paths) -> np.ndarray:
    """The CLIP vision tower's pooled output, straight from transformers, L2-normalised."""
    import torch
    from PIL import Image as PILImage
    from transformers import AutoImageProcessor, CLIPVisionModel

    proc = AutoImageProcessor.from_pretrained(str(clip_dir))
    model = CLIPVisionModel.from_pretrained(str(clip_dir)).eval()
    with torch.inference_mode():
        pixels = proc(images=[PILImage.open(p).convert("RGB") for p in paths], return_tensors="pt")["pixel_values"]
        f = model(pixel_values=pixels).pooler_output.numpy()
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def ex(i, path) -> Example:
    return Example(f"s{i}", (Image(str(path)),), {"question": f"q{i}"}, answers=("a",), target="a")


def make(support, queries, encoder, cache, **kw) -> RicesSampler:
    return RicesSampler("toy", support, queries, encoder, "train", "val", cache, progress=False, **kw)


def test_demos_are_the_most_similar_last_and_never_the_query(clip_dirs, photos, tmp_path):
    enc = HFVisionEncoder(clip_dirs[0])
    support = [ex(i, p) for i, p in enumerate(photos)]
    queries = [support[2], Example("q", (Image(str(photos[5])),), {"question": "?"}, answers=("a",))]
    sampler = make(support, queries, enc, tmp_path)
    feats = reference_features(clip_dirs[0], photos)
    np.testing.assert_allclose(sampler.support_matrix, feats, atol=1e-5)
    for q, qi in ((queries[0], 2), (queries[1], 5)):
        sims = feats @ feats[qi]
        expected = [i for i in np.argsort(-sims, kind="stable") if f"s{i}" != q.id][:4]
        demos = sampler.demos(q, 4)
        assert [d.id for d in demos] == [f"s{i}" for i in reversed(expected)]  # most similar LAST
        assert q.id not in [d.id for d in demos]  # s2 is its own best match, yet never its demo
        got_sims = [float(feats[int(d.id[1:])] @ feats[qi]) for d in demos]
        assert got_sims == sorted(got_sims)
    # the query without a same-id twin: its own image (s5) is the most similar, so it comes last
    assert sampler.demos(queries[1], 3)[-1].id == "s5"
    assert sampler.demos(queries[0], 0) == []
    with pytest.raises(HarnessError, match="support split has only 8"):
        sampler.demos(queries[0], 8)


def test_an_exact_duplicate_of_the_query_image_is_picked_first(clip_dirs, photos, tmp_path):
    copy = tmp_path / "copy_of_p3.png"
    shutil.copy(photos[3], copy)  # another file, same pixels
    support = [ex(i, p) for i, p in enumerate(photos) if i != 3] + [ex(99, copy)]
    query = Example("query", (Image(str(photos[3])),), {"question": "?"}, answers=("a",))
    sampler = make(support, [query], HFVisionEncoder(clip_dirs[0]), tmp_path / "cache")
    assert sampler.demos(query, 5)[-1].id == "s99"


def test_features_are_cached_and_invalidated(clip_dirs, photos, tmp_path):
    cache = tmp_path / "cache"
    support = [ex(i, p) for i, p in enumerate(photos[:6])]
    queries = [ex(100 + i, p) for i, p in enumerate(photos[6:])]
    enc_a = HFVisionEncoder(clip_dirs[0])
    first = make(support, queries, enc_a, cache, batch_size=4)
    assert not first.from_cache and all(p.is_file() for p in first.cache_files)
    # Reused: same encoder and data, another batch size and a fresh encoder object.
    again = make(support, queries, HFVisionEncoder(clip_dirs[0]), cache, batch_size=1)
    assert again.from_cache and again.cache_files == first.cache_files
    assert again.encoder.model is None  # every feature came from the cache: the weights never loaded
    assert [d.id for d in again.demos(queries[0], 3)] == [d.id for d in first.demos(queries[0], 3)]
    # Another encoder never reuses them.
    other = make(support, queries, HFVisionEncoder(clip_dirs[1]), cache)
    assert not other.from_cache and set(other.cache_files).isdisjoint(first.cache_files)
    assert not np.allclose(other.support_matrix, first.support_matrix)
    # Other data (a support image rewritten in place) is recomputed, not reused.
    moved = tmp_path / "p0.png"
    shutil.copy(photos[1], moved)
    changed = [ex(0, moved)] + support[1:]
    fresh = make(changed, queries, enc_a, cache)
    assert not fresh.from_cache
    os.utime(moved, ns=(1, 1))
    assert not make(changed, queries, enc_a, cache).from_cache  # same path, other mtime: recomputed
    # encoder a: support + queries; encoder b: both again; two changed supports (the queries reused)
    assert len(list(cache.glob("*.npy"))) == 6


def test_demos_do_not_depend_on_which_queries_are_batched_together(clip_dirs, photos, tmp_path):
    support = [ex(i, p) for i, p in enumerate(photos)]
    enc = HFVisionEncoder(clip_dirs[0])
    whole = make(support, support, enc, tmp_path)
    for q in support[:4]:
        alone = make(support, [q], enc, tmp_path)
        assert [d.id for d in alone.demos(q, 3)] == [d.id for d in whole.demos(q, 3)]


def test_cli_rices_run_records_the_sampler_and_keeps_random_apart(clip_dirs, vqa_root, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(vqa_root), "--shots", "2",
              "--seeds", "0", "--output", str(out), "-q"]
    run_cli(*common, "--label", "random")
    run_cli(*common, "--label", "rices", "--task-arg", "sampler=rices", "--task-arg", f"rices_encoder={clip_dirs[0]}",
            "--task-arg", f"rices_cache={cache}")
    rnd = json.loads((out / "random/vqav2/2shot_seed0/metrics.json").read_text())
    ric = json.loads((out / "rices/vqav2/2shot_seed0/metrics.json").read_text())
    assert rnd["config"]["sampler"]["name"] == "random"
    assert ric["config"]["sampler"]["name"] == "rices"
    assert ric["config"]["sampler"]["encoder"]["path"] == str(clip_dirs[0])
    assert ric["config"]["sampler"]["encoder"]["fingerprint"].startswith("hf-")
    assert {k: v for k, v in rnd["config"].items() if k not in ("label", "sampler", "task")} == \
           {k: v for k, v in ric["config"].items() if k not in ("label", "sampler", "task")}
    assert rnd["config_key"] != ric["config_key"]
    assert len(list(cache.glob("*.npy"))) == 2
    recs = [json.loads(x) for x in (out / "rices/vqav2/2shot_seed0/predictions.jsonl").read_text().splitlines()]
    # The fixture's train and val photos repeat every 4 questions: the same photo is retrieved last.
    photo = {f"{1000 + i}": i % 4 for i in range(12)} | {f"{1012 + i}": i % 4 for i in range(6)}
    assert all(photo[r["demo_ids"][-1]] == photo[r["query_id"]] for r in recs)
    assert all("<|endofchunk|>\n<image>" in r["prompt"] for r in recs)  # the openflamingo template's separator


def test_bad_rices_settings_fail_before_any_model_loads(vqa_root, tmp_path):
    base = ["run", "--tasks", "vqav2", "--data-dir", str(vqa_root), "--shots", "2", "--seeds", "0",
            "--output", str(tmp_path / "o"), "-q"]
    proc = run_cli(*base, "--model", "demo-majority", "--task-arg", "sampler=rices", check=False)
    assert proc.returncode == 2 and "needs rices_encoder=PATH" in proc.stderr
    proc = run_cli(*base, "--model", "demo-majority", "--task-arg", "sampler=rices",
                   "--task-arg", f"rices_encoder={tmp_path}", check=False)
    assert proc.returncode == 2 and "not a Hugging Face model folder" in proc.stderr
    proc = run_cli(*base, "--model", "demo-majority", "--task-arg", "sampler=rices",
                   "--task-arg", "rices_encoder=model", check=False)
    assert proc.returncode == 2 and "offers no vision encoder" in proc.stderr and "loading model" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sample_draws_a_seeded_subset_per_seed(vqa_root, tmp_path):
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(vqa_root), "--shots", "2",
            "--seeds", "0", "1", "2", "--sample", "3", "--output", str(out), "-q")
    ids = []
    for seed in (0, 1, 2):
        m = json.loads((out / f"demo-majority/vqav2/2shot_seed{seed}/metrics.json").read_text())
        assert m["config"]["sample"] == 3 and m["n"] == 3
        ids.append([json.loads(x)["query_id"]
                    for x in (out / f"demo-majority/vqav2/2shot_seed{seed}/predictions.jsonl").read_text().splitlines()])
    assert len({tuple(sorted(i)) for i in ids}) > 1  # a different subset per seed
    from harness.registry import get_task_class
    from harness.evaluation.runner import select_queries

    task = get_task_class("vqav2")(vqa_root, {})
    assert sorted(q.id for q in select_queries(task, None, 3, 1)) == sorted(ids[1])  # a pure function of the seed
    assert [q.id for q in select_queries(task, 4, 10, 0)] == [q.id for q in select_queries(task, 4, None, 0)]
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(vqa_root),
                   "--sample", "0", "--output", str(out), check=False)
    assert proc.returncode == 2 and "--sample must be positive" in proc.stderr


def test_a_sweep_plans_each_cell_once_and_loads_rices_features_once_per_task(clip_dirs, vqa_root, tmp_path,
                                                                            monkeypatch):
    """The conflict check and the run share each cell's plan, and cells with the same queries share
    the RICES sampler: a 2-shot-counts x 2-seeds sweep plans 4 cells and reads the features once."""
    from harness.cli import main
    from harness.evaluation import rices, runner

    calls = {"plan": 0, "features": 0}
    plan, features = runner.Runner.plan, rices.media_features

    def counted_plan(self, *a, **k):
        calls["plan"] += 1
        return plan(self, *a, **k)

    def counted_features(*a, **k):
        calls["features"] += 1
        return features(*a, **k)

    monkeypatch.setattr(runner.Runner, "plan", counted_plan)
    monkeypatch.setattr(rices, "media_features", counted_features)
    args = ["run", "--model", "demo-majority", "--tasks", "vqav2", "--data-dir", str(vqa_root), "--shots", "1", "2",
            "--seeds", "0", "1", "--limit", "4", "--task-arg", "sampler=rices", "--task-arg",
            f"rices_encoder={clip_dirs[0]}", "--task-arg", f"rices_cache={tmp_path / 'cache'}",
            "--output", str(tmp_path / "out"), "-q"]
    assert main(args) == 0
    assert calls == {"plan": 4, "features": 2}  # support and query features, once
    assert len(list((tmp_path / "out").rglob("metrics.json"))) == 4
