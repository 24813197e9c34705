"""Captioning metrics computed by pycocoevalcap's own scorers, as ``COCOEvalCap.evaluate`` does.

What is the same as pycocoevalcap (so numbers equal published COCO evaluations):

- the Stanford PTB tokenizer jar that pycocoevalcap ships, with its flags
  (``-preserveLines -lowerCase``) and its punctuation filter;
- the scorers ``Bleu(4)`` (``closest`` reference length), ``Rouge`` (ROUGE-L,
  beta 1.2), ``Cider`` (CIDEr-D: sigma 6, clipped n-gram counts, x10) and
  ``Meteor`` (1.5, ``-l en -norm``), called on the tokenized captions.

What differs, and why:

- ``COCOEvalCap.evaluate()`` always runs SPICE, which needs Stanford CoreNLP
  models that its first run downloads; offline that fails. We call the scorers
  ourselves, and SPICE runs only when those models are already on disk
  (otherwise it is reported unavailable with the reason).
- pycocoevalcap's tokenizer writes its temporary file into its own package folder
  (fails when the folder is read-only; two processes share the folder). We run
  the same jar on a file in a private temporary directory instead.
- References and candidates are tokenized in one JVM run, not two (each line is
  tokenized on its own with ``-preserveLines``, so the tokens are identical).
- Line breaks inside a caption (``\\n``, and also ``\\r``, ``\\v``, ``\\f``,
  U+2028/U+2029, which the tokenizer also treats as line ends) become spaces, so
  a caption can never shift the alignment of lines to images.
- The tokenizer reads and writes UTF-8 whatever the locale (``-encoding UTF-8``).

Scores are on the 0-100 scale papers use (pycocoevalcap's value x 100).

CIDEr's document frequencies come from the references of the images being
scored, exactly as pycocoevalcap: the CIDEr of a subset (``--limit``) is not the
mean of the full-split per-image CIDErs; compare only numbers computed on the
same set of images.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from harness.errors import HarnessError

log = logging.getLogger(__name__)

#: Metric names accepted in ``metrics=`` and ``--metrics``.
METRICS = ("cider", "bleu", "rouge", "meteor", "spice")
DEFAULT_METRICS = ("cider", "bleu", "rouge")

JAVA_HINT = (
    "captioning metrics need Java (pycocoevalcap's PTB tokenizer, METEOR and SPICE are Java programs) "
    "and no `java` was found on PATH: install a Java runtime, e.g. `apt-get install openjdk-17-jre-headless` "
    "(Debian/Ubuntu) or `conda install -c conda-forge openjdk`, then check `java -version`"
)

# Characters the PTB tokenizer treats as line ends; each caption must stay one line.
_LINE_BREAKS = str.maketrans({c: " " for c in "\n\r\x0b\x0c\u2028\u2029"})


def java_executable() -> str:
    """The ``java`` program, or a HarnessError saying what to install."""
    java = shutil.which("java")
    if java is None:
        raise HarnessError(JAVA_HINT)
    return java


def _package_dir(sub: str) -> Path:
    """A folder of the installed pycocoevalcap (a namespace package: no ``__file__``)."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("captioning metrics need pycocoevalcap: pip install pycocoevalcap==1.2")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / sub


def ptb_tokenize(sentences: Sequence[str]) -> list[str]:
    """Tokenize each sentence as pycocoevalcap's PTBTokenizer does (lowercase, punctuation removed).

    One JVM run for all sentences; the input file lives in a private temporary
    directory, so the package folder may be read-only and concurrent runs never collide.
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    if not sentences:
        return []
    jar = _package_dir("tokenizer") / STANFORD_CORENLP_3_4_1_JAR
    if not jar.is_file():
        raise HarnessError(f"pycocoevalcap's tokenizer jar is missing: {jar}; reinstall pycocoevalcap")
    java = java_executable()
    text = "\n".join(s.translate(_LINE_BREAKS) for s in sentences)
    with tempfile.TemporaryDirectory(prefix="harness-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_text(text, encoding="utf-8")
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", "-encoding", "UTF-8", str(src)]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")[-2000:]
        raise HarnessError(f"the PTB tokenizer failed (exit {proc.returncode}): {err}")
    lines = proc.stdout.decode("utf-8").split("\n")
    # The jar ends its output with a newline; pycocoevalcap zips and so ignores the extra line.
    if len(lines) < len(sentences) or any(lines[len(sentences):]):
        raise HarnessError(f"the PTB tokenizer returned {len(lines)} lines for {len(sentences)} captions")
    punct = set(PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punct) for line in lines[: len(sentences)]]


def spice_status() -> tuple[bool, str]:
    """Whether SPICE can run here, and why not: it needs Stanford CoreNLP 3.6.0 jars in its lib folder."""
    lib = _package_dir("spice") / "lib"
    needed = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        return False, (f"unavailable: SPICE needs {', '.join(missing)} in {lib} (pycocoevalcap downloads them on "
                       f"first use; copy them there to enable it)")
    return True, "available"


@dataclass
class CaptionScores:
    """Corpus scores (0-100) and per-image scores (0-100), keyed by image id, in input order."""

    corpus: dict[str, float]
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    names = tuple(m.strip().lower() for m in metrics if m.strip())
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise HarnessError(f"unknown captioning metric(s) {', '.join(unknown) or '(none given)'}; "
                           f"choose from {', '.join(METRICS)}")
    return names


def score_captions(
    references: Mapping[str, Sequence[str]],
    candidates: Mapping[str, str],
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> CaptionScores:
    """Score one candidate caption per image against that image's references.

    ``references`` and ``candidates`` have the same keys (image ids). Raw text
    goes in; it is PTB-tokenized once here for every metric.
    """
    names = check_metrics(metrics)
    ids = list(candidates)
    if set(ids) != set(references):
        extra = sorted(set(ids) - set(references))[:3]
        lacking = sorted(set(references) - set(ids))[:3]
        raise HarnessError(f"captions and references cover different images (only in candidates: {extra}; "
                           f"only in references: {lacking})")
    if not ids:
        raise HarnessError("no captions to score")
    empty = [i for i in ids if not references[i]]
    if empty:
        raise HarnessError(f"image {empty[0]} has no reference caption ({len(empty)} such images)")

    flat = [str(r) for i in ids for r in references[i]] + [str(candidates[i]) for i in ids]
    tokens = ptb_tokenize(flat)
    gts: dict[str, list[str]] = {}
    pos = 0
    for i in ids:
        n = len(references[i])
        gts[i] = tokens[pos : pos + n]
        pos += n
    res = {i: [tokens[pos + k]] for k, i in enumerate(ids)}

    corpus: dict[str, float] = {}
    per_image: dict[str, dict[str, float]] = {i: {} for i in ids}
    notes: dict[str, str] = {}

    def put(name: str, score: float, scores: Sequence[float]) -> None:
        corpus[name] = float(score) * 100.0
        for i, s in zip(ids, scores):
            per_image[i][name] = float(s) * 100.0

    if "cider" in names:
        from pycocoevalcap.cider.cider import Cider

        put("CIDEr", *Cider().compute_score(gts, res))
    if "bleu" in names:
        from pycocoevalcap.bleu.bleu import Bleu

        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            put(f"BLEU_{n + 1}", score[n], scores[n])
    if "rouge" in names:
        from pycocoevalcap.rouge.rouge import Rouge

        put("ROUGE_L", *Rouge().compute_score(gts, res))
    if "meteor" in names:
        put("METEOR", *_meteor(gts, res))
    available, reason = spice_status()
    if "spice" in names and available:
        put("SPICE", *_spice(gts, res))
    else:
        notes["SPICE"] = reason if not available else "not requested (add spice to the metrics)"
        if "spice" in names:
            log.warning("SPICE %s", reason)
    return CaptionScores(corpus, per_image, notes)


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    """pycocoevalcap's Meteor (a JVM with a 2 GB heap), stopped as soon as it has answered."""
    java_executable()
    from pycocoevalcap.meteor.meteor import Meteor

    class _Meteor(Meteor):
        # The parent's __del__ waits on a lock that a failed compute_score leaves held; we stop it ourselves.
        def __del__(self) -> None:
            pass

    scorer = _Meteor()
    try:
        return scorer.compute_score(gts, res)
    except (ValueError, BrokenPipeError) as exc:
        exited = scorer.meteor_p.poll() is not None
        err = scorer.meteor_p.stderr.read().decode(errors="replace")[-2000:] if exited else ""
        raise HarnessError(f"METEOR failed ({exc}); its output: {err or '(none)'}") from None
    finally:
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def _spice(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    """SPICE with pycocoevalcap's jar, its input, output and cache in a private temporary directory."""
    jar = _package_dir("spice") / "spice-1.0.jar"
    items = [{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in gts]
    with tempfile.TemporaryDirectory(prefix="harness-spice-") as tmp:
        src, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        src.write_text(json.dumps(items), encoding="utf-8")
        cmd = [java_executable(), "-jar", "-Xmx8G", str(jar), str(src), "-cache", os.path.join(tmp, "cache"),
               "-out", str(out), "-subset", "-silent"]
        proc = subprocess.run(cmd, cwd=jar.parent, capture_output=True)
        if proc.returncode != 0:
            raise HarnessError(f"SPICE failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
        results = {str(r["image_id"]): float(r["scores"]["All"]["f"]) for r in json.loads(out.read_text())}
    scores = [results[i] for i in gts]
    import numpy as np  # lazy: listing tasks should not pay for numpy

    return float(np.mean(scores)), scores
