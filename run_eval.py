#!/usr/bin/env python
"""Command-line entry point: see ``python run_eval.py --help``."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
