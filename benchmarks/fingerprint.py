"""Speed of the full-file checkpoint fingerprint (harness.model.checkpoint_fingerprint).

Writes a checkpoint folder with one multi-GB weight file of random bytes in a temporary
folder, then fingerprints it three ways, side by side in one run:

1. cold: every byte hashed (sha256), no cache: the first run on a new checkpoint;
2. cached: the digest reused from the cache, keyed by (path, size, mtime_ns, ctime_ns, inode):
   every later run on the same unchanged checkpoint;
3. the old first-and-last-MiB hash, for comparison (fast, but blind to the middle).

The file is deleted at the end. The cold read may come from the page cache (the file was
just written); a checkpoint on a cold network disk reads at the disk's speed instead.

    python benchmarks/fingerprint.py [--gb 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness.model as hm  # noqa: E402


def write_random(path: Path, size: int) -> None:
    block = os.urandom(64 << 20)  # one random block, repeated: quick to write; hashing cost is the same
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(len(block), size - written)
            f.write(block[:n])
            written += n


def head_tail(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(-(1 << 20), 2)
        h.update(f.read())
    return h.hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=3.0, help="size of the weight file (GB)")
    args = ap.parse_args()
    size = int(args.gb * (1 << 30))
    with tempfile.TemporaryDirectory(prefix="fingerprint_bench_") as tmp:
        ck = Path(tmp) / "ck"
        ck.mkdir()
        (ck / "config.json").write_text("{}")
        write_random(ck / "model.safetensors", size)
        old = time.time() - 3600  # as an old checkpoint: its digest may be cached
        os.utime(ck / "model.safetensors", (old, old))
        time.sleep(hm._RACY_S + 0.1)  # utime changed ctime: wait until the stamp is trustworthy
        os.environ["HARNESS_CACHE"] = str(Path(tmp) / "cache")

        t = time.perf_counter()
        cold = hm.checkpoint_fingerprint(ck)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        cached = hm.checkpoint_fingerprint(ck)
        t_cached = time.perf_counter() - t
        t = time.perf_counter()
        head_tail(ck / "model.safetensors")
        t_ht = time.perf_counter() - t
        assert cold == cached
    mb = size / 1e6
    print(f"file: {mb:.0f} MB")
    print(f"full hash, cold:   {t_cold:8.3f} s  ({mb / t_cold:7.0f} MB/s)")
    print(f"full hash, cached: {t_cached:8.3f} s  ({t_cold / t_cached:7.0f}x faster than cold)")
    print(f"old head+tail MiB: {t_ht:8.3f} s  (misses any change in the middle)")


if __name__ == "__main__":
    main()
