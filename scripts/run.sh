#!/usr/bin/env bash
# Set up (idempotently), then run the evaluation. With no arguments: the default sweep
# (built-in models on bundled easy-VQA, 0/4/32 shots, seeds 0 1 2) into results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- run; fi
exec .venv/bin/python run_eval.py "$@"
