"""VQA accuracy exactly as the official VQA evaluation (GT-Vision-Lab/VQA, vqaEval.py) computes it.

For a prediction and the ten annotators' answers, the accuracy is the mean,
over the ten leave-one-out subsets of nine answers, of min(1, matches / 3),
where matches counts the subset's answers equal to the prediction.

Normalisation (punctuation, number words, articles, contractions) has two modes:

- ``official`` (default): as the official script does. Newlines and tabs become
  spaces and both sides are stripped; the normalisation runs on the prediction
  and the answers *only when the ten answers are not all identical*. So "Yes"
  scores 0 against ten "yes" (no normalisation, case differs).
- ``always``: normalise prediction and answers for every question, as
  OpenFlamingo and lmms-eval effectively do.

The formula assumes exactly ten annotators: with one answer an exact prediction would score 0,
with three identical answers 0.67. A question with other than ten answers (plug-in data, a
``columns=answers:...`` mapping, a hand-made file) is therefore never scored by it; ``non_ten``
chooses the rule for those questions (a task option ``non_ten_answers``, recorded in results):

- ``exact`` (default): 1 if the prediction equals any of the answers, else 0;
- ``min3``: min(1, matches / 3) over the answers there are (the formula without leave-one-out).

The same normalisation applies as for ten answers.
"""

from __future__ import annotations

import re
from typing import Literal, Sequence

NormalizeMode = Literal["official", "always"]
NonTenRule = Literal["exact", "min3"]
#: the number of annotators the official formula assumes
N_ANNOTATORS = 10

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# The official pattern, kept verbatim: "(?!<=\d)" is a (harmless) typo for a
# lookbehind, so a period is stripped unless a digit follows it.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
#: The official script calls ``periodStrip.sub("", text, re.UNICODE)``: the third positional
#: argument of ``sub`` is ``count``, and ``re.UNICODE == 32``, so only the first 32 periods are
#: removed. Reproduced on purpose: published numbers were computed this way.
OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    """Lower case, number words to digits, articles dropped, contractions from ``contractions``
    (the VQA table by default; VizWiz's evaluator has its own)."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """The full official normalisation of one answer (whitespace, punctuation, digits, articles, contractions)."""
    return process_digit_article(process_punctuation(_clean(text)))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: Sequence[str], mode: NormalizeMode = "official",
                 non_ten: NonTenRule = "exact") -> float:
    """Accuracy of one prediction against the annotators' answers, in [0, 1]: the official formula
    with exactly ten answers, else the ``non_ten`` rule (see the module docstring)."""
    if mode not in ("official", "always"):
        raise ValueError(f"unknown VQA normalisation mode {mode!r} (official or always)")
    if non_ten not in ("exact", "min3"):
        raise ValueError(f"unknown rule for other than ten answers {non_ten!r} (exact or min3)")
    pred = _clean(prediction)
    gts = [_clean(a) for a in answers]
    if not gts:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    if mode == "always" or len(set(gts)) > 1:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
        pred = process_digit_article(process_punctuation(pred))
    if len(gts) != N_ANNOTATORS:
        matches = sum(1 for a in gts if a == pred)
        return float(matches > 0) if non_ten == "exact" else min(1.0, matches / 3.0)
    return leave_one_out_accuracy(pred, gts)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA vote on already-normalised strings: the mean, over the leave-one-out subsets of the
    answers, of min(1, matches / 3). Shared by the VQA, VizWiz and TextVQA evaluators."""
    if not answers:
        raise ValueError("the VQA accuracy needs at least one reference answer")
    scores = []
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        scores.append(min(1.0, matches / 3.0))
    return sum(scores) / len(scores)
