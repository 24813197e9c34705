"""Few-shot VQA speed: the new OpenFlamingo path against the old one, side by side in one run.

Builds a random-weight OpenFlamingo-architecture model from a config
(:mod:`models.openflamingo.synthetic`, ~7.7M parameters, 64 latents, 8 x 64 cross-attention
heads), writes VQAv2-layout data (official file names and schemas, random images), and runs
the harness's own Runner on 0-, 4- and 32-shot cells (batch 8, 3 beams, 5 new tokens) with

- old: masked cross-attention, Hugging Face's generate expanding the prompt to the beams before the
  prefill, an item-count feature cache (``xattn=masked prefill_once=false beam_search=hf
  feature_cache_size=1024``);
- new: the defaults (per-image cross-attention, one prefill per query, the built-in beam search
  of models/decoding.py, byte-budget cache).

Per shot count and thread count it prints the per-query time of both paths and the ratio,
the vision encodes per query in a second seed (the first filled the cache), the
share of wall time outside the model's forward passes (LM calls and vision encodes), and,
at the largest shot count, the floor: one bare prefill of the same prompts with per-image
attention plus the decode steps (3 beams x 5 tokens), per query. Predictions of the two
paths are compared query by query. The last line is the speed-up at the largest shot count
(the smallest over the thread counts) and whether every prediction was identical. Before it, a
fresh model (empty caches) runs a ``--fresh-queries`` cell at the largest shot count: its s/query,
and its seconds in the vision encoder against one batched pass over the same distinct images.

    python benchmarks/fewshot_speed.py [--queries 8] [--support 64] [--shots 0 4 32] [--threads 1 2]

Like ``run_eval.py run``, it first lets malloc keep freed memory for reuse
(harness/launch/allocator.py; ``HARNESS_MALLOC=system`` to compare without).
Absolute times on a shared machine are noisy; the ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD = {"xattn": "masked", "prefill_once": "false", "beam_search": "hf", "feature_cache_size": "1024"}
WORDS = ["red", "blue", "green", "yes", "no", "circle", "two", "cat", "dog", "bench"]


def write_vqav2(root: Path, n_support: int, n_queries: int, seed: int = 0) -> Path:
    """VQAv2-layout data: questions/annotations JSON in the official schema, COCO-named images."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    base = root / "vqav2"
    qid = 1
    for split, n in (("train2014", n_support), ("val2014", n_queries)):
        (base / split).mkdir(parents=True, exist_ok=True)
        questions, annotations = [], []
        for i in range(n):
            image_id = i + (0 if split == "train2014" else 100000)
            Image.fromarray(rng.randint(0, 256, (48, 48, 3), dtype=np.uint8)).save(
                base / split / f"COCO_{split}_{image_id:012d}.jpg")
            answer = WORDS[rng.randint(len(WORDS))]
            q = f"What is the {WORDS[rng.randint(len(WORDS))]} thing next to the {WORDS[rng.randint(len(WORDS))]} one?"
            questions.append({"image_id": image_id, "question": q, "question_id": qid})
            annotations.append({"question_id": qid, "image_id": image_id, "question_type": "what is",
                                "answer_type": "other", "multiple_choice_answer": answer,
                                "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": j + 1}
                                            for j in range(10)]})
            qid += 1
        (base / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": questions}))
        (base / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


class ForwardClock:
    """Seconds spent inside the model's forward passes: LM calls, the prefill (its LM call and
    the expansion of its cache to the beams) and vision encodes; nested calls count once.
    Everything else is outside: tokenization, the search's bookkeeping and beam reorders, the runner."""

    def __init__(self, model):
        self.seconds = 0.0
        self._depth = 0
        self._t0 = 0.0
        lm = model.net.lm
        lm.register_forward_pre_hook(lambda *a: self._start())
        lm.register_forward_hook(lambda *a: self._stop())
        for name in ("encode_pixels", "prefill"):
            setattr(model, name, self._timed(getattr(model, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            self._start()
            try:
                return fn(*args, **kwargs)
            finally:
                self._stop()

        return timed

    def _start(self):
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _stop(self):
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0


@contextmanager
def threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predictions(result_dir: Path, shots: int, seed: int) -> dict[str, str]:
    path = next(result_dir.rglob(f"{shots}shot_seed{seed}/predictions.jsonl"))
    return {r["query_id"]: r["raw_output"] for r in map(json.loads, path.read_text().splitlines())}


def floor_per_query(model, task, shots: int, n_queries: int, batch: int, num_beams: int, max_new_tokens: int) -> float:
    """One bare prefill (per-image attention) of a batch of the cell's prompts, then the decode
    steps of ``num_beams`` beams, features already cached: seconds per query."""
    import torch

    from harness.prompts import PromptBuilder
    from harness.sampling import RandomSampler

    queries = task.eval_examples()[:batch]
    sampler = RandomSampler(task.name, task.support_examples(), 0, task.options.support_size)
    builder = PromptBuilder(task.template(model.template_style)[1])
    prompts = [builder.build(sampler.demos(q, shots or 2), q, shots == 0) for q in queries]
    ids, mask = model._encode_texts([model.render_prompt(p) for p in prompts])
    media = model.batch_media(prompts)  # cached: not timed
    net = model.net
    start = time.perf_counter()
    with torch.inference_mode(), net.conditioning.conditioned(media, incremental=True):
        cache = model.prefill(ids, mask, num_beams)
        rows = ids.shape[0] * num_beams
        full = mask.repeat_interleave(num_beams, 0)
        tok = torch.full((rows, 1), int(ids[0, -1]), dtype=torch.long)
        for _ in range(max_new_tokens):
            full = torch.cat([full, full.new_ones(rows, 1)], 1)
            pos = full.sum(-1, keepdim=True) - 1
            out = net.lm(input_ids=tok, attention_mask=full, position_ids=pos, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / len(queries)


def fresh_vision(opts: dict, task, shots: int, n_queries: int, batch_size: int, pass_batch: int) -> dict:
    """A fresh model (empty feature cache) runs one cell: its s/query, and the seconds it spent in the
    vision encoder (``encode_pixels``: encoder + resampler, pixels already decoded) against one batched
    pass (``pass_batch`` images a call) over the same distinct images, in the same process.
    ``opts`` may turn on ``prefetch`` (the cell's images encoded up front)."""
    from harness.evaluation.runner import CellSpec, Runner
    from models.openflamingo import OpenFlamingo

    model = OpenFlamingo(opts)
    spent = [0.0, 0]
    encode = model.encode_pixels

    def timed(pixels):
        t0 = time.perf_counter()
        try:
            return encode(pixels)
        finally:
            spent[0] += time.perf_counter() - t0
            spent[1] += 1

    model.encode_pixels = timed
    out = Path(tempfile.mkdtemp(prefix="fresh_"))
    t0 = time.perf_counter()
    Runner(model, out, label="fresh", progress=False).run_cell(
        task, CellSpec(shots=shots, seed=0, limit=n_queries, batch_size=batch_size))
    wall = time.perf_counter() - t0
    path = next(out.rglob("predictions.jsonl"))
    used = {i for r in map(json.loads, path.read_text().splitlines()) for i in [r["query_id"], *r["demo_ids"]]}
    media = list({m.path: m for e in [*task.support_examples(), *task.eval_examples()] if e.id in used
                  for m in e.media}.values())
    pixels = model.pixels(media)
    encode(pixels[:pass_batch])  # warm, as the cell's first call was
    t0 = time.perf_counter()
    for start in range(0, len(media), pass_batch):
        encode(pixels[start : start + pass_batch])
    one_pass = time.perf_counter() - t0
    return {"s_per_query": wall / n_queries, "vision_s": spent[0], "vision_calls": spent[1],
            "distinct": len(media), "one_pass_s": one_pass, "share": spent[0] / wall}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=8, help="eval queries per cell (default 8: one batch)")
    ap.add_argument("--support", type=int, default=64, help="support-set size (distinct images)")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 4, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fresh-queries", type=int, default=48,
                    help="queries of the fresh-model cell at the largest shot count (0: skip it)")
    ap.add_argument("--pass-batch", type=int, default=64, help="images per call of the one batched pass")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from harness.registry import get_task_class
    from harness.plugins import load_builtins
    from harness.launch.allocator import retain_freed_memory
    from harness.evaluation.runner import CellSpec, Runner
    from models.openflamingo import OpenFlamingo
    from models.openflamingo.synthetic import write_synthetic

    load_builtins()
    retain_freed_memory()  # as `run_eval.py run` does before building models (both paths get it)
    tmp = Path(tempfile.mkdtemp(prefix="fewshot_speed_"))
    opts = write_synthetic(tmp / "model")
    write_vqav2(tmp / "data", args.support, args.queries)
    task = get_task_class("vqav2")(str(tmp / "data"), {})
    gen = task.generation_config()
    print(f"model: synthetic OpenFlamingo ({tmp / 'model'}); data: VQAv2 layout, {args.support} support images, "
          f"{args.queries} queries; batch {args.batch_size}, {gen.num_beams} beams, {gen.max_new_tokens} new tokens")

    header = ("| threads | shots | old s/query | new s/query | speed-up | encodes/query (seed 1) | "
              "outside forward (new) | floor s/query | new / floor |")
    rows, identical, speedups = [], True, {}
    for n_threads in args.threads:
        with threads(n_threads):
            paths = {}
            for name, extra in (("old", OLD), ("new", {})):
                model = OpenFlamingo({**opts, **extra})
                paths[name] = (model, ForwardClock(model), tmp / f"results_{name}_t{n_threads}")
            for shots in args.shots:
                timing = {}
                for name, (model, clock, out) in paths.items():
                    runner = Runner(model, out, label=name, progress=False)
                    # new: seed 0 cold (fills the cache), seed 1 timed; old: caches filled untimed, seed 1 timed
                    if name == "old":
                        model.encode_media([m for e in [*task.support_examples(), *task.eval_examples()] for m in e.media])
                    for seed in ((1,) if name == "old" else (0, 1)):
                        before, stats = clock.seconds, model.stats()
                        t0 = time.perf_counter()
                        runner.run_cell(task, CellSpec(shots=shots, seed=seed, limit=args.queries,
                                                       batch_size=args.batch_size))
                        wall = time.perf_counter() - t0
                        timing[name, seed] = (wall, clock.seconds - before,
                                              model.stats().get("vision_encodes", 0) - stats.get("vision_encodes", 0))
                identical &= predictions(paths["old"][2], shots, 1) == predictions(paths["new"][2], shots, 1)
                # seed 1 times: both paths with warm caches
                old_q = timing["old", 1][0] / args.queries
                new_wall, new_fwd, _ = timing["new", 1]
                new_q = new_wall / args.queries
                encodes = timing["new", 1][2] / args.queries
                floor = ""
                ratio_floor = ""
                if shots == max(args.shots):
                    f = floor_per_query(paths["new"][0], task, shots, args.queries, args.batch_size,
                                        gen.num_beams, gen.max_new_tokens)
                    floor, ratio_floor = f"{f:.3f}", f"{new_q / f:.2f}×"
                speedups.setdefault(shots, []).append(old_q / new_q)
                rows.append(f"| {n_threads} | {shots} | {old_q:.3f} | {new_q:.3f} | {old_q / new_q:.1f}× | "
                            f"{encodes:.2f} | {100 * (1 - new_fwd / new_wall):.1f}% | {floor} | {ratio_floor} |")
                print(rows[-1], flush=True)
    print()
    print(header)
    print("|" + "---|" * 9)
    print("\n".join(rows))
    top = max(args.shots)
    if args.fresh_queries:
        fresh_task = task
        if args.fresh_queries > args.queries:
            write_vqav2(tmp / "fresh_data", max(args.support, 4 * top), args.fresh_queries, seed=1)
            fresh_task = get_task_class("vqav2")(str(tmp / "fresh_data"), {})
        print()
        for prefetch in ("false", "true"):
            with threads(args.threads[0]):
                f = fresh_vision({**opts, "prefetch": prefetch}, fresh_task, top, args.fresh_queries,
                                 args.batch_size, args.pass_batch)
            print(f"fresh model, prefetch={prefetch}, {top} shots, {args.fresh_queries} queries, "
                  f"{args.threads[0]} thread(s): {f['s_per_query']:.3f} s/query; vision {f['vision_s']:.2f} s "
                  f"({100 * f['share']:.0f}% of the cell) in {f['vision_calls']} calls over {f['distinct']} distinct "
                  f"images; one batched pass over them ({args.pass_batch} a call): {f['one_pass_s']:.2f} s; "
                  f"vision / one pass = {f['vision_s'] / f['one_pass_s']:.2f}x (target <= 1.2x)")
    print(f"{top}-shot speed-up: {min(speedups[top]):.1f}× (identical predictions: {'yes' if identical else 'no'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
