#!/usr/bin/env bash
# Create .venv and install requirements.txt into it. Idempotent: a second run with
# unchanged requirements does nothing (a stamp file records what was installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing requirements into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # torch and torchvision first, together, so the pinned pair satisfies everything after them.
  .venv/bin/python -m pip install -q $(grep -E '^torch(vision)?==' requirements.txt)
  .venv/bin/python -m pip install -q -r requirements.txt
  # packages whose declared dependencies must not be resolved (they pin an old torch / need torchvision)
  .venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
  echo "$want" > "$stamp"
fi
