"""OK-VQA answer stemming (OK-VQA v1.1 procedure), as OpenFlamingo applies it to predictions.

Each word of the answer: a listed exception maps to its listed stem; else a word
ending in "ing" is lemmatised as a verb (WordNet); else a plural noun (POS tag
NNS/NNPS) is singularised (``inflection``). Tokenising, tagging and lemmatising use
nltk, whose data (punkt, averaged_perceptron_tagger, wordnet) must be on disk:
nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from harness.errors import HarnessError

_SETUP = (
    "OK-VQA stemming (task option stem=true) needs nltk, inflection and nltk's data on disk: "
    "pip install nltk inflection, then on a machine with internet "
    "python -m nltk.downloader punkt punkt_tab averaged_perceptron_tagger averaged_perceptron_tagger_eng wordnet "
    "and copy the nltk_data folder here (point NLTK_DATA at it)"
)


@lru_cache(maxsize=1)
def exceptions() -> dict[str, str]:
    table = json.loads((Path(__file__).with_name("okvqa_stems.json")).read_text(encoding="utf-8"))
    table.pop("_source")
    return table


@lru_cache(maxsize=1)
def _tools():
    try:
        import inflection
        import nltk
        from nltk.corpus.reader import VERB
    except ImportError as exc:
        raise HarnessError(f"{_SETUP} ({exc})") from None
    lemmatizer = nltk.stem.WordNetLemmatizer()
    try:  # touch every resource now, so a missing one fails once, clearly
        nltk.pos_tag(nltk.tokenize.word_tokenize("two dogs running"))
        lemmatizer.lemmatize("running", VERB)
    except LookupError as exc:
        raise HarnessError(missing_resource_message(str(exc))) from None
    return nltk, inflection, lemmatizer, VERB


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def missing_resource_message(nltk_error: str) -> str:
    """One line naming the nltk resource that is missing and the command that installs it.

    nltk's LookupError text is a box of asterisks (with terminal colour codes) around
    "Resource X not found ... nltk.download('X') ... Attempted to load PATH"; its first
    line says nothing, so the resource name is read out of the text.
    """
    text = _ANSI.sub("", nltk_error)
    found = re.search(r"nltk\.download\('([^']+)'\)", text) or re.search(r"Resource\s+'?([\w./-]+)'?\s+not found", text)
    if found is None:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip().strip("*")), "a LookupError")
        return f"{_SETUP}. nltk said: {first}"
    name = found.group(1)
    path = re.search(r"Attempted to load\s+(\S+)", text)
    where = f" (it looked for {path.group(1)})" if path else ""
    return (f"OK-VQA stemming (task option stem=true): nltk resource {name!r} is not installed{where}; "
            f"install it with: python -m nltk.downloader {name} (on a machine with internet, then copy the "
            f"nltk_data folder here and point NLTK_DATA at it)")


def check_available() -> None:
    """Raise a HarnessError saying what to install if stemming cannot run here."""
    _tools()


def stem(answer: str) -> str:
    nltk, inflection, lemmatizer, VERB = _tools()
    table = exceptions()
    words = []
    for word, tag in nltk.pos_tag(nltk.tokenize.word_tokenize(answer)):
        if word in table:
            word = table[word]
        elif word.endswith("ing"):
            word = lemmatizer.lemmatize(word, VERB)
        elif tag.startswith("NNS") or tag.startswith("NNPS"):
            word = inflection.singularize(word)
        words.append(word)
    return " ".join(words)
