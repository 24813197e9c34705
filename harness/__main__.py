"""``python -m harness``: the same command line as ``harness`` and ``./run_eval.py``."""

import sys

from harness.environment import check_dependencies

check_dependencies(sys.argv[1:])
from harness.cli import main  # noqa: E402  (after the check: it imports the dependencies)

sys.exit(main())
