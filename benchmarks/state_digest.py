"""Speed of an in-memory model's identity (harness.store.identity.state_dict_digest) next to the
checkpoint fingerprint of the same weights on disk, side by side in one run.

Every evaluation from a training loop (harness.training) digests the module's state dict once;
this prints what that costs per GB of weights, and the ratio to hashing the saved file:

    python benchmarks/state_digest.py [--mb 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=512, help="size of the weights (float32), MB")
    args = p.parse_args()
    import torch
    from safetensors.torch import save_file

    from harness.store import identity

    n = args.mb * (1 << 20) // 4 // 1024
    module = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False) for _ in range(max(1, n // 1024))])
    size_mb = sum(t.numel() * t.element_size() for t in module.state_dict().values()) / (1 << 20)
    t0 = time.perf_counter()
    identity.state_dict_digest(module)
    t_state = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(Path(tmp) / "model.safetensors"))
        cache = {}
        t0 = time.perf_counter()
        identity.file_digest(Path(tmp) / "model.safetensors", cache)
        t_file = time.perf_counter() - t0
    print(f"weights: {size_mb:.0f} MB float32")
    print(f"state_dict_digest (in memory): {t_state:.2f} s  {size_mb / t_state:.0f} MB/s")
    print(f"file sha256 (on disk, page cache): {t_file:.2f} s  {size_mb / t_file:.0f} MB/s")
    print(f"ratio state / file: {t_state / t_file:.2f}")


if __name__ == "__main__":
    main()
