"""Identity of a model held in memory (no checkpoint on disk): a digest of its state dict.

A model evaluated from a training loop or a notebook has no files to hash
(:func:`harness.model.checkpoint_fingerprint`); its weights are its identity instead. The
digest is computed once, when its adapter is built (``Flamingo.from_module``,
``HF.from_objects``): weights changed afterwards need a new adapter.
"""

from __future__ import annotations

import hashlib
from typing import Any


def state_dict_digest(module: Any, extra: Any = None) -> str:
    """sha256 (16 hex digits) of every tensor of ``module.state_dict()``: name, dtype, shape and
    bytes, in name order, plus ``extra`` (e.g. the architecture config as JSON) when given."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()[:16]
