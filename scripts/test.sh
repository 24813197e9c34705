#!/usr/bin/env bash
# Set up (idempotently), then run the test suite. Exits non-zero when a test fails.
#   ./scripts/test.sh           both tiers (what .ci/run runs)
#   ./scripts/test.sh --fast    the fast tier only: in-process tests, no torchrun/SLURM/browser/sweep
# Other arguments go to pytest (e.g. -k name, -x). Tests run in HARNESS_TEST_WORKERS processes (default 2,
# pytest-xdist; 0 runs them in this process, e.g. for pdb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
args=()
for a in "$@"; do
  if [[ "$a" == "--fast" ]]; then args+=(-m "not slow"); else args+=("$a"); fi
done
workers=${HARNESS_TEST_WORKERS:-2}
exec .venv/bin/python -m pytest -q -n "$workers" --dist worksteal --durations=15 ${args[@]+"${args[@]}"} tests
