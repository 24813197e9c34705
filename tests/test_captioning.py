"""Captioning: COCO / Flickr30k Karpathy tasks and pycocoevalcap metrics (real Java, real scorers, real CLI)."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from conftest_captioning import CAPTIONS, write_karpathy_fixture  # noqa: E402
from harness.errors import DataError, HarnessError  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from harness.metrics.caption import _package_dir, ptb_tokenize, score_captions  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="captioning metrics need Java")

METRIC_KEYS = ["CIDEr", "BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "ROUGE_L"]

#: Candidates covering what models produce: exact references, paraphrases, case, quotes,
#: punctuation-only, empty, a line break, repeated words, non-ASCII.
CANDIDATES = [
    "A woman in a space suit smiling at the camera.",
    "a cat with green eyes sitting on a table",
    'A "cup" of coffee on a wooden table!',
    "",
    "A MAN WITH A CAMERA, standing outside.",
    "...",
    "a rocket\nnext to a tower",
    "a a a a a a cat cat",
    "Café au lait in a white cup — naïve art.",
    "coins coins on a table",
    "an astronaut",
    "A photographer with a tripod in a field of grass near some trees.",
]


def fixture_refs_and_cands() -> tuple[dict[str, list[str]], dict[str, str]]:
    refs = {str(7000 + i): CAPTIONS[i % len(CAPTIONS)] for i in range(len(CANDIDATES))}
    cands = {k: c for k, c in zip(refs, CANDIDATES)}
    return refs, cands


@pytest.fixture(scope="module")
def cap_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("capdata")
    write_karpathy_fixture(root, "coco")
    write_karpathy_fixture(root, "flickr30k")
    return root


# ---- metrics ---------------------------------------------------------------------------
def test_scores_equal_cocoevalcap(monkeypatch):
    """Our scores equal COCOEvalCap.evaluate() (its SPICE stood down: it needs a download) to 1e-9."""
    import pycocoevalcap.eval as cocoeval

    class NoSpice:  # evaluate() builds its scorer list inline; SPICE is the one part that cannot run offline
        def method(self):
            return "SPICE"

        def compute_score(self, gts, res):
            return float("nan"), [float("nan")] * len(gts)

    class Captions:  # the two members COCOEvalCap reads from a pycocotools COCO object
        def __init__(self, table):
            self.imgToAnns = {int(k): [{"image_id": int(k), "caption": c} for c in v] for k, v in table.items()}

        def getImgIds(self):
            return list(self.imgToAnns)

    monkeypatch.setattr(cocoeval, "Spice", NoSpice)
    refs, cands = fixture_refs_and_cands()
    ref_eval = cocoeval.COCOEvalCap(Captions(refs), Captions({k: [v] for k, v in cands.items()}))
    ref_eval.evaluate()

    ours = score_captions(refs, cands, ["cider", "bleu", "rouge", "meteor"])
    names = {"CIDEr": "CIDEr", "ROUGE_L": "ROUGE_L", "METEOR": "METEOR",
             **{f"BLEU_{n}": f"Bleu_{n}" for n in range(1, 5)}}
    for ours_name, theirs in names.items():
        assert ours.corpus[ours_name] / 100 == pytest.approx(ref_eval.eval[theirs], abs=1e-9), ours_name
        for k in refs:
            assert ours.per_image[k][ours_name] / 100 == pytest.approx(ref_eval.imgToEval[int(k)][theirs], abs=1e-9)
    assert 0 < ours.corpus["CIDEr"] < 1000 and ours.per_image["7003"]["CIDEr"] == 0.0  # the empty caption
    assert ours.notes["SPICE"].startswith("unavailable")


def test_tokenizer_keeps_lines_aligned_and_utf8():
    """A line break inside a caption must not shift later captions; non-ASCII text survives."""
    out = ptb_tokenize(["A dog.\nA cat!", "", "Café \u2028au lait, naïve.", "Last ONE"])
    assert out == ["a dog a cat", "", "café au lait naïve", "last one"]


def test_cider_subset_uses_subset_document_frequencies():
    """Documented pycocoevalcap behaviour: a subset's CIDEr is not the mean of its full-set per-image CIDErs."""
    refs, cands = fixture_refs_and_cands()
    full = score_captions(refs, cands, ["cider"])
    subset = list(refs)[:4]
    part = score_captions({k: refs[k] for k in subset}, {k: cands[k] for k in subset}, ["cider"])
    mean_of_full = sum(full.per_image[k]["CIDEr"] for k in subset) / len(subset)
    assert abs(part.corpus["CIDEr"] - mean_of_full) > 1.0


def test_metric_errors():
    refs, cands = fixture_refs_and_cands()
    with pytest.raises(HarnessError, match="unknown captioning metric.*bleurt.*choose from"):
        score_captions(refs, cands, ["cider", "bleurt"])
    with pytest.raises(HarnessError, match="different images"):
        score_captions(refs, {**cands, "999": "x"})
    with pytest.raises(HarnessError, match="no reference caption"):
        score_captions({**refs, "7000": []}, cands)


def _private_dir() -> Path:
    """A temp dir another user can read (pytest's tmp_path is private to its owner)."""
    d = Path(tempfile.mkdtemp(prefix="caption-ro-"))
    d.chmod(0o755)
    return d


@pytest.mark.slow
def test_scoring_with_read_only_package_and_concurrent_runs():
    """Two scorings at once from a read-only copy of pycocoevalcap: both succeed, agree, and write nothing there."""
    refs, cands = fixture_refs_and_cands()
    expected = score_captions(refs, cands).corpus
    base = _private_dir()
    try:
        pkg = base / "site" / "pycocoevalcap"
        for sub in ("tokenizer", "bleu", "cider", "rouge"):
            shutil.copytree(_package_dir(sub), pkg / sub, ignore=shutil.ignore_patterns("__pycache__"))
        (base / "fixture.json").write_text(json.dumps([refs, cands]))
        for p in [pkg, *pkg.rglob("*")]:
            p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        before = sorted(p.relative_to(pkg) for p in pkg.rglob("*"))
        code = ("import json,sys; from harness.metrics.caption import _package_dir, score_captions; "
                "refs, cands = json.load(open(sys.argv[1])); "
                "print(json.dumps([str(_package_dir('tokenizer')), score_captions(refs, cands).corpus]))")
        # root ignores file modes: run as nobody there, so the folder really is read-only to the scorer.
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        env = {**os.environ, "PYTHONPATH": f"{base / 'site'}:{ROOT}", "HOME": str(base),
               "PYTHONDONTWRITEBYTECODE": "1"}
        procs = [subprocess.Popen([*as_user, sys.executable, "-c", code, str(base / "fixture.json")], cwd=base,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate() for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err
            used, corpus = json.loads(out)
            assert Path(used) == (pkg / "tokenizer").resolve()
            assert corpus == pytest.approx(expected, abs=1e-12)
        assert sorted(p.relative_to(pkg) for p in pkg.rglob("*")) == before
    finally:
        for p in [base, *base.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(base)


# ---- tasks and data ---------------------------------------------------------------------
def test_karpathy_loading(cap_root):
    from tasks.captioning import COCOCaptions, Flickr30kCaptions

    coco = COCOCaptions(cap_root, {"include_restval": "true"})
    test = coco.eval_examples()
    assert len(test) == 6 and all(len(e.answers) == 5 for e in test)
    assert test[0].id == str(test[0].meta["image_id"]) and Path(test[0].media[0].path).is_file()
    assert "/val2014/COCO_val2014_" in test[0].media[0].path
    assert test[0].target == test[0].answers[0]  # demos show the first reference, as OpenFlamingo
    assert coco.support_split == "train+restval" and len(coco.support_examples()) == 13
    assert len(COCOCaptions(cap_root).support_examples()) == 10
    assert len(COCOCaptions(cap_root, {"eval_split": "val"}).eval_examples()) == 3
    flickr = Flickr30kCaptions(cap_root).eval_examples()
    assert flickr[0].id == Path(flickr[0].media[0].path).stem and "/flickr30k/images/" in flickr[0].media[0].path


def test_aggregate_counts_failed_samples_and_fills_per_image_cider(cap_root):
    """A failed sample stays in n as an empty caption; aggregate writes per-image CIDEr into the records."""
    from harness.types import SampleRecord
    from tasks.captioning import COCOCaptions

    task = COCOCaptions(cap_root)
    examples = task.eval_examples()
    records = [SampleRecord(e.id, [], "", e.answers[0], e.answers[0], task.score(e.answers[0], e), task.record_fields(e))
               for e in examples]
    records[0] = SampleRecord(examples[0].id, [], "", "", "", 0.0, task.record_fields(examples[0]), error="MediaError: x")
    metrics = task.aggregate(records)
    assert metrics["n"] == len(examples) and records[0].score == 0.0 and records[1].score > 0
    assert metrics["CIDEr"] == pytest.approx(sum(r.score for r in records) / len(records), abs=1e-9)
    assert metrics["CIDEr_ci95"][0] < metrics["CIDEr"] < metrics["CIDEr_ci95"][1]


def test_data_errors(cap_root, tmp_path):
    from tasks.captioning import COCOCaptions, Flickr30kCaptions

    with pytest.raises(DataError, match=r"dataset_coco\.json.*\n.*Expected layout.*'sentences'"):
        COCOCaptions(tmp_path).eval_examples()
    bad = tmp_path / "bad"
    write_karpathy_fixture(bad, "flickr30k", {"train": 2, "test": 2})
    path = bad / "flickr30k" / "dataset_flickr30k.json"
    data = json.loads(path.read_text())
    del data["images"][3]["sentences"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[3\] has no field 'sentences'"):
        Flickr30kCaptions(bad).eval_examples()
    data["images"][3]["sentences"] = [{"tokens": ["a"]}]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[3\]\.sentences\[0\] has no field 'raw'"):
        Flickr30kCaptions(bad).eval_examples()
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        Flickr30kCaptions(bad).eval_examples()
    with pytest.raises(DataError, match="unknown split 'testing'.*restval"):
        COCOCaptions(cap_root, {"eval_split": "testing"}).eval_examples()
    with pytest.raises(HarnessError, match="unknown captioning metric"):
        COCOCaptions(cap_root, {"metrics": "cider,spcie"})
    assert COCOCaptions(cap_root, {"metrics": "bleu"}).metrics == ("cider", "bleu")  # the primary metric stays


# ---- the command line ---------------------------------------------------------------------
def _results_file(root: Path, task: str, split: str, caption_of) -> list[dict]:
    data = json.loads((root / task / f"dataset_{task}.json").read_text())
    return [{"image_id": e["cocoid"] if task == "coco" else Path(e["filename"]).stem, "caption": caption_of(i)}
            for i, e in enumerate(x for x in data["images"] if x["split"] == split)]


def test_cli_score_coco_results_format(cap_root, tmp_path):
    preds = _results_file(cap_root, "coco", "test", lambda i: CANDIDATES[i])
    (tmp_path / "preds.json").write_text(json.dumps(preds))
    out = json.loads(run_cli("score", "--task", "coco", "--predictions", str(tmp_path / "preds.json"),
                             "--data-dir", str(cap_root), "--json").stdout)
    from tasks.captioning import COCOCaptions

    examples = COCOCaptions(cap_root).eval_examples()
    expected = score_captions({e.id: list(e.answers) for e in examples},
                              {str(p["image_id"]): p["caption"] for p in preds}).corpus
    for key in METRIC_KEYS:
        assert out[key] == pytest.approx(expected[key], abs=1e-9)
    assert out["n"] == 6 and out["n_missing"] == 0 and "METEOR" not in out
    assert out["SPICE"] is None and "unavailable" in out["SPICE_note"]

    # Flickr30k: ids are file-name stems; --split val; --metrics adds METEOR.
    preds = _results_file(cap_root, "flickr30k", "val", lambda i: CANDIDATES[i])
    (tmp_path / "f.json").write_text(json.dumps(preds))
    out = json.loads(run_cli("score", "--task", "flickr30k", "--predictions", str(tmp_path / "f.json"), "--split",
                             "val", "--metrics", "cider,bleu,rouge,meteor", "--data-dir", str(cap_root), "--json").stdout)
    assert out["n"] == 3 and 0 <= out["METEOR"] <= 100 and set(METRIC_KEYS) <= set(out)


def test_cli_score_errors(cap_root, tmp_path):
    missing = run_cli("score", "--task", "coco", "--predictions", str(tmp_path / "nope.json"),
                      "--data-dir", str(cap_root), check=False)
    assert missing.returncode == 2 and "predictions file not found" in missing.stderr
    (tmp_path / "p.json").write_text(json.dumps([{"image_id": 100016, "text": "a cat"}]))
    nofield = run_cli("score", "--task", "coco", "--predictions", str(tmp_path / "p.json"),
                      "--data-dir", str(cap_root), check=False)
    assert nofield.returncode == 2 and "'caption'" in nofield.stderr
    (tmp_path / "p.json").write_text(json.dumps([{"image_id": 1, "caption": "a cat"}]))
    unknown = run_cli("score", "--task", "coco", "--predictions", str(tmp_path / "p.json"),
                      "--data-dir", str(cap_root), check=False)
    assert unknown.returncode == 2 and "not in task coco split test" in unknown.stderr

    # No java on PATH: a clear message that says what to install.
    preds = _results_file(cap_root, "coco", "test", lambda i: "a cat")
    (tmp_path / "ok.json").write_text(json.dumps(preds))
    nojava = run_cli("score", "--task", "coco", "--predictions", str(tmp_path / "ok.json"),
                     "--data-dir", str(cap_root), env={"PATH": str(tmp_path)}, check=False)
    assert nojava.returncode == 2 and "openjdk-17-jre-headless" in nojava.stderr and "Traceback" not in nojava.stderr


def test_cli_fewshot_sweep_demo_majority(cap_root, tmp_path):
    out = tmp_path / "res"
    run_cli("run", "--model", "demo-majority", "--tasks", "coco,flickr30k", "--shots", "0", "2", "--seeds", "0", "1",
            "--data-dir", str(cap_root), "--output", str(out), "-q")
    cell = out / "demo-majority" / "coco" / "2shot_seed0"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["primary_metric"] == "CIDEr" and metrics["n"] == 6
    assert set(METRIC_KEYS) <= set(metrics["metrics"])
    assert metrics["config"]["generation"]["max_new_tokens"] == 20 and metrics["config"]["generation"]["num_beams"] == 3
    records = [json.loads(line) for line in (cell / "predictions.jsonl").read_text().splitlines()]
    assert all(r["prompt"].count("<image>") == 3 and r["prompt"].endswith("<image>Output:") for r in records)
    # The journal ends with each image's CIDEr (computed over the corpus), whose mean is the corpus CIDEr.
    assert [r["score"] for r in records] == [r["CIDEr"] for r in records]
    assert sum(r["score"] for r in records) / len(records) == pytest.approx(metrics["metrics"]["CIDEr"], abs=1e-6)
    zero = [json.loads(line) for line in (out / "demo-majority/coco/0shot_seed0/predictions.jsonl").read_text().splitlines()]
    # Zero-shot: two text-only demos, then the query image.
    assert all(r["prompt"].count("<image>") == 1 and r["prompt"].count("<|endofchunk|>") == 2 for r in zero)
    # Re-scoring the journal with `score` reproduces the run's numbers.
    rescored = json.loads(run_cli("score", "--task", "coco", "--predictions", str(cell / "predictions.jsonl"),
                                  "--data-dir", str(cap_root), "--json").stdout)
    for key in METRIC_KEYS:
        assert rescored[key] == pytest.approx(metrics["metrics"][key], abs=1e-9)
    assert (out / "demo-majority" / "flickr30k" / "0shot_seed1" / "metrics.json").is_file()


def test_cli_fewshot_tiny_idefics(cap_root, tiny_idefics_dir, tmp_path):
    out = tmp_path / "res"
    run_cli("run", "--model", "idefics", "--model-arg", f"path={tiny_idefics_dir}", "--tasks", "coco",
            "--shots", "0", "2", "--seeds", "0", "--limit", "3", "--batch-size", "3", "--data-dir", str(cap_root),
            "--output", str(out), "-q")
    cell = next((out).glob("idefics*/coco/2shot_seed0"))
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["n_failed"] == 0 and math.isfinite(metrics["metrics"]["CIDEr"])
    assert metrics["config"]["task"]["template"] == "flamingo"
    records = [json.loads(line) for line in (cell / "predictions.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith("<image>Output:") and "Output: " in r["prompt"] for r in records)
    assert all("Output" not in r["prediction"] and '"' not in r["prediction"] for r in records)
