"""Fixtures for the issue-14 benchmarks: TextVQA, VizWiz, VisDial and ImageNet data in their exact
official schemas (real photos from scikit-image), and a tiny random-weight reference Flamingo saved
to disk (for the log-likelihood tasks through the CLI).

Imported explicitly by tests/test_benchmark_*.py (the lead owns tests/conftest.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _photo(i: int, size: int = 40):
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    photos = [skdata.astronaut, skdata.chelsea, skdata.coffee, skdata.rocket]
    return Image.fromarray(np.asarray(photos[i % len(photos)]())).convert("RGB").resize((size, size))


def write_textvqa(root: Path) -> Path:
    """TextVQA_0.5.1_{train,val}.json, Rosetta OCR files, images train_images/<image_id>.jpg.

    Train answers: "what does the sign say" -> stop, "what brand is this" -> nokia. Val: one question
    of each type; 'stop' earns 100 on the first (6 x stop, 4 x stop sign), 'nokia' 60 on the second
    (2 x nokia, 8 x samsung: (2 * 1/3 + 8 * 2/3) / 10).
    """
    base = root / "textvqa"
    (base / "train_images").mkdir(parents=True, exist_ok=True)
    qid = 34600
    for split, rows in (("train", [("what does the sign say?", ["stop"] * 10), ("what brand is this?", ["nokia"] * 10)] * 3),
                        ("val", [("what does the sign say?", ["stop"] * 6 + ["stop sign"] * 4),
                                 ("what brand is this?", ["nokia"] * 2 + ["samsung"] * 8)])):
        data, ocr = [], []
        for i, (question, answers) in enumerate(rows):
            image_id = f"{split[0]}{i:015x}"
            _photo(i).save(base / "train_images" / f"{image_id}.jpg")
            data.append({"question": question, "image_id": image_id, "image_classes": ["Sign"],
                         "flickr_original_url": "", "flickr_300k_url": "", "image_width": 40, "image_height": 40,
                         "answers": answers, "question_tokens": question.rstrip("?").split(), "question_id": qid,
                         "set_name": split})
            ocr.append({"image_id": image_id, "ocr_tokens": ["STOP", f"no{i}"], "ocr_info": []})
            qid += 1
        (base / f"TextVQA_0.5.1_{split}.json").write_text(json.dumps(
            {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data}))
        (base / f"TextVQA_Rosetta_OCR_v0.2_{split}.json").write_text(json.dumps(
            {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.2", "data": ocr}))
    return root


def write_vizwiz(root: Path) -> Path:
    """Annotations/{train,val}.json and images {split}/VizWiz_{split}_*.jpg. Every train answer is
    'unanswerable'; val has two unanswerable questions and two answerable ones ('red')."""
    base = root / "vizwiz"
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 6), ("val", 4)):
        (base / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            image = f"VizWiz_{split}_{i:08d}.jpg"
            _photo(i).save(base / split / image)
            unans = split == "train" or i % 2 == 0
            answer = "unanswerable" if unans else "red"
            rows.append({"image": image, "question": "What color is this shirt?",
                         "answers": [{"answer": answer, "answer_confidence": "yes"}] * 10,
                         "answer_type": "unanswerable" if unans else "other", "answerable": 0 if unans else 1})
        (base / "Annotations" / f"{split}.json").write_text(json.dumps(rows))
    return root


VISDIAL_OPTIONS = ["yes", "no", "maybe"] + [f"option {k}" for k in range(97)]


def write_visdial(root: Path) -> Path:
    """visdial_1.0_{train,val}.json (100 answer options per round), val dense annotations, images
    (train: COCO train2014/val2014 names; val: VisualDialog_val2018).

    Val: dialogue 1 round 1 (gt 'no', relevance yes 1.0 / no 0.5) and dialogue 2 round 3 (gt 'no',
    relevance no 1.0) carry dense annotations. A model that ranks 'yes' first then candidate order
    gets NDCG 100 and 0 on them, the gt at rank 2 in both.
    """
    base = root / "visdial"
    questions = ["is it sunny", "what color is the car", "is there a dog"]
    answers = list(VISDIAL_OPTIONS) + ["blue"]
    opts = list(range(100))

    def dialog(image_id: int, gts: list[int]) -> dict:
        return {"image_id": image_id, "caption": "a car parked on a street",
                "dialog": [{"question": 0 if r % 2 == 0 else 2, "answer": gts[r], "answer_options": opts,
                            "gt_index": gts[r]} for r in range(len(gts))]}

    train = [dialog(100 + i, [0, 0, 0]) for i in range(4)]
    for i, d in enumerate(train):
        split = "train2014" if i % 2 == 0 else "val2014"
        (base / split).mkdir(parents=True, exist_ok=True)
        _photo(i).save(base / split / f"COCO_{split}_{d['image_id']:012d}.jpg")
    val = [dialog(500, [1, 0, 1]), dialog(501, [0, 0, 1])]
    (base / "VisualDialog_val2018").mkdir(parents=True, exist_ok=True)
    for i, d in enumerate(val):
        _photo(i + 1).save(base / "VisualDialog_val2018" / f"VisualDialog_val2018_{d['image_id']:012d}.jpg")
    for split, dialogs in (("train", train), ("val", val)):
        (base / f"visdial_1.0_{split}.json").write_text(json.dumps(
            {"version": "1.0", "split": f"{split}2018",
             "data": {"questions": questions, "answers": answers, "dialogs": dialogs}}))
    rel1 = [1.0, 0.5] + [0.0] * 98
    rel2 = [0.0, 1.0] + [0.0] * 98
    (base / "visdial_1.0_val_dense_annotations.json").write_text(json.dumps(
        [{"image_id": 500, "round_id": 1, "gt_relevance": rel1}, {"image_id": 501, "round_id": 3, "gt_relevance": rel2}]))
    return root


IMAGENET_CLASSES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def write_imagenet(root: Path) -> Path:
    """ImageFolder layout train/<wnid>/*.JPEG, val/<wnid>/*.JPEG and LOC_synset_mapping.txt.

    Train: 3 tench, 2 goldfish, 2 sharks (tench is the most common class); val: 2 tench, 1, 1.
    """
    base = root / "imagenet"
    counts = {"train": [3, 2, 2], "val": [2, 1, 1]}
    k = 0
    for split, ns in counts.items():
        for (wnid, _), n in zip(IMAGENET_CLASSES.items(), ns):
            (base / split / wnid).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                name = f"ILSVRC2012_val_{k:08d}.JPEG" if split == "val" else f"{wnid}_{j}.JPEG"
                _photo(k).save(base / split / wnid / name, format="JPEG")
                k += 1
    (base / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
        "n01484850 great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias\n")
    return root


def write_benchmark_data(root: Path) -> Path:
    write_textvqa(root)
    write_vizwiz(root)
    write_visdial(root)
    write_imagenet(root)
    return root


def tiny_flamingo_model(seed: int = 0):
    """A tiny random-weight reference Flamingo (Llama LM, word tokenizer over the fixtures' words),
    gates opened so images matter."""
    import torch

    from models.flamingo.config import FlamingoConfig, LMConfig, ResamplerConfig, VisionConfig
    from models.flamingo.model import FlamingoModel
    from models.flamingo.tokenizer import build_word_tokenizer

    words = (["Output : Caption Question Short answer Answer . ?", "a car parked on a street"] + VISDIAL_OPTIONS
             + list(IMAGENET_CLASSES.values()) + ["is it sunny what color is the car is there a dog"])
    tok = build_word_tokenizer(words)
    cfg = FlamingoConfig(
        vision=VisionConfig(image_size=32, channels=(8, 16)),
        resampler=ResamplerConfig(num_latents=4, depth=1, heads=2, dim_head=8, ff_mult=2, max_frames=4),
        lm=LMConfig(hf_config=dict(model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
                                   vocab_size=len(tok)),
                    frozen=False, cross_attn_every=1, xattn_heads=2, xattn_dim_head=8, xattn_ff_mult=2),
    )
    torch.manual_seed(seed)
    model = FlamingoModel(cfg, tok).eval()
    with torch.no_grad():
        for block in model.xattn:
            block.attn_gate.fill_(1.0)
            block.ff_gate.fill_(0.5)
    return model
