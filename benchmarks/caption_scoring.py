"""Time captioning scoring at the size of the COCO Karpathy test split.

Generates N images with 5 references each and one candidate per image (random
COCO-like sentences: a seeded generator over a small grammar, so the n-gram
statistics resemble real captions), then times the PTB tokenization and the
whole ``score_captions`` call (CIDEr-D, BLEU-1..4, ROUGE-L; METEOR with --meteor).

    python benchmarks/caption_scoring.py [--images 5000] [--refs 5] [--meteor] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.metrics.caption import ptb_tokenize, score_captions  # noqa: E402

SUBJECTS = ["a man", "a woman", "two people", "a dog", "a cat", "a group of kids", "a young boy", "an old lady",
            "a bus", "a train", "a plate of food", "a giraffe", "an elephant", "a surfer", "a skateboarder",
            "a baseball player", "a red car", "a bird", "a horse", "a kitchen", "a bathroom", "a pizza"]
VERBS = ["sitting on", "standing next to", "riding", "holding", "looking at", "walking down", "parked near",
         "eating", "flying over", "lying on", "playing with", "covered in", "in front of", "on top of"]
OBJECTS = ["a bench", "a table", "the street", "a wave", "a field", "a snowy hill", "a wooden fence",
           "a large building", "a kite", "a frisbee", "a laptop", "a couch", "the beach", "a sink",
           "a tennis court", "some vegetables", "a clock tower", "the grass", "a river", "a sidewalk"]
TAILS = ["", "", " on a sunny day", " at night", " in the city", " with a blue sky", " near some trees",
         ", smiling", " while people watch", " in black and white"]


def sentence(rng: random.Random) -> str:
    s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}"
    s = s[0].upper() + s[1:] if rng.random() < 0.8 else s
    return s + ("." if rng.random() < 0.7 else "")


def make_data(images: int, refs: int, seed: int = 0) -> tuple[dict[str, list[str]], dict[str, str]]:
    rng = random.Random(seed)
    references = {str(100000 + i): [sentence(rng) for _ in range(refs)] for i in range(images)}
    candidates = {k: sentence(rng) for k in references}
    return references, candidates


def time_pycocoevalcap(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """pycocoevalcap's own path, as COCOEvalCap.evaluate runs it (minus METEOR and SPICE)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    t = time.perf_counter()
    gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = PTBTokenizer().tokenize({k: [{"caption": c}] for k, c in candidates.items()})
    cider, _ = Cider().compute_score(gts, res)
    Bleu(4).compute_score(gts, res, verbose=0)
    Rouge().compute_score(gts, res)
    return {"pycocoevalcap_default_s": round(time.perf_counter() - t, 2), "pycocoevalcap_CIDEr": round(cider * 100, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--refs", type=int, default=5)
    p.add_argument("--meteor", action="store_true", help="also time a run with METEOR")
    p.add_argument("--compare", action="store_true",
                   help="also time pycocoevalcap's own path (its PTBTokenizer run twice, then the same scorers); "
                        "it writes a temporary file into pycocoevalcap's package folder")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    references, candidates = make_data(args.images, args.refs)
    flat = [r for v in references.values() for r in v] + list(candidates.values())
    out: dict[str, float | int] = {"candidates": len(candidates), "references": len(flat) - len(candidates)}

    t = time.perf_counter()
    ptb_tokenize(flat)
    out["tokenize_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    scores = score_captions(references, candidates)
    out["score_default_s"] = round(time.perf_counter() - t, 2)
    out["CIDEr"] = round(scores.corpus["CIDEr"], 2)
    out["BLEU_4"] = round(scores.corpus["BLEU_4"], 2)

    if args.meteor:
        t = time.perf_counter()
        scores = score_captions(references, candidates, ["cider", "bleu", "rouge", "meteor"])
        out["score_with_meteor_s"] = round(time.perf_counter() - t, 2)
        out["METEOR"] = round(scores.corpus["METEOR"], 2)

    if args.compare:
        out.update(time_pycocoevalcap(references, candidates))

    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
