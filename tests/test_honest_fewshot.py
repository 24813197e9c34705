"""Issue 26, honest few-shot numbers: the two-level (seeds x queries) interval, nested demos, delivered
shots and the context-length check, demo/eval image overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli

from harness.metrics.stats import Z95, two_level_interval


# ---- 1. the interval of the mean over seeds, queries and demo draws both counted -----------------
def _simulate(rng: np.random.Generator, reps: int, seeds: int, queries: int, sd_seed: float, sd_query: float,
              sd_noise: float) -> np.ndarray:
    """``reps`` datasets of score = seed effect (demo draw) + query effect + noise; the true mean is 0 and
    the variance of the (seeds x queries) mean is sd_seed²/S + sd_query²/Q + sd_noise²/(SQ)."""
    return (rng.normal(0, sd_seed, (reps, seeds, 1)) + rng.normal(0, sd_query, (reps, 1, queries))
            + rng.normal(0, sd_noise, (reps, seeds, queries)))


@pytest.mark.parametrize("sd_seed", [0.0, 0.05])
def test_two_level_interval_covers_the_true_mean_95_percent(sd_seed):
    reps, n_s, n_q = 300, 3, 200
    data = _simulate(np.random.default_rng(7), reps, n_s, n_q, sd_seed, 0.3, 0.3)
    hits = 0
    for r in range(reps):
        res = two_level_interval(data[r], scale=1.0, n_boot=400, seed=r)
        hits += res.ci_low <= 0.0 <= res.ci_high
    # binomial sd of the coverage at 300 reps is 1.3 points: 0.92-0.99 is 95% within ~2.5 sd (mildly conservative)
    assert 0.92 <= hits / reps <= 0.99


def test_query_only_interval_undercovers_when_demo_draws_matter():
    """The reason for the two-level interval: an interval over queries alone (seeds averaged per query)
    misses the demo-draw variance and covers far less than 95% when that variance is real."""
    reps, n_s, n_q = 300, 3, 200
    data = _simulate(np.random.default_rng(8), reps, n_s, n_q, 0.05, 0.3, 0.3)
    per_query = data.mean(axis=1)  # (reps, Q)
    half = Z95 * per_query.std(axis=1, ddof=1) / np.sqrt(n_q)
    query_only = np.mean(np.abs(per_query.mean(axis=1)) <= half)
    intervals = [two_level_interval(d, scale=1.0, n_boot=400, seed=i) for i, d in enumerate(data)]
    both = np.mean([r.ci_low <= 0.0 <= r.ci_high for r in intervals])
    assert query_only < 0.85 < 0.92 <= both


def test_two_level_interval_is_reproducible_and_scaled():
    x = np.random.default_rng(0).integers(0, 2, size=(3, 50)).astype(float)
    a, b = two_level_interval(x, seed=3), two_level_interval(x, seed=3)
    assert a == b and a.mean == pytest.approx(100 * x.mean()) and a.ci_low < a.mean < a.ci_high
    assert a.n_seeds == 3 and a.n_queries == 50 and a.var_seeds >= 0 and a.var_queries > 0
    with pytest.raises(ValueError):
        two_level_interval(np.zeros(5))


@pytest.fixture(scope="module")
def easyvqa_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("honest") / "res"
    run_cli("run", "--model", "support-prior", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0", "1", "2",
            "--limit", "40", "--output", str(out), "-q")
    return out


def test_summary_and_compare_show_the_two_level_interval(easyvqa_run):
    (summary,) = easyvqa_run.glob("*/summary.json")
    rows = json.loads(summary.read_text())
    assert len(rows) == 2
    for row in rows:
        lo, hi = row["ci95_seeds_queries"]
        assert lo <= row["mean"] <= hi and row["ci95_seeds_queries_note"].startswith("two-level bootstrap")
        assert row["se_queries"] > 0
    out = run_cli("compare", str(easyvqa_run), "--spread", "ci-demos").stdout
    assert "queries AND demonstration draws" in out
    cells = [line for line in out.splitlines() if line.startswith("| easyvqa | accuracy |")]
    (line,) = cells
    row0 = next(r for r in rows if r["shots"] == 0)
    lo, hi = row0["ci95_seeds_queries"]
    assert f"{row0['mean']:.2f} [{lo:.2f}, {hi:.2f}] n=40" in line  # the table shows summary.json's interval
    from harness.reporting.tidy import tidy

    df = tidy([easyvqa_run])
    assert (df["ci_demos_high"] - df["ci_demos_low"] > 0).all()


# ---- 2. nested demos ----------------------------------------------------------------------------
def _examples(n: int, prefix: str = "s", target=lambda i: str(i % 3)):
    from harness.types import Example

    return [Example(f"{prefix}{i}", (), {"question": "q"}, (target(i),), target(i)) for i in range(n)]


@pytest.mark.parametrize("balanced", [False, True])
def test_nested_demos_are_prefixes_of_the_largest_draw(balanced):
    from harness.balanced_sampling import ClassBalancedSampler
    from harness.sampling import RandomSampler

    cls = ClassBalancedSampler if balanced else RandomSampler
    support, queries = _examples(200), _examples(30, "q") + _examples(5)  # 5 queries are also in the support
    for seed in (0, 1):
        nested = cls("t", support, seed, 100, nested_shots=16)
        flat = cls("t", support, seed, 100)
        for q in queries:
            largest = nested.demos(q, 16)
            assert len(largest) == 16 and q.id not in [d.id for d in largest]
            for k in (1, 2, 4, 8):
                assert nested.demos(q, k) == largest[:k]
        # the default is unchanged: independent draws per shot count (the old draw, exactly)
        assert flat.demos(queries[0], 4) != flat.demos(queries[0], 8)[:4]
        assert flat.demos(queries[0], 4) == cls("t", support, seed, 100).draw(queries[0], 4)
    with pytest.raises(Exception, match="nested_shots=16"):
        cls("t", support, 0, 100, nested_shots=16).demos(queries[0], 32)


@pytest.fixture(scope="module")
def nested_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nested")
    common = ("--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "2", "4", "--seeds", "0", "1",
              "--limit", "60", "-q")
    run_cli("run", *common, "--task-arg", "nested_shots=4", "--output", str(root / "nested"))
    run_cli("run", *common, "--output", str(root / "flat"))
    return root / "nested", root / "flat"


def _demo_ids(out: Path, shots: int, seed: int) -> dict[str, list[str]]:
    (f,) = out.glob(f"*/easyvqa/{shots}shot_seed{seed}/predictions.jsonl")
    return {r["query_id"]: r["demo_ids"] for r in map(json.loads, f.read_text().splitlines())}


def test_nested_run_records_the_option_and_pairs_shot_counts(nested_runs):
    nested, flat = nested_runs
    for seed in (0, 1):
        four = _demo_ids(nested, 4, seed)
        for shots in (0, 2):  # the 0-shot text demos are the first 2 of the same draw
            assert all(four[q][: len(d)] == d and len(d) == 2 for q, d in _demo_ids(nested, shots, seed).items())
    (m,) = nested.glob("*/easyvqa/2shot_seed0/metrics.json")
    cfg = json.loads(m.read_text())["config"]
    assert cfg["task"]["options"]["nested_shots"] == 4 and cfg["sampler"]["nested_shots"] == 4
    (m,) = flat.glob("*/easyvqa/2shot_seed0/metrics.json")
    cfg = json.loads(m.read_text())["config"]  # default: identity as before the option existed
    assert "nested_shots" not in cfg["task"]["options"] and "nested_shots" not in cfg["sampler"]

    out = run_cli("compare", str(nested), "--baseline-shots", "0").stdout
    assert "Paired differences vs 0 shots of the same checkpoint" in out
    from harness.reporting.paired import paired_compare

    df = paired_compare([nested], None, baseline_shots=0)
    assert list(df["shots"]) == [2, 4] and (df["seeds"] == 2).all() and (df["n"] == 60).all()
    assert df["p"].notna().all() and (df["ci_low"] <= df["delta"]).all() and (df["delta"] <= df["ci_high"]).all()
    assert df["note"].eq("").all()
    # independent draws: 4 shots are refused, with the fix; 2 shots happen to be the 0-shot text demos' own
    # draw (both draw 2 demos under the same key), which is nested, so that row is tested
    flat_df = paired_compare([flat], None, baseline_shots=0).set_index("shots")
    assert np.isnan(flat_df.loc[4, "p"]) and "nested_shots=N" in flat_df.loc[4, "note"]
    assert not np.isnan(flat_df.loc[2, "p"])


def test_shots_above_nested_shots_are_refused_before_any_model_loads(tmp_path):
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "8", "--seeds", "0",
                   "--limit", "5", "--task-arg", "nested_shots=4", "--output", str(tmp_path / "r"), "-q", check=False)
    assert proc.returncode != 0 and "nested_shots=8" in proc.stderr and "Traceback" not in proc.stderr


# ---- 3. delivered shots and the context-length check ---------------------------------------------
@pytest.fixture(scope="module")
def short_context_qwen(tmp_path_factory) -> Path:
    """A tiny Qwen2-VL whose context is 200 tokens: easyvqa's 0-shot prompts fit (<= 174 + 5 to generate),
    its 2-shot prompts (194-210 + 5) do not all fit."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hf_tiny import build_tiny_hf

    d = build_tiny_hf("qwen2_vl", tmp_path_factory.mktemp("qwen") / "m")
    cfg = json.loads((d / "config.json").read_text())

    def shrink(obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "max_position_embeddings":
                    obj[k] = 200
                else:
                    shrink(v)

    shrink(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _hf_run(model_dir: Path, out: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    from harness.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["run", "-q", "--model", "hf", "--model-arg", f"path={model_dir}", "--tasks", "easyvqa",
                   "--shots", "0", "2", "--seeds", "0", "--limit", "3", "--output", str(out), *extra])
    return rc, err.getvalue()


def test_context_overflow_is_refused_with_the_numbers_before_any_query(short_context_qwen, tmp_path):
    rc, err = _hf_run(short_context_qwen, tmp_path / "r")
    assert rc != 0
    line = next(x for x in err.splitlines() if x.startswith("error:"))
    assert "2 shots need 215 tokens" in line and "takes 200" in line and "48 of them image tokens" in line
    assert "context_overflow=drop_front" in line
    assert not list((tmp_path / "r").rglob("predictions.jsonl"))  # not even the 0-shot cell ran


def test_drop_front_delivers_fewer_demos_and_records_them(short_context_qwen, tmp_path):
    rc, err = _hf_run(short_context_qwen, tmp_path / "r", "--task-arg", "context_overflow=drop_front")
    assert rc == 0, err
    (two,) = (tmp_path / "r").rglob("2shot_seed0/predictions.jsonl")
    records = [json.loads(x) for x in two.read_text().splitlines()]
    delivered = sorted(r["n_demos"] for r in records)
    assert delivered == [1, 1, 2]  # the two long prompts lost their first demo, the short one kept both
    for r in records:
        assert len(r["demo_ids"]) == r["n_demos"] and r["prompt_tokens"] + 5 <= 200
        assert r["image_tokens"] == 16 * (1 + r["n_demos"])  # 16 tokens per image in this tiny Qwen2-VL
    (m,) = (tmp_path / "r").rglob("2shot_seed0/metrics.json")
    assert json.loads(m.read_text())["config"]["task"]["options"]["context_overflow"] == "drop_front"
    (zero,) = (tmp_path / "r").rglob("0shot_seed0/predictions.jsonl")
    assert all(json.loads(x)["image_tokens"] == 16 for x in zero.read_text().splitlines())


# ---- 4. demo/eval image overlap -------------------------------------------------------------------
SAMPLES = ["astronaut", "camera", "coffee", "chelsea", "rocket", "immunohistochemistry", "coins", "horse", "moon",
           "page", "text", "hubble_deep_field"]


def _sample(name: str):
    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, name)()
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return Image.fromarray(arr).convert("RGB")


def test_perceptual_hashes_match_a_resized_reencoded_copy_and_not_other_pictures(tmp_path):
    from harness.data.overlap import MAX_DISTANCE, hamming, hash_image
    from harness.types import Image

    hashes = {}
    for name in SAMPLES:
        _sample(name).save(tmp_path / f"{name}.png")
        hashes[name] = hash_image(Image(str(tmp_path / f"{name}.png")))
    coffee = _sample("coffee")
    coffee.resize((coffee.width * 3 // 5, coffee.height * 3 // 5)).save(tmp_path / "copy.jpg", quality=70)
    copy = hash_image(Image(str(tmp_path / "copy.jpg")))
    assert copy.digest != hashes["coffee"].digest  # other bytes...
    assert hamming(copy.dhash, hashes["coffee"].dhash) <= MAX_DISTANCE  # ...the same picture
    assert hamming(copy.phash, hashes["coffee"].phash) <= MAX_DISTANCE
    for i, a in enumerate(SAMPLES):  # twelve different pictures: never both hashes within the threshold
        for b in SAMPLES[i + 1:]:
            assert (hamming(hashes[a].dhash, hashes[b].dhash) > MAX_DISTANCE
                    or hamming(hashes[a].phash, hashes[b].phash) > MAX_DISTANCE), (a, b)


@pytest.fixture
def overlapping_data(tmp_path) -> Path:
    """my_vqa (examples/my_task.py) with 8 train and 4 test images; train1 is test0's file copied byte for
    byte, train2 is test1 resized to 60% and re-encoded as JPEG; the other pictures all differ."""
    root = tmp_path / "data"
    images = root / "my_vqa" / "images"
    images.mkdir(parents=True)
    test_names, train_names = ["camera", "coffee", "coins", "horse"], ["astronaut", None, None, "chelsea", "rocket",
                                                                      "immunohistochemistry", "moon", "page"]
    for i, name in enumerate(test_names):
        _sample(name).save(images / f"test{i}.png")
    for i, name in enumerate(train_names):
        if i == 1:
            (images / "train1.png").write_bytes((images / "test0.png").read_bytes())
        elif i == 2:
            im = _sample("coffee")
            im.resize((im.width * 3 // 5, im.height * 3 // 5)).save(images / "train2.jpg", quality=70)
        else:
            _sample(name).save(images / f"train{i}.png")
    for split, n in (("train", 8), ("test", 4)):
        lines = [json.dumps({"id": f"{split}{i}", "image": next(f"images/{p.name}" for p in images.glob(f"{split}{i}.*")),
                             "question": "What is it?", "answers": ["thing"] * 3}) for i in range(n)]
        (root / "my_vqa" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_check_data_reports_same_bytes_and_reencoded_copies(overlapping_data):
    example = str(Path(__file__).parent.parent / "examples" / "my_task.py")
    out = run_cli("check-data", "--include", example, "--tasks", "my_vqa", "--data-dir", str(overlapping_data),
                  "-q").stdout
    assert "task my_vqa: 2 of 8 support examples show an eval image (4 distinct eval images): " \
           "near-duplicate 1, same bytes 1" in out
    assert "support train1: same bytes of eval image" in out and "test0.png" in out
    assert "support train2: near-duplicate of eval image" in out and "test1.png" in out
    assert "exclude_overlap=true" in out


def test_exclude_overlap_removes_them_from_the_support_set_and_the_identity_says_so(overlapping_data, tmp_path):
    example = str(Path(__file__).parent.parent / "examples" / "my_task.py")
    common = ("run", "--include", example, "--model", "demo-majority", "--tasks", "my_vqa", "--data-dir",
              str(overlapping_data), "--shots", "4", "--seeds", "0", "1", "-q")
    run_cli(*common, "--task-arg", "exclude_overlap=true", "--output", str(tmp_path / "ex"))
    run_cli(*common, "--output", str(tmp_path / "all"))
    used = set()
    for p in (tmp_path / "ex").rglob("predictions.jsonl"):
        used |= {d for r in map(json.loads, p.read_text().splitlines()) for d in r["demo_ids"]}
    assert used and not used & {"train1", "train2"}
    (m,) = (tmp_path / "ex").rglob("4shot_seed0/metrics.json")
    cfg = json.loads(m.read_text())["config"]
    assert cfg["task"]["options"]["exclude_overlap"] is True and cfg["task"]["overlap_excluded"] == 2
    assert cfg["sampler"]["support_size"] == 6
    (m,) = (tmp_path / "all").rglob("4shot_seed0/metrics.json")
    cfg_all = json.loads(m.read_text())["config"]
    assert "exclude_overlap" not in cfg_all["task"]["options"] and cfg_all["sampler"]["support_size"] == 8
    assert cfg["data"]["support"] != cfg_all["data"]["support"]
