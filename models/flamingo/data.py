"""Training data: easy-VQA's train split as interleaved few-shot sequences.

A sequence is ``n`` demonstration chunks and a final chunk, each
``<image>Question:{q} Short answer:{a}<|endofchunk|>`` over its own image, exactly
as the harness renders OpenFlamingo prompts; ``n`` is drawn per batch from
0..max_demos. Sometimes the first two chunks lose their image, as Flamingo's
zero-shot prompts show text-only demos. The loss is on the answer tokens and the
end-of-chunk of every chunk that has an image (each chunk is a query in its turn:
per-media masking makes earlier chunks its demos).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image as PILImage

from harness.errors import DataError

DEMO = "Question:{question} Short answer:"  # the OpenFlamingo VQA template's stem (tasks/vqa.py)
IGNORE = -100


@dataclass
class VQAData:
    questions: list[str]
    answers: list[str]
    image_index: list[int]
    images: torch.Tensor  # (N_images, 3, H, W) uint8


def load_easyvqa_train(image_size: int) -> VQAData:
    try:
        import easy_vqa
    except ImportError:
        raise DataError("training needs the easy-vqa package: pip install easy-vqa") from None
    qs, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    ids = sorted(set(image_ids))
    pos = {i: k for k, i in enumerate(ids)}
    arrays = []
    for i in ids:
        with PILImage.open(paths[i]) as im:
            im = im.convert("RGB")
            if im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), PILImage.BICUBIC)
            arrays.append(np.asarray(im, dtype=np.uint8))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return VQAData(list(qs), list(answers), [pos[i] for i in image_ids], images)


class InterleavedSampler:
    """Draws batches of interleaved sequences with a fixed budget of chunks per batch."""

    def __init__(self, data: VQAData, model, max_demos: int, chunks_per_batch: int, text_only_prob: float,
                 seed: int, balance: float = 0.0):
        self.data, self.model = data, model
        # Questions are drawn with weight 1 / count(answer) ** balance: easy-VQA is 74% yes/no, and
        # the rarer "what color / what shape" questions are what teaches the vision path names.
        counts = Counter(data.answers)
        self.weights = [counts[a] ** -balance for a in data.answers]
        self.max_demos, self.chunks_per_batch, self.text_only_prob = max_demos, chunks_per_batch, text_only_prob
        self.rng = random.Random(seed)
        # Tokenise each distinct piece once.
        self.stems = [model.chunk_ids(1, DEMO.format(question=q), False) for q in data.questions]
        self.text_stems = [model.chunk_ids(0, DEMO.format(question=q), False) for q in data.questions]
        self.answer_ids = [model.encode_text(a) + [model.eoc_token_id] for a in data.answers]

    def batch(self, max_demos: int | None = None):
        """(token rows, label rows, image indices per row); demos drawn from 0..max_demos."""
        n = self.rng.randint(0, self.max_demos if max_demos is None else max_demos)
        rows = max(1, self.chunks_per_batch // (n + 1))
        ids, labels, images = [], [], []
        for _ in range(rows):
            picks = self.rng.choices(range(len(self.data.questions)), weights=self.weights, k=n + 1)
            text_only = 2 if n >= 2 and self.rng.random() < self.text_only_prob else 0
            row_ids, row_labels, row_images = [], [], []
            for j, q in enumerate(picks):
                has_image = j >= text_only
                stem = self.stems[q] if has_image else self.text_stems[q]
                ans = self.answer_ids[q]
                row_ids += stem + ans
                row_labels += [IGNORE] * len(stem) + (ans if has_image else [IGNORE] * len(ans))
                if has_image:
                    row_images.append(self.data.image_index[q])
            ids.append(row_ids), labels.append(row_labels), images.append(row_images)
        return ids, labels, images
