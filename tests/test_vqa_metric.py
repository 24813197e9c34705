"""VQA accuracy against hand-worked cases, both normalisation modes."""

import pytest

from harness.metrics.vqa import normalize_answer, process_punctuation, vqa_accuracy


@pytest.mark.parametrize(
    "pred, answers, official, always",
    [
        # All ten agree: the official script does not normalise, so case matters.
        ("Yes", ["yes"] * 10, 0.0, 1.0),
        ("yes", ["yes"] * 10, 1.0, 1.0),
        # Number words map to digits once the answers disagree.
        ("two", ["2"] * 4 + ["two"] * 4 + ["3"] * 2, 1.0, 1.0),
        # "3" given by 2 annotators: 2 leave-one-out subsets see 1 match, 8 see 2 -> (2/3 + 16/3) / 10.
        ("3", ["2"] * 4 + ["two"] * 4 + ["3"] * 2, 0.6, 0.6),
        # Articles dropped on both sides: 3 annotators said "(a) dog".
        ("the dog", ["a dog"] * 2 + ["dog"] + ["cat"] * 7, 0.9, 0.9),
        # Contractions: "dont" -> "don't".
        ("dont", ["don't"] * 3 + ["no"] * 7, 0.9, 0.9),
        # Commas between digits vanish.
        ("1,000", ["1000"] * 5 + ["1,000"] * 5, 1.0, 1.0),
        ("1,000", ["1000"] * 10, 0.0, 1.0),
        # Trailing period stripped, decimal point kept.
        ("yes.", ["yes"] * 9 + ["no"], 1.0, 1.0),
        ("2.5", ["2.5"] * 3 + ["3"] * 7, 0.9, 0.9),
        # Only some annotators gave the answer.
        ("red", ["red"] * 2 + ["blue"] * 8, 0.6, 0.6),
        ("green", ["green"] + ["blue"] * 9, 0.3, 0.3),
        ("purple", ["green"] + ["blue"] * 9, 0.0, 0.0),
        # Hyphen becomes a space (no space around it).
        ("hot-dog", ["hot dog"] * 5 + ["hotdog"] * 5, 1.0, 1.0),
        # Whitespace and newlines around the prediction do not matter.
        ("  yes\n", ["yes"] * 10, 1.0, 1.0),
        # Question mark and exclamation removed / spaced.
        ("no!", ["no"] * 6 + ["yes"] * 4, 1.0, 1.0),
    ],
)
def test_vqa_accuracy_hand_worked(pred, answers, official, always):
    assert vqa_accuracy(pred, answers, "official") == pytest.approx(official)
    assert vqa_accuracy(pred, answers, "always") == pytest.approx(always)


def test_normalisation_rules():
    assert normalize_answer("The Two Dogs") == "2 dogs"
    assert normalize_answer("an apple.") == "apple"
    assert normalize_answer("isnt") == "isn't"
    assert normalize_answer("none") == "0"
    assert normalize_answer("3.14") == "3.14"
    assert normalize_answer("yes\tno") == "yes no"
    # A punctuation mark next to a space is deleted; inside a word it becomes a space.
    assert process_punctuation("a / b") == "a  b"
    assert process_punctuation("a/b") == "a b"
    # Any digit,digit in the text makes every mark vanish instead.
    assert process_punctuation("1,5/2") == "152"


def test_bad_mode_and_empty_answers():
    with pytest.raises(ValueError, match="normalisation mode"):
        vqa_accuracy("yes", ["yes"], "sometimes")
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("yes", [])
