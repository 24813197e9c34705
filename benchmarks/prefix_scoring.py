"""Shared-prefix vs naive log-likelihood scoring of many candidates (ImageNet-style ranking).

A tiny random-weight reference Flamingo (built from a config, no download) scores C class
names (1-3 words each, as ImageNet's) after one few-shot prompt (``--shots`` demos
``<image>Output:{class}<|endofchunk|>``, then ``<image>Output:``), two ways, side by side:

- naive:  the whole prompt + candidate, one row per candidate (``FlamingoModel.loglikelihood``
          in batches of ``--batch-size``), what a model without prefix sharing does;
- shared: the prompt once, its key/values reused for every candidate
          (``models/flamingo/scoring.py``, what ``--model flamingo`` does for close-ended tasks).

It prints both times, their ratio, and the largest absolute difference between the two
log-likelihoods (float32 rounding only; the ranking must not change).

    python benchmarks/prefix_scoring.py [--preset imagenet|visdial] [--classes C] [--shots K] [--queries 3]
                                        [--batch-size 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from models.flamingo.config import FlamingoConfig, LMConfig, ResamplerConfig, VisionConfig  # noqa: E402
from models.flamingo.model import FlamingoModel  # noqa: E402
from models.flamingo.scoring import shared_prefix_loglikelihoods  # noqa: E402
from models.flamingo.tokenizer import build_word_tokenizer  # noqa: E402

ADJECTIVES = ["great", "white", "tiger", "electric", "American", "grey", "smooth", "spotted", "red", "common",
              "little", "giant", "golden", "black", "sea", "wild", "snow", "water", "desert", "mountain"]
NOUNS = ["shark", "ray", "owl", "newt", "salamander", "frog", "turtle", "lizard", "snake", "spider", "crab",
         "beetle", "dog", "terrier", "cat", "fox", "bear", "monkey", "truck", "boat", "piano", "clock", "cup",
         "kite", "robin", "eagle", "vulture", "dipper", "finch", "hen", "rooster", "ostrich", "goldfish",
         "tench", "stingray", "junco", "jay", "magpie", "chickadee", "bulbul", "bunting", "brambling", "mug",
         "lamp", "chair", "violin", "drum", "train", "bus", "kayak"]


def class_names(n: int, seed: int = 0, lengths: tuple[int, ...] = (1, 2, 2, 3)) -> list[str]:
    rng = random.Random(seed)
    names: list[str] = []
    seen = set()
    while len(names) < n:
        words = rng.choice(lengths)
        name = " ".join([rng.choice(ADJECTIVES) for _ in range(words - 1)] + [rng.choice(NOUNS)])
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def tiny_flamingo(vocab_texts: list[str], seed: int = 0) -> FlamingoModel:
    tok = build_word_tokenizer(vocab_texts)
    cfg = FlamingoConfig(
        vision=VisionConfig(image_size=32, channels=(8, 16)),
        resampler=ResamplerConfig(num_latents=8, depth=1, heads=2, dim_head=16, ff_mult=2, max_frames=4),
        lm=LMConfig(hf_config=dict(model_type="llama", hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, intermediate_size=512, max_position_embeddings=2048,
                                   vocab_size=len(tok)),
                    frozen=False, cross_attn_every=1, xattn_heads=4, xattn_dim_head=32, xattn_ff_mult=2),
    )
    torch.manual_seed(seed)
    model = FlamingoModel(cfg, tok).eval()
    with torch.no_grad():  # open the gates so the images matter, as in a trained model
        for block in model.xattn:
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(0.5)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["imagenet", "visdial"], default="imagenet",
                    help="imagenet: 1,000 names of 1-3 words after 16 short demos; visdial: 100 answers of 2-6 "
                         "words after 2 demos and a query that each carry an 80-word dialogue history")
    ap.add_argument("--classes", type=int, help="candidates per query (preset: 1000 / 100)")
    ap.add_argument("--shots", type=int, help="demos in the prompt (preset: 16 / 2)")
    ap.add_argument("--queries", type=int, default=3, help="prompts scored (each against every class)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    visdial = args.preset == "visdial"
    args.classes = args.classes or (100 if visdial else 1000)
    args.shots = args.shots if args.shots is not None else (2 if visdial else 16)
    context_words = 80 if visdial else 0

    names = class_names(args.classes, lengths=(2, 3, 4, 5, 6) if visdial else (1, 2, 2, 3))
    model = tiny_flamingo(["Output :"] + names)
    rng = random.Random(1)
    cands = [model.encode_text(n) for n in names]
    prompts = []

    def history() -> str:  # a dialogue so far, as VisDial prompts carry it
        return " ".join(rng.choice(ADJECTIVES + NOUNS) for _ in range(context_words))

    for q in range(args.queries):
        demos = [rng.choice(names) for _ in range(args.shots)]
        ids = []
        for d in demos:
            ids += model.chunk_ids(1, f"{history()} Output:{d}", end_of_chunk=True)
        ids += model.chunk_ids(1, f"{history()} Output:", end_of_chunk=False)
        with torch.inference_mode():
            feats = model.encode_media(torch.randn(args.shots + 1, 3, 32, 32, generator=torch.Generator().manual_seed(q)))
        prompts.append((ids, feats))

    def naive(ids, feats):
        out = []
        for s in range(0, len(cands), args.batch_size):
            chunk = cands[s : s + args.batch_size]
            out += model.loglikelihood([ids] * len(chunk), chunk, media_features=[feats] * len(chunk))
        return out

    def shared(ids, feats):
        return shared_prefix_loglikelihoods(model, ids, feats, cands, batch_size=args.batch_size)

    shared(*prompts[0])  # warm-up (allocator, kernels) for both paths
    naive(prompts[0][0], prompts[0][1])
    t0 = time.perf_counter()
    naive_out = [naive(*p) for p in prompts]
    t_naive = time.perf_counter() - t0
    t0 = time.perf_counter()
    shared_out = [shared(*p) for p in prompts]
    t_shared = time.perf_counter() - t0

    max_diff = max(abs(a - b) for n, s in zip(naive_out, shared_out) for a, b in zip(n, s))
    same_ranking = all(
        sorted(range(len(n)), key=lambda i: -n[i])[:5] == sorted(range(len(s)), key=lambda i: -s[i])[:5]
        for n, s in zip(naive_out, shared_out))
    prompt_tokens = len(prompts[0][0])
    result = {
        "preset": args.preset, "classes": args.classes, "shots": args.shots, "queries": args.queries, "prompt_tokens": prompt_tokens,
        "mean_class_tokens": round(sum(map(len, cands)) / len(cands), 2), "batch_size": args.batch_size,
        "threads": args.threads, "naive_s": round(t_naive, 3), "shared_s": round(t_shared, 3),
        "speedup": round(t_naive / t_shared, 1), "max_abs_logprob_diff": max_diff, "same_top5": same_ranking,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.queries} queries x {args.classes} classes, {args.shots}-shot prompt of {prompt_tokens} tokens, "
              f"class names {result['mean_class_tokens']} tokens on average")
        print(f"naive per-class forward: {t_naive:.2f}s   shared prefix: {t_shared:.2f}s   "
              f"speed-up {t_naive / t_shared:.1f}x")
        print(f"log-likelihoods: max |naive - shared| = {max_diff:.2e}; same top-5 for every query: {same_ranking}")
    ok = max_diff < 1e-3 and same_ranking
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
