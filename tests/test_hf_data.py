"""Tasks read Hugging Face datasets (save_to_disk, parquet, the local hub cache) exactly as their files.

The datasets are built here in the lmms-lab schemas from the same questions, answers and photos as
the official-format fixtures, and the real CLI runs on both (demo-majority: no weights needed).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from harness.data import hf_data
from harness.errors import DataError, HarnessError
from harness.data.media import load_image
from harness.registry import get_task_class
from harness.plugins import load_builtins
from tests.conftest import ROOT, run_cli, write_vqa_fixture

datasets = pytest.importorskip("datasets")

VQA_FEATURES = {
    "question_type": datasets.Value("string"), "multiple_choice_answer": datasets.Value("string"),
    "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                 "answer_id": datasets.Value("int64")}],
    "image_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
    "question_id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image(),
}


def vqa_split_from_files(task_dir: Path, split: str, string_answers: bool = False):
    """One split of the official VQAv2 files as a Dataset in the lmms-lab/VQAv2 schema, in question order,
    the images embedded as bytes (OK-VQA's schema when ``string_answers``)."""
    questions = json.loads((task_dir / f"v2_OpenEnded_mscoco_{split}_questions.json").read_text())["questions"]
    anns = {a["question_id"]: a for a in
            json.loads((task_dir / f"v2_mscoco_{split}_annotations.json").read_text())["annotations"]}
    cols: dict[str, list] = {k: [] for k in VQA_FEATURES}
    for q in questions:
        a = anns[q["question_id"]]
        for k in ("question_type", "multiple_choice_answer", "answer_type"):
            cols[k].append(a[k])
        cols["answers"].append([x["answer"] for x in a["answers"]] if string_answers else a["answers"])
        for k in ("image_id", "question_id", "question"):
            cols[k].append(q[k])
        image = task_dir / split / f"COCO_{split}_{q['image_id']:012d}.jpg"
        cols["image"].append({"bytes": image.read_bytes(), "path": None})
    features = dict(VQA_FEATURES)
    if string_answers:
        features["answers"] = datasets.Sequence(datasets.Value("string"))
    return datasets.Dataset.from_dict(cols, features=datasets.Features(features))


@pytest.fixture(scope="session")
def hf_vqa(tmp_path_factory) -> dict[str, Path]:
    """Official files under files/vqav2, and the same data as a save_to_disk DatasetDict and as parquet shards."""
    base = tmp_path_factory.mktemp("hf_vqa")
    files = write_vqa_fixture(base / "files", "vqav2", n_train=12, n_val=8)
    dd = datasets.DatasetDict({"train": vqa_split_from_files(files / "vqav2", "train2014"),
                               "validation": vqa_split_from_files(files / "vqav2", "val2014")})
    dd.save_to_disk(str(base / "saved"))
    for name, ds in dd.items():  # the hub layout: data/<split>-00000-of-00001.parquet
        (base / "parquet" / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(base / "parquet" / "data" / f"{name}-00000-of-00001.parquet"))
    return {"files": files, "saved": base / "saved", "parquet": base / "parquet", "base": base}


@pytest.fixture(scope="session")
def hf_env(tmp_path_factory) -> dict[str, str]:
    """Empty private caches: nothing from the machine's caches, parquet conversions kept out of $HOME."""
    d = tmp_path_factory.mktemp("hf_caches")
    return {"HF_DATASETS_CACHE": str(d / "datasets"), "HF_HUB_CACHE": str(d / "hub"), "HF_HOME": str(d / "home")}


@pytest.fixture(autouse=True)
def _private_datasets_cache(hf_env, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(hf_env["HF_DATASETS_CACHE"]))


def only(out: Path, name: str) -> Path:
    found = sorted(out.rglob(name))
    assert len(found) == 1, found
    return found[0]


def run_vqa(out: Path, data: Path, env: dict, *task_args: str, shots: str = "2") -> tuple[dict, list[dict]]:
    args = ["run", "--model", "demo-majority", "--tasks", "vqav2", "--shots", shots, "--seeds", "0",
            "--output", str(out), "--data-dir", str(data), "-q"]
    for a in task_args:
        args += ["--task-arg", a]
    run_cli(*args, env=env)
    metrics = json.loads(only(out, "metrics.json").read_text())
    preds = [json.loads(line) for line in only(out, "predictions.jsonl").read_text().splitlines()]
    return metrics, preds


@pytest.fixture(scope="session")
def files_run(hf_vqa, hf_env, tmp_path_factory):
    """demo-majority, 2 shots, on the official files: the reference of the parity tests."""
    out = tmp_path_factory.mktemp("files_run")
    return (*run_vqa(out, hf_vqa["files"], hf_env), out)


# ---- parity: files vs dataset, both loading modes, and mixed sources --------------------------------
def test_cli_scores_and_demos_equal_on_files_and_datasets(hf_vqa, hf_env, files_run, tmp_path):
    files, saved, parquet = hf_vqa["files"], hf_vqa["saved"], hf_vqa["parquet"]
    ref_m, ref_p, ref_out = files_run
    runs = {
        "save_to_disk": (f"eval_source=hf:{saved}@validation", f"support_source=hf:{saved}@train"),
        "parquet": (f"eval_source=hf:{parquet}@validation", f"support_source=hf:{parquet}/data/train-*.parquet"),
        "mixed": (f"eval_source=hf:{saved}@validation",),  # demos from the train2014 files
    }
    key = lambda preds: [(p["query_id"], p["demo_ids"], p["prediction"], p["score"]) for p in preds]  # noqa: E731
    assert ref_m["metrics"]["accuracy"] > 0 and len(ref_p) == 8
    for name, task_args in runs.items():
        m, p = run_vqa(tmp_path / name, tmp_path / "nowhere" if name != "mixed" else files, hf_env, *task_args)
        assert m["metrics"]["accuracy"] == ref_m["metrics"]["accuracy"], name
        assert m["metrics"]["accuracy_by_answer_type"] == ref_m["metrics"]["accuracy_by_answer_type"], name
        assert key(p) == key(ref_p), name  # same queries, same demos, same answers
        sources = m["config"]["task"]["sources"]
        assert sources["eval"]["split"] == "validation" and len(sources["eval"]["fingerprint"]) >= 8
        assert sources["support"] == ("files" if name == "mixed" else sources["support"])
        assert sources["eval"]["kind"] == ("parquet" if name == "parquet" else "save_to_disk")
    assert ref_m["config"]["task"]["sources"] == {"eval": "files", "support": "files"}

    # `score` takes the same --task-arg and scores against the dataset
    proc = run_cli("score", "--task", "vqav2", "--task-arg", f"eval_source=hf:{saved}@validation",
                   "--predictions", str(only(ref_out, "predictions.jsonl")), "--json", env=hf_env)
    assert json.loads(proc.stdout)["accuracy"] == ref_m["metrics"]["accuracy"]


def test_a_model_that_reads_images_answers_the_same(hf_vqa, tmp_path):
    """The bundled flamingo checkpoint (it reads every image) gives the same outputs on files and parquet."""
    from harness import cli

    outs = {}
    for name, extra in {"files": [], "parquet": ["--task-arg", f"eval_source=hf:{hf_vqa['parquet']}@validation",
                                                 "--task-arg", f"support_source=hf:{hf_vqa['parquet']}@train"]}.items():
        out = tmp_path / name
        assert cli.main(["run", "--model", "flamingo", "--tasks", "vqav2", "--shots", "2", "--seeds", "0",
                         "--limit", "4", "--data-dir", str(hf_vqa["files"]), "--output", str(out), "-q", *extra]) == 0
        outs[name] = [(p["query_id"], p["demo_ids"], p["raw_output"], p["score"]) for p in
                      map(json.loads, only(out, "predictions.jsonl").read_text().splitlines())]
    assert outs["parquet"] == outs["files"] and len(outs["files"]) == 4


def test_same_examples_and_same_pixels(hf_vqa):
    load_builtins()
    files = get_task_class("vqav2")(hf_vqa["files"], {})
    hf = get_task_class("vqav2")(None, {"eval_source": f"hf:{hf_vqa['saved']}@validation",
                                        "support_source": f"hf:{hf_vqa['parquet']}@train"})
    strip = lambda ex: [(e.id, dict(e.fields), e.answers, e.target, dict(e.meta)) for e in ex]  # noqa: E731
    assert files.uses_data_dir and not hf.uses_data_dir
    assert strip(hf.eval_examples()) == strip(files.eval_examples())
    assert strip(hf.support_examples()) == strip(files.support_examples())
    for a, b in [(files.eval_examples()[5], hf.eval_examples()[5]), (files.support_examples()[7], hf.support_examples()[7])]:
        assert b.media[0].identity.startswith("hfds://") and b.media[0].kind == "image"
        assert np.array_equal(np.asarray(load_image(a.media[0])), np.asarray(load_image(b.media[0])))
        assert load_image(b.media[0].path) is load_image(b.media[0])  # the path string form, from the cache


def test_okvqa_string_answers_and_column_override(hf_vqa, tmp_path):
    load_builtins()
    ds = vqa_split_from_files(hf_vqa["files"] / "vqav2", "val2014", string_answers=True)
    ds = ds.rename_columns({"question": "q", "answers": "ans"}).remove_columns(["image_id"])
    ds.save_to_disk(str(tmp_path / "okvqa"))  # one Dataset, not a DatasetDict
    task = get_task_class("okvqa")(None, {"eval_source": f"hf:{tmp_path / 'okvqa'}@val2014",
                                          "columns": "question:q,answers:ans"})
    ref = get_task_class("vqav2")(hf_vqa["files"], {}).eval_examples()
    got = task.eval_examples()
    assert [(e.id, e.fields["question"], e.answers) for e in got] == [(e.id, e.fields["question"], e.answers) for e in ref]
    assert got[0].meta["image_id"] is None and got[0].meta["answer_type"] == ref[0].meta["answer_type"]


def test_identity_is_stable_and_follows_the_data(hf_vqa, tmp_path):
    load_builtins()
    src = {"eval_source": f"hf:{hf_vqa['parquet']}@validation"}
    a = get_task_class("vqav2")(None, src).eval_examples()
    b = get_task_class("vqav2")(None, src).eval_examples()
    assert [e.media[0].identity for e in a] == [e.media[0].identity for e in b]
    assert len({e.media[0].identity for e in a}) == len(a)
    # another copy with one answer changed: another fingerprint, so other identities and another config key
    changed = datasets.load_from_disk(str(hf_vqa["saved"]))["validation"]
    changed = changed.map(lambda r, i: {"question": r["question"] + ("!" if i == 0 else "")}, with_indices=True)
    changed.save_to_disk(str(tmp_path / "changed"))
    c = get_task_class("vqav2")(None, {"eval_source": f"hf:{tmp_path / 'changed'}"}).eval_examples(split="validation")
    assert {e.media[0].identity for e in c}.isdisjoint({e.media[0].identity for e in a})


# ---- memory: 20,000 rows, --limit 10, only the used images decoded ----------------------------------
def _tiny_png(i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), (i * 37 % 256, i * 91 % 256, i % 256), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_large_split_decodes_only_the_images_it_uses(tmp_path, monkeypatch, hf_env):
    n = 20_000
    pngs = [_tiny_png(i) for i in range(97)]
    answers = ["red", "blue", "green", "yes", "no"]

    def split(offset: int):
        return datasets.Dataset.from_dict({
            "question_id": list(range(offset, offset + n)),
            "question": [f"what color is shape {i}?" for i in range(n)],
            "answers": [[answers[i % 5]] * 10 for i in range(n)],
            "image": [{"bytes": pngs[i % 97], "path": None} for i in range(n)],
        }, features=datasets.Features({"question_id": datasets.Value("int64"), "question": datasets.Value("string"),
                                       "answers": datasets.Sequence(datasets.Value("string")),
                                       "image": datasets.Image()}))

    datasets.DatasetDict({"train": split(0), "validation": split(10**6)}).save_to_disk(str(tmp_path / "big"))
    from harness import cli

    before = hf_data.decoded_images()
    out = tmp_path / "out"
    # The bundled flamingo checkpoint reads every image of its prompts (demo-majority would read none).
    rc = cli.main(["run", "--model", "flamingo", "--tasks", "vqav2", "--shots", "2", "--seeds", "0", "--limit", "10",
                   "--task-arg", f"eval_source=hf:{tmp_path / 'big'}@validation",
                   "--task-arg", f"support_source=hf:{tmp_path / 'big'}@train", "--output", str(out), "-q"])
    assert rc == 0
    decoded = hf_data.decoded_images() - before
    preds = [json.loads(line) for line in only(out, "predictions.jsonl").read_text().splitlines()]
    used = {p["query_id"] for p in preds} | {d for p in preds for d in p["demo_ids"]}
    assert len(preds) == 10 and not any(p.get("error") for p in preds)
    assert decoded == len(used) <= 30  # 10 queries + their demos, out of 40,000 rows


# ---- errors ------------------------------------------------------------------------------------
def test_missing_column_names_dataset_column_columns_and_option(hf_vqa, hf_env, tmp_path):
    ds = datasets.load_from_disk(str(hf_vqa["saved"]))["validation"].rename_column("answers", "labels")
    ds.save_to_disk(str(tmp_path / "renamed"))
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "vqav2", "--shots", "0", "--seeds", "0",
                   "--task-arg", f"eval_source=hf:{tmp_path / 'renamed'}@validation", "--data-dir",
                   str(hf_vqa["files"]), "--output", str(tmp_path / "o"), env=hf_env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    msg = proc.stderr
    assert str(tmp_path / "renamed") in msg and "no column 'answers'" in msg and "labels" in msg
    assert "--task-arg columns=answers:COLUMN" in msg


def test_wrong_split_lists_the_splits(hf_vqa):
    load_builtins()
    for src in (hf_vqa["saved"], hf_vqa["parquet"]):
        with pytest.raises(DataError, match=r"no split 'val'; it has 'train', 'validation'"):
            get_task_class("vqav2")(None, {"eval_source": f"hf:{src}@val"}).eval_examples()


def test_bad_source_and_mapping_fail_at_construction():
    load_builtins()
    with pytest.raises(HarnessError, match="expected 'files'"):
        get_task_class("vqav2")(None, {"eval_source": "/data/vqa"})
    with pytest.raises(HarnessError, match="'caption' is not a field of this task; fields: id, image, question"):
        get_task_class("vqav2")(None, {"columns": "caption:text"})
    from harness.task import Task

    class FilesOnly(Task):
        registry_name = "files_only"

    with pytest.raises(HarnessError, match="task files_only reads its official files only"):
        FilesOnly(None, {"eval_source": "hf:x/y@test"})


def test_id_not_in_local_cache_is_a_clear_error_without_network(hf_env, monkeypatch):
    import huggingface_hub.constants as hconst

    monkeypatch.setattr(hconst, "HF_HUB_CACHE", hf_env["HF_HUB_CACHE"])
    attempts = []
    real_connect = socket.socket.connect

    def spy(self, address):  # any network connection attempt is recorded (and refused)
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", spy)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_builtins()
    task = get_task_class("vqav2")(None, {"eval_source": "hf:someone/not-cached@validation"})
    with pytest.raises(DataError) as err:
        task.eval_examples()
    monkeypatch.setattr(socket.socket, "connect", real_connect)
    msg = str(err.value)
    assert "'someone/not-cached' is not in the local Hugging Face cache" in msg
    assert "huggingface-cli download --repo-type dataset someone/not-cached" in msg
    assert attempts == []


def test_hub_snapshot_in_the_local_cache_is_found_offline(hf_vqa, hf_env, files_run, tmp_path):
    """A dataset downloaded with huggingface-cli (hub cache layout) resolves by id; the revision is recorded."""
    hub = tmp_path / "hub"
    repo = hub / "datasets--lmms-lab--VQAv2"
    sha = "d138befad7ef091aa8af15243db2f1e2b2932349"
    shutil.copytree(hf_vqa["parquet"], repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    env = {**hf_env, "HF_HUB_CACHE": str(hub)}
    m, preds = run_vqa(tmp_path / "out", hf_vqa["files"], env, "eval_source=hf:lmms-lab/VQAv2@validation")
    ref = files_run[0]
    assert m["metrics"]["accuracy"] == ref["metrics"]["accuracy"] and len(preds) == 8
    assert m["config"]["task"]["sources"]["eval"]["revision"] == sha
    assert m["config"]["task"]["sources"]["eval"]["kind"] == "hub snapshot"


# ---- the plug-in example -----------------------------------------------------------------------
def test_plugin_example_reads_a_dataset(hf_vqa, hf_env, tmp_path):
    data = tmp_path / "data"
    ds = vqa_split_from_files(hf_vqa["files"] / "vqav2", "val2014", string_answers=True)
    datasets.DatasetDict({"train": vqa_split_from_files(hf_vqa["files"] / "vqav2", "train2014", True),
                          "test": ds}).save_to_disk(str(data / "my_hf_vqa"))
    out = tmp_path / "out"
    run_cli("run", "--include", "examples/my_hf_task.py", "--model", "demo-majority", "--tasks", "my_hf_vqa",
            "--shots", "2", "--seeds", "0", "--data-dir", str(data), "--output", str(out), "-q", env=hf_env)
    m = json.loads(only(out, "metrics.json").read_text())
    assert m["n"] == 8 and m["config"]["task"]["sources"]["eval"]["kind"] == "save_to_disk"
    assert (ROOT / "examples" / "my_hf_task.py").is_file()


# ---- the other built-in tasks: same Examples from a dataset as from their files ------------------
def _strip(examples):
    return [(e.id, {k: v for k, v in e.fields.items()}, e.answers, e.target, [m.path for m in e.media])
            for e in examples]


def test_video_and_classification_tasks_read_datasets_like_their_files(tmp_path):
    import csv

    from conftest_video import write_hateful, write_ivqa, write_msqa, write_nextqa

    load_builtins()
    root = tmp_path / "data"
    write_msqa(root, "msvd_qa", "vid{video_id}.avi")
    write_ivqa(root)
    write_nextqa(root)
    write_hateful(root)
    rows = {
        "msvd_qa": json.loads((root / "msvd_qa" / "test_qa.json").read_text()),
        "ivqa": [{**r, "start": int(r["start"]), "end": int(r["end"])}
                 for r in csv.DictReader(open(root / "ivqa" / "test.csv"))],
        "nextqa_mc": [{**r, "video": int(r["video"]), "answer": int(r["answer"]), "qid": int(r["qid"])}
                      for r in csv.DictReader(open(root / "nextqa_mc" / "val.csv"))],
        "hateful_memes": [json.loads(line) for line in (root / "hateful_memes" / "dev_seen.jsonl").open()],
    }
    opts = {"ivqa": {"video_pattern": "{video_id}_{start}_{end}.mp4"},
            "hateful_memes": {"columns": "image:img"}}  # img: file paths, relative to image_dir / the data
    for name, split_rows in rows.items():
        saved = tmp_path / "hf" / name
        datasets.Dataset.from_list(split_rows).save_to_disk(str(saved))
        cls = get_task_class(name)
        files = cls(root, {k: v for k, v in opts.get(name, {}).items() if k != "columns"}).eval_examples()
        extra = {"image_dir": str(root / "hateful_memes")} if name == "hateful_memes" else {
            "video_dir": str(root / name / "videos")}
        hf = cls(None, {**opts.get(name, {}), **extra, "eval_source": f"hf:{saved}"}).eval_examples()
        assert _strip(hf) == _strip(files), name


def test_image_feature_given_by_path_reads_the_file(hf_vqa, tmp_path):
    """An Image feature may hold a path instead of bytes (save_to_disk embeds them; a parquet file written
    from the Arrow table keeps the paths); it decodes to the file's pixels."""
    import pyarrow.parquet as pq

    load_builtins()
    files = get_task_class("vqav2")(hf_vqa["files"], {}).eval_examples()
    ds = vqa_split_from_files(hf_vqa["files"] / "vqav2", "val2014").remove_columns(["image"])
    ds = ds.add_column("image", [{"bytes": None, "path": e.media[0].path} for e in files])
    ds = ds.cast_column("image", datasets.Image())
    table = ds.data.table
    assert table.column("image").combine_chunks().field("bytes").null_count == len(files)
    (tmp_path / "by_path").mkdir()
    pq.write_table(table, tmp_path / "by_path" / "val-00000-of-00001.parquet")
    got = get_task_class("vqav2")(None, {"eval_source": f"hf:{tmp_path / 'by_path'}@val"}).eval_examples()
    assert np.array_equal(np.asarray(load_image(got[4].media[0])), np.asarray(load_image(files[4].media[0])))
    raw = datasets.load_dataset("parquet", data_files=str(tmp_path / "by_path" / "*.parquet"), split="train")
    assert raw.cast_column("image", datasets.Image(decode=False))[4]["image"]["bytes"] is None
