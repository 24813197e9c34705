#!/usr/bin/env bash
# Create .venv, install requirements.txt into it, then this project (`pip install --no-deps -e .`: the
# `harness` command in .venv/bin). Idempotent: stamp files record what was installed, so a second run with
# unchanged requirements and pyproject.toml does nothing.
#
#   scripts/setup.sh           the environment
#   scripts/setup.sh --tests   also the system packages some tests use (apt, as root): a LaTeX engine
#                              with booktabs and poppler (the LaTeX table test), slurm-wlm and munge
#                              (the one-node SLURM test), chromium + chromium-driver (the viewer test).
#                              Without root or apt those tests are skipped, each naming what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
for arg in "$@"; do
  case $arg in
    --tests) tests=1 ;;
    *) echo "setup.sh: unknown argument $arg (only --tests)" >&2; exit 2 ;;
  esac
done
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

# The project itself, editable: `.venv/bin/harness` runs this checkout's code.
if [ -L .venv ]; then
  # a link to an environment shared with other checkouts: installing this one would repoint theirs
  echo "setup: .venv links to $(readlink -f .venv), shared; not installing this checkout into it" \
       "(use ./run_eval.py here)" >&2
else
  pstamp=.venv/.project.sha256
  pwant=$( (cat pyproject.toml; pwd) | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$pstamp" 2>/dev/null)" != "$pwant" ] || [ ! -x .venv/bin/harness ]; then
    echo "setup: installing the project into .venv (the harness command)" >&2
    # the build backend from .venv itself (no download; a satisfied requirement is not fetched again)
    .venv/bin/python -m pip install -q "setuptools>=68"
    .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
    echo "$pwant" > "$pstamp"
  fi
fi

if [ "$tests" = 1 ]; then
  # Debian package -> a file it provides: install only what is missing.
  need=()
  for pair in texlive-latex-base:/usr/bin/pdflatex texlive-latex-recommended:/usr/share/texlive/texmf-dist/tex/latex/booktabs/booktabs.sty \
              poppler-utils:/usr/bin/pdftoppm slurm-wlm:/usr/sbin/slurmctld slurmd:/usr/sbin/slurmd \
              munge:/usr/sbin/munged chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver; do
    [ -e "${pair#*:}" ] || need+=("${pair%%:*}")
  done
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: apt-get install ${need[*]} (for the tests)" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
      echo "setup: not root or no apt-get: the tests that need ${need[*]} will be skipped (install them as root:" \
           "apt-get install ${need[*]})" >&2
    fi
  fi
fi
