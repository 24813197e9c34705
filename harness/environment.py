"""Is this interpreter the project's environment? Checked before anything heavy is imported, so a
``python run_eval.py`` with another Python says what to run instead of a ModuleNotFoundError traceback.
Imports nothing beyond the standard library."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

#: import names of pyproject.toml's dependencies (what ``harness run`` needs at some point)
REQUIRED = ("torch", "transformers", "tokenizers", "safetensors", "datasets", "pycocoevalcap", "numpy", "pandas",
            "PIL", "tqdm", "matplotlib", "easy_vqa", "av")
ROOT = Path(__file__).resolve().parent.parent


def missing_modules(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """The required modules this interpreter cannot import (found without importing them)."""
    out = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def dependency_error(argv: list[str], missing: list[str], executable: str | None = None) -> str:
    """The one-line (plus commands) message for an interpreter that lacks ``missing``."""
    executable = executable or sys.executable
    args = " ".join(shlex.quote(a) for a in argv)
    venv = ROOT / ".venv" / "bin" / "python"
    script = ROOT / "run_eval.py"
    try:
        shown = str(script.relative_to(Path.cwd()))
        shown = shown if "/" in shown else f"./{shown}"
    except ValueError:
        shown = str(script)
    if venv.exists():
        fix = (f"run it with the project's .venv: {shown} {args}".rstrip()
               + f"  (or `source {ROOT / '.venv/bin/activate'}` once, then `harness {args}`)".replace(" `)", "`)"))
    else:
        fix = (f"set up the project's .venv first: {ROOT / 'scripts/setup.sh'}, then {shown} {args}".rstrip())
    return (f"error: this Python ({executable}) lacks {', '.join(missing)}, which the harness needs; {fix}")


def check_dependencies(argv: list[str]) -> None:
    """Exit with status 2 and :func:`dependency_error` where a required module is missing."""
    missing = missing_modules()
    if missing:
        print(dependency_error(argv, missing), file=sys.stderr)
        sys.exit(2)
