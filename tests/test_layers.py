"""The import graph shows the layers (README, Architecture): plug-ins and reporting never import the
engine, and only the composition root imports the built-in packages (no import circle)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the composition root: the only harness modules that may import the built-in tasks/models packages
COMPOSITION_ROOT = {"harness/plugins.py", "harness/cli.py", "harness/api.py", "harness/training.py",
                    "harness/__main__.py"}
PLUGIN_API = ["harness/task.py", "harness/model.py", "harness/registry.py", "harness/prompts.py",
              "harness/sampling.py", "harness/balanced_sampling.py", "harness/ranking.py", "harness/suites.py",
              "harness/devices.py", "harness/options.py", "harness/types.py", "harness/errors.py", "harness/cache.py",
              "harness/protocols.py"]


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def files(*patterns: str) -> list[Path]:
    return sorted(p for pat in patterns for p in ROOT.glob(pat) if "__pycache__" not in p.parts)


def test_plugins_and_reporting_never_import_the_engine():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if m.startswith("harness.evaluation"))
                 for p in files(*PLUGIN_API, "harness/reporting/*.py", "harness/store/*.py", "harness/data/*.py",
                                "harness/metrics/*.py", "harness/launch/*.py", "tasks/**/*.py", "models/**/*.py",
                                "examples/*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_composition_root_imports_the_builtin_packages():
    builtin = ("tasks", "models")
    offenders = {}
    for p in files("harness/**/*.py"):
        rel = str(p.relative_to(ROOT))
        bad = sorted(m for m in imports(p) if m.split(".")[0] in builtin)
        if bad and rel not in COMPOSITION_ROOT:
            offenders[rel] = bad
    assert not offenders
    registry = imports(ROOT / "harness/registry.py")
    assert not {m for m in registry if m.startswith(("harness.plugins", "tasks", "models", "harness.evaluation"))}


def test_the_plugin_api_imports_only_the_foundations():
    allowed = ("harness.errors", "harness.types", "harness.options", "harness.store", "harness.cache", "harness.data",
               "harness.metrics", "harness.registry", "harness.prompts", "harness.sampling", "harness.ranking",
               "harness.devices", "harness.suites", "harness.balanced_sampling", "harness.task", "harness.model",
               "harness.protocols")
    offenders = {}
    for rel in PLUGIN_API:
        bad = sorted(m for m in imports(ROOT / rel) if m.startswith("harness.") and not m.startswith(allowed))
        if bad:
            offenders[rel] = bad
    assert not offenders
