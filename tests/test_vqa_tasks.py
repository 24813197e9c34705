"""VQA loaders on official-schema fixtures, and their error messages."""

import json

import pytest

from harness.errors import DataError, HarnessError
from harness.registry import get_task_class


def make(name, root, **opts):
    return get_task_class(name)(root, opts)


def test_vqav2_joins_by_question_id(vqa_root):
    task = make("vqav2", vqa_root)
    val = task.eval_examples()
    assert [e.id for e in val] == [str(1012 + i) for i in range(6)]  # question order kept
    ex = val[2]  # third question: answers ["2"]*4 + ["two"]*4 + ["3"]*2 (pool index 2)
    assert ex.fields["question"] == "What is shown in picture 2?"
    assert ex.answers == ("2",) * 4 + ("two",) * 4 + ("3",) * 2
    assert ex.meta["answer_type"] == "number" and ex.meta["image_id"] == 502
    assert ex.media[0].path.endswith("val2014/COCO_val2014_000000000502.jpg")
    assert len(task.support_examples()) == 12


def test_answer_choice_option(vqa_root):
    first = make("vqav2", vqa_root, answer_choice="first").eval_examples()[1]
    common = make("vqav2", vqa_root, answer_choice="most_common").eval_examples()[1]
    assert first.answers == ("no",) * 7 + ("yes",) * 3
    assert first.target == "no" and common.target == "no"
    ex3 = make("vqav2", vqa_root, answer_choice="most_common").eval_examples()[3]
    assert ex3.target == "red"
    # ties go to the earliest: "2" x4 vs "two" x4
    assert make("vqav2", vqa_root, answer_choice="most_common").eval_examples()[2].target == "2"


def test_okvqa_reads_its_own_file_names(vqa_root):
    task = make("okvqa", vqa_root)
    assert len(task.eval_examples()) == 6
    assert task.config()["options"]["normalization"] == "official"


def test_data_root_from_environment(vqa_root, monkeypatch):
    monkeypatch.setenv("HARNESS_DATA", str(vqa_root))
    assert len(get_task_class("vqav2")(None, {}).eval_examples()) == 6
    monkeypatch.delenv("HARNESS_DATA")
    with pytest.raises(HarnessError, match="--data-dir DIR or set HARNESS_DATA"):
        get_task_class("vqav2")(None, {}).eval_examples()


def test_missing_file_names_path_and_layout(tmp_path):
    with pytest.raises(DataError) as err:
        make("vqav2", tmp_path).eval_examples()
    msg = str(err.value)
    assert str(tmp_path / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json") in msg
    assert "Expected layout" in msg and "question_id" in msg


def test_missing_field_is_named(vqa_root):
    path = vqa_root / "vqav2" / "v2_mscoco_val2014_annotations.json"
    data = json.loads(path.read_text())
    del data["annotations"][1]["answers"]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        make("vqav2", vqa_root).eval_examples()
    assert "annotation #1" in str(err.value) and "'answers'" in str(err.value) and path.name in str(err.value)


def test_malformed_json_and_unjoined_question(vqa_root):
    qpath = vqa_root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json"
    good = qpath.read_text()
    qpath.write_text(good[:-10])
    with pytest.raises(DataError, match="not valid JSON"):
        make("vqav2", vqa_root).eval_examples()
    data = json.loads(good)
    data["questions"].append({"image_id": 1, "question": "extra?", "question_id": 999999})
    qpath.write_text(json.dumps(data))
    with pytest.raises(DataError, match="1 of 7 questions .* have no annotation .*999999"):
        make("vqav2", vqa_root).eval_examples()


def test_unknown_task_and_option():
    with pytest.raises(HarnessError, match="unknown task 'vqa3'.*easyvqa"):
        get_task_class("vqa3")
    with pytest.raises(HarnessError, match="unknown option 'shots'.*answer_choice"):
        get_task_class("vqav2")(None, {"shots": "3"})
    with pytest.raises(HarnessError, match="'sometimes' is not one of official, always"):
        get_task_class("vqav2")(None, {"normalization": "sometimes"})


def test_easyvqa_bundled():
    task = get_task_class("easyvqa")(None, {})
    test = task.eval_examples()
    assert len(test) == 9673 and len(task.support_examples()) == 38575
    ex = test[0]
    assert ex.fields["question"] == "what is the red shape?" and ex.target == "triangle"
    assert task.score("triangle", ex) == 1.0 and task.score("circle", ex) == 0.0


def test_postprocess_cuts_like_openflamingo(vqa_root):
    task = make("vqav2", vqa_root)
    ex = task.eval_examples()[0]
    assert task.postprocess(" yes Question: is it", ex) == "yes"
    assert task.postprocess("two dogs\nShort answer: x", ex) == "two dogs"
    assert task.postprocess("red Short", ex) == "red"


def test_okvqa_stemming_needs_local_nltk_data(vqa_root):
    from harness.metrics.okvqa_stem import exceptions

    assert exceptions()["leaves"] == "leaf" and len(exceptions()) > 150
    try:
        import nltk  # noqa: F401
        nltk.pos_tag(["x"])
    except (ImportError, LookupError):
        with pytest.raises(HarnessError, match="nltk.downloader .*wordnet"):
            make("okvqa", vqa_root, stem="true")
    else:  # nltk and its data are here: the stemmer runs for real
        task = make("okvqa", vqa_root, stem="true")
        ex = task.eval_examples()[0]
        assert task.postprocess("riding horses Question:", ex) == "ride horse"
