#!/usr/bin/env bash
# Set up (idempotently), then run the test suite. Exits non-zero when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
exec .venv/bin/python -m pytest -q "$@" tests
