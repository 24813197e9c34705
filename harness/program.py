"""How to call this command line again: what printed hints start with, so they work as printed."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

#: the console scripts pyproject.toml installs
SCRIPTS = ("harness", "harness-eval")


def program(argv0: str | None = None, executable: str | None = None, cwd: str | Path | None = None) -> str:
    """The command that started this process, as a user can type it again from ``cwd``.

    - the console script (``harness``): ``harness`` when that name on PATH is this very script, else its path;
    - ``run_eval.py`` run by the repository's ``.venv`` python: ``./run_eval.py`` (its shell preamble picks
      ``.venv`` whatever ``python`` is first on PATH), as a path relative to ``cwd`` where it is below it;
    - ``run_eval.py`` run by another interpreter: ``<that interpreter> run_eval.py``;
    - ``python -m harness``: ``<that interpreter> -m harness``.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    cwd = Path(cwd or os.getcwd())
    name = Path(argv0).name
    if name in SCRIPTS:
        on_path = shutil.which(name)
        if on_path and Path(on_path).resolve() == Path(argv0).resolve():
            return name
        return shlex.quote(_shown(Path(argv0), cwd))
    if name == "__main__.py":
        return f"{shlex.quote(executable)} -m harness"
    script = Path(argv0 if name.endswith(".py") else Path(__file__).resolve().parent.parent / "run_eval.py")
    shown = _shown(script, cwd)
    venv_python = script.resolve().parent / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(executable).parent.parent.resolve() == venv_python.parent.parent.resolve() \
            and os.access(script, os.X_OK):
        return shlex.quote(shown if "/" in shown else f"./{shown}")
    return f"{shlex.quote(executable)} {shlex.quote(shown)}"


def _shown(path: Path, cwd: Path) -> str:
    """``path`` relative to ``cwd`` where it is below it, else absolute."""
    try:
        return str(path.resolve().relative_to(cwd.resolve()))
    except ValueError:
        return str(path.resolve())
