"""Mismatch counts of the harness against each benchmark's own evaluator (issue 22's eight items).

    python benchmarks/exactness.py                       # this tree
    python benchmarks/exactness.py --harness OLD_TREE    # another checkout (e.g. before issue 22)

Every item draws the same seeded cases (tests/exactness_cases.py) and compares the harness with the
reference written from the benchmark's own code (tests/exactness_reference.py): per item, the number
of cases and how many differ. ``--harness DIR`` imports ``harness`` and ``tasks`` from DIR instead (a
``git archive`` of an older commit), so before/after are measured with identical cases and references.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--harness", type=Path, default=ROOT, help="tree whose harness/ and tasks/ are measured")
    p.add_argument("--only", help="comma list of item numbers (e.g. 1,7)")
    args = p.parse_args()
    sys.path[:0] = [str(args.harness.resolve()), str(ROOT / "tests")]
    import exactness_cases as cases  # noqa: E402  (after the path is set)

    wanted = set(args.only.split(",")) if args.only else None
    print(f"harness from {args.harness.resolve()}")
    print(f"{'item':28s} {'comparison':38s} {'cases':>7s} {'differ':>7s}  time")
    total = 0
    for name, check in cases.ALL_CHECKS.items():
        if wanted and name.split()[0] not in wanted:
            continue
        start = time.time()
        try:
            result = check()
        except Exception as exc:  # an older tree may lack what a check needs: say so, go on
            print(f"{name:28s} {'(could not run: ' + type(exc).__name__ + ': ' + str(exc)[:60] + ')'}")
            continue
        for tally in result if isinstance(result, tuple) else (result,):
            total += tally.mismatches
            print(f"{name:28s} {tally.name:38s} {tally.cases:7d} {tally.mismatches:7d}  {time.time() - start:.1f}s")
    print(f"total mismatches: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
