"""Flags users bring from lm-evaluation-harness, lmms-eval and OpenFlamingo's evaluate.py: a one-line
hint naming this harness's flag (same meaning, other spelling: ``--batch_size`` and ``--include_path``
are accepted as aliases by the parser instead)."""

from __future__ import annotations

from typing import Callable, Sequence


def _items(flag: str) -> Callable[[list[str]], str]:
    def hint(values: list[str]) -> str:
        items = [i.strip() for v in values for i in v.split(",") if i.strip()]
        return "use " + (" ".join(f"{flag} {i}" for i in items) if items else f"{flag} KEY=VALUE (repeatable)")
    return hint


def _one(text: str, placeholder: str) -> Callable[[list[str]], str]:
    return lambda values: text.format(" ".join(values) if values else placeholder)


#: peer flag -> hint built from the values given after it
PEER_FLAGS: dict[str, Callable[[list[str]], str]] = {
    "--num_fewshot": _one("use --shots {} (several values sweep them: --shots 0 4 32)", "N"),
    "--model_args": _items("--model-arg"),
    "--gen_kwargs": lambda v: _items("--task-arg")(v) + " (generation settings are task options: "
                                                       "max_new_tokens, num_beams, length_penalty)",
    "--output_path": _one("use --output {} (a results folder; every cell's predictions and metrics go under it)", "DIR"),
    "--log_samples": lambda v: "every sample is always kept (predictions.jsonl in each cell's folder): drop --log_samples",
    "--device": _one("use --model-arg device={}", "cuda"),
    "--num_samples": _one("use --sample {0} (a random {0} per seed) or --limit {0} (the first {0})", "N"),
    "--trial_seeds": _one("use --seeds {}", "0 1 2"),
    "--num_trials": lambda v: "use --seeds with one seed per trial, e.g. --seeds " + " ".join(
        map(str, range(int(v[0])))) if v and v[0].isdigit() else "use --seeds 0 1 2 (one run per seed)",
    "--results_file": _one("use --output {} (a results folder)", "DIR"),
    "--verbosity": lambda v: "use -v for debug logging",
    "--tasks_list": _one("use --tasks {}", "T1,T2"),
}


def peer_flag_hint(argv: Sequence[str]) -> str | None:
    """A one-line hint for the first peer flag in ``argv`` (``--flag value ...`` or ``--flag=value``), or None."""
    for i, token in enumerate(argv):
        if token == "--":
            return None
        flag, eq, inline = token.partition("=")
        if flag not in PEER_FLAGS:
            continue
        values = [inline] if eq else []
        if not eq:
            for nxt in argv[i + 1:]:
                if nxt.startswith("-") and not _is_number(nxt):
                    break
                values.append(nxt)
        shown = " ".join([token, *values[:4]] if not eq else [token])
        return f"{shown}: {PEER_FLAGS[flag](values)}"
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
