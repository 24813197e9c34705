#!/bin/sh
"""":
# POSIX-shell preamble (Python reads it as a string): run with the repository's .venv when it
# exists, whichever python comes first on PATH; else python3. `python run_eval.py` skips this.
case $0 in */*) here=${0%/*} ;; *) here=. ;; esac
if [ -x "$here/.venv/bin/python" ]; then exec "$here/.venv/bin/python" "$0" "$@"; fi
exec python3 "$0" "$@"
"""
"""Command-line entry point: see ``python run_eval.py --help`` (no subcommand prints the help)."""

import sys

if __name__ == "__main__":
    from harness.environment import check_dependencies

    check_dependencies(sys.argv[1:])  # another Python than .venv's: say what to run, no traceback
    from harness.cli import main

    sys.exit(main())
