"""The split cache (harness.data.split_cache): VQA splits parsed once into Arrow columns, keyed by the
files' contents, served as lazily built Examples that equal the field-by-field parse."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from conftest import write_vqa_fixture
from harness.data import split_cache
from harness.errors import DataError
from harness.registry import get_task_class
from harness.store import identity
from harness.store.identity import config_hash, data_fingerprint
import tasks  # noqa: F401  (registers the tasks)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "splits"


def task(root: Path, **options):
    return get_task_class("vqav2")(root, options)


def by_field(t, split: str = "train2014"):
    """The reference: the field-by-field parse of the same files (the path bad data takes)."""
    layout = t._layout()
    q = t.root / t.questions_file.format(split=split)
    a = t.root / t.annotations_file.format(split=split)
    questions = json.loads(q.read_text())["questions"]
    annotations = json.loads(a.read_text())["annotations"]
    image_dir = Path(t.options.image_dir) if t.options.image_dir else t.root / split
    return t._examples_by_field(questions, annotations, q, a, split, layout, image_dir)


def old_fingerprint(examples) -> str:
    """data_fingerprint as it was before the streaming version: config_hash of the whole list."""
    return config_hash([[e.id, dict(e.fields), list(e.answers), e.target, [m.identity for m in e.media]]
                        for e in examples])


@pytest.mark.parametrize("options", [{}, {"answer_choice": "most_common", "image_dir": "/some/where/"}])
def test_cached_split_equals_fresh_parse(tmp_path, cache, options):
    root = write_vqa_fixture(tmp_path / "data", n_train=30, n_val=9)
    first = task(root, **options).support_examples()
    assert isinstance(first, split_cache.LazyExamples)
    assert len(list(cache.glob("*.arrow"))) == 1  # written by the first load
    second = task(root, **options).support_examples()  # a new task: read from the cache file
    reference = by_field(task(root, **options))
    assert list(first) == list(second) == reference
    assert [second[i] for i in range(len(second))] == reference and second[-1] == reference[-1]
    assert list(second[3:11]) == reference[3:11] and second[3:11].ids() == [e.id for e in reference[3:11]]
    assert second[::2] == reference[::2] and list(second[5:2]) == []
    with pytest.raises(IndexError):
        second[len(second)]
    assert data_fingerprint(first) == data_fingerprint(second) == data_fingerprint(reference) == old_fingerprint(reference)
    assert data_fingerprint(second[:7]) == old_fingerprint(reference[:7])
    if options.get("image_dir"):
        assert reference[0].media[0].path.startswith("/some/where/COCO_train2014_")


def test_fingerprint_is_kept_with_the_cache(tmp_path, cache):
    root = write_vqa_fixture(tmp_path / "data", n_train=20, n_val=6)
    fp = data_fingerprint(task(root).support_examples())
    meta = json.loads(next(cache.glob("*.json")).read_text())
    assert list(meta["memo"].values()) == [fp]
    # Another image folder changes the media identities: its own fingerprint, not the memoised one.
    other = task(root, image_dir="/elsewhere").support_examples()
    assert data_fingerprint(other) == old_fingerprint(by_field(task(root, image_dir="/elsewhere")))
    assert data_fingerprint(other) != fp


def test_streamed_fingerprint_equals_the_whole_list_hash(tmp_path, cache):
    root = write_vqa_fixture(tmp_path / "data", n_train=25, n_val=6)
    reference = by_field(task(root))
    for n in (0, 1, 2, 24, 25):
        assert identity._data_fingerprint(reference[:n], chunk=4) == old_fingerprint(reference[:n])
        assert identity._data_fingerprint(reference[:n], chunk=1) == old_fingerprint(reference[:n])


def test_changed_source_file_is_parsed_again(tmp_path, cache):
    root = write_vqa_fixture(tmp_path / "data", n_train=12, n_val=6)
    before = list(task(root).support_examples())
    path = root / "vqav2" / "v2_mscoco_train2014_annotations.json"
    st = path.stat()
    text = path.read_text()
    assert '"answer": "yes"' in text
    path.write_text(text.replace('"answer": "yes"', '"answer": "yep"', 1))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime: the content still counts
    after = list(task(root).support_examples())
    assert after == by_field(task(root)) and after != before
    assert any("yep" in e.answers for e in after)
    assert len(list(cache.glob("*.arrow"))) == 1  # the earlier version's cache is gone
    other = write_vqa_fixture(tmp_path / "other", n_train=5, n_val=6)  # another data root: both kept
    assert len(task(other).support_examples()) == 5
    assert len(list(cache.glob("*.arrow"))) == 2 and len(list(task(root).support_examples())) == 12
    assert len(list(cache.glob("*.arrow"))) == 2


@pytest.mark.parametrize("damage", ["flip", "truncate", "meta"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, cache, caplog, damage):
    root = write_vqa_fixture(tmp_path / "data", n_train=12, n_val=6)
    reference = list(task(root).support_examples())
    arrow = next(cache.glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    if damage == "flip":  # inside the column data: the file still parses, only the checksum tells
        i = data.find(b"What is shown")
        data[i:i + 4] = b"XXXX"
        arrow.write_bytes(bytes(data))
    elif damage == "truncate":
        arrow.write_bytes(bytes(data[: len(data) // 2]))
    else:
        arrow.with_suffix(".json").write_text("{not json")
    damaged = (arrow.read_bytes(), arrow.with_suffix(".json").read_text())
    with caplog.at_level(logging.WARNING, logger="harness.data.split_cache"):
        again = list(task(root).support_examples())
    assert again == reference
    assert "parsing the data files again" in caplog.text
    assert list(task(root).support_examples()) == reference  # and the rebuilt file serves the next run
    assert (arrow.read_bytes(), arrow.with_suffix(".json").read_text()) != damaged  # rewritten


@pytest.mark.parametrize("bad, message", [
    (lambda q, a: q["questions"][3].pop("image_id"), "question #3 (question_id 1003) has no field 'image_id'"),
    (lambda q, a: a["annotations"][2]["answers"][4].pop("answer"), "answers[4]"),
    (lambda q, a: a["annotations"].append(dict(a["annotations"][0])), "is annotated twice"),
    (lambda q, a: a["annotations"].pop(), "1 of 12 questions in v2_OpenEnded_mscoco_train2014_questions.json have no annotation"),
    (lambda q, a: q["questions"][0].update(image_id="x1"), "image_id must be an integer"),
    (lambda q, a: q["questions"][1].update(question_id=1000), "id 1000 appears twice"),
    (lambda q, a: a["annotations"][0].update(answers=[]), "'answers' must be a non-empty list"),
])
def test_bad_data_gets_the_same_errors_every_time(tmp_path, cache, bad, message):
    root = write_vqa_fixture(tmp_path / "data", n_train=12, n_val=6)
    base = root / "vqav2"
    qp, ap = base / "v2_OpenEnded_mscoco_train2014_questions.json", base / "v2_mscoco_train2014_annotations.json"
    task(root).support_examples()  # a good cache of the good files exists
    q, a = json.loads(qp.read_text()), json.loads(ap.read_text())
    bad(q, a)
    qp.write_text(json.dumps(q))
    ap.write_text(json.dumps(a))
    errors = []
    for _ in range(2):  # nothing of the bad data is cached: the second run says the same
        with pytest.raises(DataError) as exc:
            task(root).support_examples()
        errors.append(str(exc.value))
    assert errors[0] == errors[1] and message in errors[0]
    if "appears twice" not in message:  # (duplicate ids are valid columns: Task.examples refuses them, every time)
        assert len(list(cache.glob("*.arrow"))) == 1


def test_values_the_columns_do_not_hold_are_read_as_before(tmp_path, cache):
    """Image ids written as digit strings are valid (they name the file) but not int64: plain Examples."""
    root = write_vqa_fixture(tmp_path / "data", n_train=12, n_val=6)
    qp = root / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json"
    q = json.loads(qp.read_text())
    for item in q["questions"]:
        item["image_id"] = str(item["image_id"])
    qp.write_text(json.dumps(q))
    examples = task(root).support_examples()
    assert isinstance(examples, list) and examples == by_field(task(root))
    assert examples[0].meta["image_id"] == "100"
    assert not list(cache.glob("*.arrow"))


def test_missing_file_error_unchanged(tmp_path, cache):
    root = write_vqa_fixture(tmp_path / "data", n_train=12, n_val=6)
    (root / "vqav2" / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(DataError, match=r"task vqav2 annotations \(val2014\): file not found: .*v2_mscoco_val2014"
                                        r"_annotations.json\nExpected layout"):
        task(root).eval_examples()


def test_read_only_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("HARNESS_CACHE", str(blocker / "cache"))  # cannot be created
    root = write_vqa_fixture(tmp_path / "data", n_train=12, n_val=6)
    examples = task(root).support_examples()
    assert list(examples) == by_field(task(root))
    assert data_fingerprint(examples) == old_fingerprint(by_field(task(root)))


def test_example_index_looks_up_and_selects_in_split_order(tmp_path, cache):
    root = write_vqa_fixture(tmp_path / "data", n_train=30, n_val=9)
    t = task(root)
    lazy, plain = t.support_examples(), by_field(t, "val2014")
    index = split_cache.ExampleIndex(lazy, plain, lazy)  # an id in two splits: the first wins
    reference = by_field(t) + plain
    assert len(index) == len(reference) and "nope" not in index and index.get("nope") is None
    assert all(index.get(e.id) == e for e in reference)
    few = {reference[20].id, reference[3].id, plain[2].id}
    assert index.select(few) == [reference[3], reference[20], plain[2]]
    most = {e.id for e in reference[1:]}
    assert index.select(most) == reference[1:]
