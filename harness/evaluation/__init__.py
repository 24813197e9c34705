"""The engine: the runner and sweep, launch and merge, scoring, RICES, validation before a run.

Plug-ins import nothing from here: their vocabulary (prompts, samplers, ranking options, suites,
devices) is at the top of ``harness`` and the tasks' post-processing is ``tasks.postprocess``. The
old paths of the moved modules (and of the launch plumbing, now ``harness.launch``) stay importable,
for plug-ins and scripts written against them.
"""

import importlib
import sys

for _name in ("prompts", "sampling", "ranking", "balanced_sampling", "suites", "launch.distributed",
              "launch.allocator"):
    sys.modules.setdefault(f"{__name__}.{_name.split('.')[-1]}", importlib.import_module(f"harness.{_name}"))
