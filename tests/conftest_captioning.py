"""Captioning fixtures: Karpathy-schema COCO and Flickr30k files with real photos (scikit-image) as images."""

from __future__ import annotations

import json
from pathlib import Path

#: Five references per image, with the case, punctuation and quotes of real COCO captions.
CAPTIONS = [
    ["A woman in a space suit smiling at the camera.", "An astronaut poses in front of a flag.",
     "A smiling astronaut holding a helmet.", "a woman astronaut in an orange suit", "An astronaut posing for a photo."],
    ["A cat sitting on a table looking up.", "A tabby cat with green eyes.", "The cat is staring at something.",
     "a close up of a cat's face", "An orange and brown cat sitting down."],
    ["A cup of coffee on a saucer.", "A white mug of coffee on a wooden table.", "Coffee with latte art in a cup.",
     "a cup of \"coffee\" sitting on a plate", "A hot drink in a white cup."],
    ["A rocket on a launch pad.", "A space shuttle ready for take off.", "A tall rocket next to a tower.",
     "the rocket is standing on the pad", "A rocket launch site under a blue sky."],
    ["A man holding a camera on a tripod.", "A photographer standing in a field.", "A black and white photo of a man with a camera.",
     "man taking a picture, outdoors", "A person with an old camera."],
    ["A cup of coffee and a cat.", "Some coins on a table.", "A group of coins of different sizes.",
     "coins lying on a dark background", "Several old coins."],
]


def _photos():
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    arrays = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket(), skdata.camera(), skdata.coins()]
    return [Image.fromarray(np.asarray(a)).convert("RGB").resize((48, 48)) for a in arrays]


def karpathy_entries(n_per_split: dict[str, int], flickr: bool = False) -> list[tuple[dict, int]]:
    """(entry, photo index) pairs in the Karpathy schema, the splits interleaved as in the real files."""
    out, k = [], 0
    for split, n in n_per_split.items():
        for _ in range(n):
            photo = k % len(CAPTIONS)
            sentences = [{"raw": r, "tokens": r.lower().rstrip(".").split(), "imgid": k, "sentid": 5 * k + j}
                         for j, r in enumerate(CAPTIONS[photo])]
            if flickr:
                entry = {"filename": f"{1000092795 + k}.jpg", "imgid": k, "split": split,
                         "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
            else:
                folder = "train2014" if split == "train" else "val2014"
                cocoid = 100000 + k
                entry = {"filepath": folder, "filename": f"COCO_{folder}_{cocoid:012d}.jpg", "cocoid": cocoid,
                         "imgid": k, "split": split, "sentids": [s["sentid"] for s in sentences], "sentences": sentences}
            out.append((entry, photo))
            k += 1
    return out


def write_karpathy_fixture(root: Path, task: str = "coco", splits: dict[str, int] | None = None) -> Path:
    """``root/coco/dataset_coco.json`` (+ images under <filepath>/) or ``root/flickr30k/dataset_flickr30k.json``
    (+ images/), in the exact Karpathy schema."""
    splits = splits or {"train": 10, "restval": 3, "val": 3, "test": 6}
    flickr = task == "flickr30k"
    photos = _photos()
    base = root / task
    entries = karpathy_entries(splits, flickr)
    for entry, photo in entries:
        folder = base / ("images" if flickr else entry["filepath"])
        folder.mkdir(parents=True, exist_ok=True)
        photos[photo].save(folder / entry["filename"])
    (base / f"dataset_{task}.json").write_text(json.dumps(
        {"images": [e for e, _ in entries], "dataset": task}))
    return root
