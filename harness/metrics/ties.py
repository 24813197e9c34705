"""Orders of scores with exact ties broken as the reference code breaks them.

Equal scores are common: two candidates with the same text (or continuation) get the same
log-likelihood, and support images that recur (several VQA questions per image) get the same
similarity to a query. The reference implementations order them with torch on the CPU:

- VisDial (visdial-challenge-starter-pytorch ``metrics.scores_to_ranks``): ``scores.sort(descending=True)``;
- OpenFlamingo's classification (``utils.get_predicted_classnames``): ``torch.topk(logprobs, k)``,
  top-1 being the first of the top 5 for ImageNet;
- OpenFlamingo's RICES (``rices.RICES.find``): ``similarity.argsort(descending=True)``.

torch's CPU sort is not stable: beyond 16 elements, tied values come out in an order of its own
(neither index order nor reversed), and ``topk`` has yet another. A stable sort (numpy's, Python's
``sorted``) therefore picks other demos, other ranks and other top-k sets whenever scores tie. These
functions call the same torch operations, so ties fall where the reference puts them; the order does
not depend on the dtype (float32 or float64 give the same permutation for the same values), so
scores are kept in float64 and no new ties are made by rounding. Written for, and checked
against, the installed torch (the references run on whatever torch their user has: the order of
ties is torch's, and could change with a future torch).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _tensor(scores):
    import torch

    if isinstance(scores, torch.Tensor):
        return scores.detach().cpu()
    return torch.as_tensor(np.asarray(scores, dtype=np.float64))


def descending_order(scores: Sequence[float]) -> list[int]:
    """Indices from the highest score to the lowest, ties as ``torch.sort(descending=True)``."""
    import torch

    values = _tensor(scores)
    if values.numel() == 0:
        return []
    return torch.sort(values, descending=True).indices.tolist()


def top_k(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` highest scores, in ``torch.topk`` order (ties as torch breaks them)."""
    import torch

    values = _tensor(scores)
    k = min(int(k), values.numel())
    if k <= 0:
        return []
    return torch.topk(values, k).indices.tolist()


def rices_order(query: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Support indices from most to least similar to ``query`` (one L2-normalised feature vector;
    ``support`` one per row), as OpenFlamingo's ``RICES.find``: the float32 similarity
    ``query @ support.T`` computed by torch, then ``argsort(descending=True)``."""
    import torch

    q = torch.as_tensor(np.asarray(query, dtype=np.float32)).reshape(1, -1)
    s = torch.as_tensor(np.asarray(support, dtype=np.float32))
    similarity = (q @ s.T).squeeze(0)
    return similarity.argsort(dim=-1, descending=True).numpy()
