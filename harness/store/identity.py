"""A cell's identity: the one place that builds, keys, fingerprints, diffs, averages and pairs
cell configurations.

A cell's configuration (:func:`cell_config`) holds everything its numbers depend on: the model
(name, weights fingerprint, options but the runtime ones, its ``version``), the task (options,
splits, sources, template, its ``version``), shots, seed, limit/sample, sampler, generation
settings, and fingerprints of the data. Its key (:func:`config_key`) names it; a folder holds one.

- :func:`setting_key`   which cells ``compare`` and ``summary.json`` average over seeds
- :func:`pairing_fields` / :func:`pairing_mismatch`  which cells ``compare --baseline`` pairs
- :func:`config_diff`   what differs, readable, for refusals and warnings
- :func:`checkpoint_fingerprint` / :func:`state_dict_digest`  a model's weights on disk / in memory
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from itertools import islice
from typing import Any, Iterable, Mapping, Sequence

from harness.cache import atomic_write, cache_root, stamped
from harness.errors import HarnessError

log = logging.getLogger(__name__)


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_key(config: dict[str, Any]) -> str:
    """The key of a cell configuration (what journal.json and metrics.json record)."""
    return config_hash(config)


# ---- building a cell's configuration ------------------------------------------------
def cell_config(*, model: dict[str, Any], label: str, task: dict[str, Any], template_name: str, template: Any,
                shots: int, seed: int, limit: int | None, sample: int | None, sampler: dict[str, Any],
                zero_shot_text_demos: int, generation: Any, queries_fp: str, support_fp: str,
                harness_version: str) -> dict[str, Any]:
    """A cell's configuration: its identity (everything in it is hashed into its key)."""
    return {
        "model": model,
        "label": label,
        "task": {**task, "template": template_name, "template_text": asdict(template)},
        "shots": shots,
        "seed": seed,
        "limit": limit,
        "sample": sample,
        "sampler": {**sampler, "zero_shot_text_demos": zero_shot_text_demos},
        "generation": asdict(generation) if generation is not None else None,
        # the data itself: changed annotations (or a different data root) are another identity
        "data": {"queries": queries_fp, "support": support_fp},
        "harness_version": harness_version,
    }


def data_fingerprint(examples: Sequence[Any]) -> str:
    """Hash of what a cell's numbers depend on in its examples: ids, prompt fields, answers,
    demo targets and media identities (not the media bytes).

    A split read through the split cache (harness.data.split_cache) keeps it with its cache
    (``memo``), so a full split is hashed once, not on every run."""
    memo = getattr(examples, "memo", None)
    if callable(memo):
        return memo("data_fingerprint/1", lambda: _data_fingerprint(examples))
    return _data_fingerprint(examples)


def _data_fingerprint(examples: Iterable[Any], chunk: int = 20_000) -> str:
    # config_hash of the whole list, streamed: json.dumps of a list is its items' dumps joined by
    # ", " inside brackets, so hashing chunk by chunk gives the same digest without one huge string.
    h = hashlib.sha256(b"[")
    it, sep = iter(examples), ""
    while part := list(islice(it, chunk)):
        text = json.dumps([[e.id, dict(e.fields), list(e.answers), e.target, [m.identity for m in e.media]]
                           for e in part], sort_keys=True, default=str)
        h.update((sep + text[1:-1]).encode())
        sep = ", "
    h.update(b"]")
    return h.hexdigest()[:16]


# ---- what compare averages over seeds, what --baseline pairs on -----------------------
def setting_key(config: dict[str, Any]) -> str:
    """Identity of a cell's configuration without its seed: cells that are averaged over seeds.

    The seed also picks a ``--sample`` run's queries, so their fingerprint goes with it (the run's
    own summary averages those seeds, and so does compare)."""
    sampler = {k: v for k, v in (config.get("sampler") or {}).items() if k != "seed"}
    data = dict(config.get("data") or {})
    if config.get("sample") is not None:
        data.pop("queries", None)
    return config_hash({**config, "seed": None, "sampler": sampler, "data": data})


#: config["task"] keys that do not change which queries and demos a cell has (the template is
#: resolved per model family, so checkpoints of different families may differ there).
_TASK_KEYS_FREE = frozenset({"template", "template_text"})
#: task options that only set generation (decoding), never the queries or demos.
_TASK_OPTIONS_FREE = frozenset({"max_new_tokens", "num_beams", "length_penalty"})
#: top-level config keys that belong to the model or the run, not to the queries / demos.
_FREE_KEYS = frozenset({"model", "label", "generation", "harness_version"})


def pairing_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a cell's configuration that decide its queries and demonstrations.

    Everything except the model, label, generation settings (and the task options that only set
    them: num_beams, max_new_tokens, length_penalty), version and the prompt template; unknown keys
    are kept, so a field added later counts.
    """
    out = {k: v for k, v in config.items() if k not in _FREE_KEYS}
    if isinstance(out.get("task"), dict):
        task = {k: v for k, v in out["task"].items() if k not in _TASK_KEYS_FREE}
        if isinstance(task.get("options"), dict):
            task["options"] = {k: v for k, v in task["options"].items() if k not in _TASK_OPTIONS_FREE}
        out["task"] = task
    return out


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def pairing_mismatch(a: dict[str, Any], b: dict[str, Any], across_shots: bool = False) -> str | None:
    """Why two configs cannot be paired (the differing fields and values), or None. ``across_shots``:
    two shot counts of one checkpoint (``compare --baseline-shots``): the shot count and the zero-shot
    text demos may differ, everything else must not (the nested draw itself is checked on the records)."""
    fa, fb = flatten(pairing_fields(a)), flatten(pairing_fields(b))
    if across_shots:
        for f in (fa, fb):
            f.pop("shots", None)
            f.pop("sampler.zero_shot_text_demos", None)
    diffs = [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]
    if not diffs:
        return None
    shown = ", ".join(f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in diffs[:3])
    more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return f"different queries/demos: {shown}{more}"


def config_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    """What differs between two cell configurations, readable: ``limit: 1000 -> 9673; ...``."""
    a, b = flatten(old), flatten(new)

    def show(d: dict[str, Any], k: str) -> str:
        text = str(d.get(k, "(absent)"))
        return text if len(text) <= 60 else text[:57] + "..."

    diffs = [f"{k}: {show(a, k)} -> {show(b, k)}"
             for k in sorted(set(a) | set(b)) if a.get(k, "(absent)") != b.get(k, "(absent)")]
    more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(diffs[:limit]) + more if diffs else "(no visible difference: another harness version?)"


# ---- what produced the numbers (recorded, not part of the identity) --------------------
#: the libraries whose versions metrics.json records (compare says when side-by-side cells differ)
TRACKED_PACKAGES = ("torch", "transformers", "datasets", "pycocoevalcap")


@lru_cache(maxsize=1)
def harness_revision() -> str:
    """``git describe`` of the harness checkout (``-dirty`` with local changes), else the package version."""
    from harness import __version__

    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--tags"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return __version__


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """The harness revision and the versions of the libraries that compute outputs and scores."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"harness_revision": harness_revision(), "versions": versions}


def environment_diff(envs: Sequence[dict[str, Any] | None]) -> str | None:
    """Which recorded versions differ among cells shown side by side, or None."""
    flat = [flatten(e or {}) for e in envs]
    keys = sorted({k for f in flat for k in f})
    diffs = []
    for k in keys:
        values = sorted({str(f.get(k, "(not recorded)")) for f in flat})
        if len(values) > 1:
            diffs.append(f"{k.replace('versions.', '')}: {' / '.join(values)}")
    return "; ".join(diffs) if diffs else None


# ---- fingerprints of files and checkpoints ----------------------------------------------
cache_dir = cache_root  # where the fingerprint cache lives (harness.cache owns the rule)


#: A digest is cached only for files not modified in the last few seconds: file timestamps are
#: coarse (a few ms), so a file rewritten within one tick keeps its mtime ("racy git").
_RACY_S = 2.0


def file_stamp(path: Path) -> list[int]:
    """(size, mtime_ns, ctime_ns, inode): what changes when a file is replaced or edited in place."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def file_digest(path: Path, cache: dict[str, list] | None = None) -> str:
    """sha256 of every byte of ``path``; with ``cache`` (path -> [stat..., digest]), reused while
    (size, mtime_ns, ctime_ns, inode) are unchanged, so rerunning on a multi-GB checkpoint is instant."""
    st = path.stat()
    name = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    hit = cache.get(name) if cache is not None else None
    if isinstance(hit, list) and hit[:-1] == stamp:
        return hit[-1]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    if cache is not None and time.time() - max(st.st_mtime, st.st_ctime) > _RACY_S:
        cache[name] = [*stamp, digest]
    return digest


def checkpoint_fingerprint(path: str | Path) -> str:
    """Identity of a checkpoint directory or file: a hash of every byte of every file.

    Any changed weight changes it. Digests are cached in ``<cache root>/fingerprints.json``
    by path and (size, mtime_ns, ctime_ns, inode), so only new or modified files are read
    (sha256 reads several hundred MB/s; see benchmarks/fingerprint.py).
    """
    p = Path(path)
    if not p.exists():
        raise HarnessError(f"checkpoint not found: {p}")
    files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f, digest in zip(files, file_digests(files)):
        rel = f.relative_to(p) if p.is_dir() else Path(f.name)
        h.update(f"{rel.as_posix()}\0{digest}\0".encode())
    return h.hexdigest()[:16]


def file_digests(files: Sequence[Path]) -> list[str]:
    """:func:`file_digest` of each file, through the digest cache ``<cache root>/fingerprints.json``
    (checkpoints, data files): each file's bytes are read once, until it changes."""
    cache_file = cache_root() / "fingerprints.json"
    cache = _read_cache(cache_file)
    before = dict(cache)
    digests = [file_digest(Path(f), cache) for f in files]
    if cache != before:
        _write_cache(cache_file, cache)
    return digests


def state_dict_digest(module: Any, extra: Any = None) -> str:
    """Identity of a model held in memory (no checkpoint on disk, e.g. one being trained): sha256
    (16 hex digits) of every tensor of ``module.state_dict()`` (name, dtype, shape, bytes, in name
    order) plus ``extra`` (e.g. the architecture config) when given. Computed once, when its adapter
    is built (``Flamingo.from_module``, ``HF.from_objects``): weights changed later need a new one."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        flat = t.reshape(-1).contiguous().cpu()
        if flat.numel():
            h.update(flat.view(torch.uint8).numpy())
    if extra is not None:
        h.update(repr(extra).encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: dict[str, list]) -> None:
    """Best effort (a read-only home only costs rehashing); atomic, so concurrent runs never tear it."""
    try:
        with atomic_write(path) as f:
            f.write(json.dumps(cache))
    except OSError as exc:
        log.debug("fingerprint cache %s not written: %s", path, exc)


def media_key(media: Any) -> str:
    """A media item's key for caches that persist between runs: its identity plus, for a local file,
    (size, mtime_ns), so an image replaced in place is never served stale features. Dataset images
    (``hfds://<fingerprint>/...``) are keyed by content already."""
    return stamped(media.identity)


# ---- a model's identity before it loads ----------------------------------------------------
def preload_key(name: str, version: int, options: Mapping[str, Any]) -> str:
    """What determines a model adapter's :meth:`~harness.model.Model.config` without loading it: the
    adapter (name, version), every option (defaults included), the content of every file an option
    names (:func:`checkpoint_fingerprint`, cached by stat) and the code and libraries
    (:func:`environment`). Equal keys give equal configs, so a finished rerun need not load weights."""
    paths = {}
    for k, v in sorted(options.items()):
        if isinstance(v, str) and v and Path(v).exists():
            paths[k] = checkpoint_fingerprint(v)
    blob = json.dumps({"name": name, "version": version, "options": dict(options), "files": paths,
                       "environment": environment()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _model_configs_file() -> Path:
    return cache_dir() / "model_configs.json"


def known_model_config(key: str) -> dict[str, Any] | None:
    """What was recorded of a model with this :func:`preload_key` when it last loaded, or None."""
    found = _read_cache(_model_configs_file()).get(key)
    return found if isinstance(found, dict) else None


def remember_model_config(key: str, config: dict[str, Any], keep: int = 256) -> None:
    """Record a loaded model's config (and what planning reads of it) under its :func:`preload_key`
    (best effort; the newest ``keep``)."""
    path = _model_configs_file()
    cache = _read_cache(path)
    if cache.get(key) == config:
        return
    cache.pop(key, None)
    cache[key] = config
    _write_cache(path, dict(list(cache.items())[-keep:]))
