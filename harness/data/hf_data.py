"""Hugging Face ``datasets`` as task data: sources, column mappings and lazily decoded row images.

A task split can come from its official files (``files``, the default) or from a dataset::

    hf:PATH_OR_ID[@SPLIT]

- ``PATH`` a folder written by ``save_to_disk`` (a ``DatasetDict`` or one ``Dataset``);
- ``PATH`` a folder of parquet files (split from the file names, ``val2014-00000-of-00002.parquet``,
  or from the folder names, ``default/val/0000.parquet``), or a glob of parquet files (one split);
- ``ID`` a hub dataset id (``lmms-lab/VQAv2``) resolved from the local caches only: a hub snapshot
  (``huggingface-cli download --repo-type dataset ID``) or a dataset prepared by ``datasets.load_dataset``.
  Nothing is downloaded: the lookup runs in offline mode whatever ``HF_DATASETS_OFFLINE`` /
  ``HF_HUB_OFFLINE`` say, and a dataset that is not cached is a clear error.

``@SPLIT`` defaults to the task's split name. Parquet is converted once into the ``datasets`` Arrow
cache (``HF_DATASETS_CACHE``) and then memory-mapped, like a saved dataset.

Rows become Examples through the task's :class:`Columns` (logical name -> column, overridable with
the ``columns=logical:column,...`` task option). Image columns are never decoded while loading: each
row's image is a :class:`harness.types.DatasetImage` whose identity is ``hfds://<fingerprint>/<row>/<column>``,
decoded when a model asks for it (:func:`decode_image`, counted by :func:`decoded_images`).
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from collections.abc import Mapping
from typing import Any, Iterator, Sequence

from harness.errors import DataError, HarnessError, MediaError

log = logging.getLogger(__name__)

FILES = "files"
PREFIX = "hf:"
#: identity prefix of an image stored in a dataset row.
ROW_SCHEME = "hfds://"
SOURCE_HELP = ("expected 'files' (the official files) or 'hf:PATH_OR_ID[@SPLIT]' (a save_to_disk folder, "
               "a folder or glob of parquet files, or a dataset id in the local Hugging Face cache)")


# ---- source strings --------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``hf:PATH_OR_ID[@SPLIT]``; ``split`` None means "the task's split name"."""

    location: str
    split: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.location}" + (f"@{self.split}" if self.split else "")


def parse_source(value: str | None, what: str) -> SourceSpec | None:
    """``files`` (or empty) -> None; ``hf:PATH_OR_ID[@SPLIT]`` -> SourceSpec; anything else is an error."""
    text = (value or "").strip()
    if text in ("", FILES):
        return None
    if not text.startswith(PREFIX):
        raise HarnessError(f"{what}={value!r}: {SOURCE_HELP}")
    body = text[len(PREFIX):]
    location, split = body, None
    if "@" in body:
        location, split = body.rsplit("@", 1)
        split = split.strip() or None
    location = location.strip()
    if not location:
        raise HarnessError(f"{what}={value!r}: no path or dataset id after 'hf:'; {SOURCE_HELP}")
    return SourceSpec(location, split)


def parse_columns(value: str | None, logical: Sequence[str], what: str) -> dict[str, str]:
    """``logical:column,...`` -> {logical: column}; unknown logical names list the valid ones."""
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        if ":" not in item:
            raise HarnessError(f"{what}: {item!r} is not logical:column (e.g. question:q,answers:ans)")
        key, col = (s.strip() for s in item.split(":", 1))
        if key not in logical:
            raise HarnessError(f"{what}: {key!r} is not a field of this task; fields: {', '.join(logical)}")
        out[key] = col
    return out


# ---- column mappings (task data) -------------------------------------------------------------
@dataclass(frozen=True)
class Columns:
    """How a task reads dataset rows: logical field -> default column name.

    ``required`` must be present (after the ``columns`` option's overrides); ``optional`` are read
    when present (else None); names in ``media`` hold an image (an ``Image`` feature, or a string
    path read as a file). A task declares it as the class attribute ``hf_columns`` and turns one
    row (logical names -> values) into an Example in ``example_from_row``.
    """

    required: Mapping[str, str]
    optional: Mapping[str, str] = field(default_factory=dict)
    media: tuple[str, ...] = ("image",)

    @property
    def logical(self) -> list[str]:
        return [*self.required, *self.optional]

    def resolve(self, overrides: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """(required, optional) logical -> column, with the overrides applied."""
        req = {k: overrides.get(k, v) for k, v in self.required.items()}
        opt = {k: overrides.get(k, v) for k, v in self.optional.items()}
        return req, opt


def answer_strings(value: Any, where: str) -> tuple[str, ...]:
    """Answers given as a list of strings, a list of ``{"answer": ...}`` dicts, or one string."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(type(a) is str for a in value):  # the common case, fast
        return tuple(map(sys.intern, value))  # ten answers per question, mostly repeated: share them
    if isinstance(value, Mapping) and "answer" in value and isinstance(value["answer"], list):
        value = value["answer"]  # a struct of lists (Sequence of dicts stored column-wise)
    try:
        items = list(value)
    except TypeError:
        raise DataError(f"{where}: answers must be a list of strings or of {{'answer': ...}} dicts, "
                        f"got {type(value).__name__}") from None
    out = []
    for a in items:
        if isinstance(a, Mapping):
            if "answer" not in a:
                raise DataError(f"{where}: an answer dict has no 'answer' key (keys: {', '.join(map(str, a))})")
            a = a["answer"]
        out.append(str(a))
    return tuple(out)


# ---- opening a split ------------------------------------------------------------------------
@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Force offline mode for ``datasets``/``huggingface_hub`` while resolving a hub id (no network,
    no hang); both libraries read these module constants at call time."""
    import datasets.config as dconfig
    from huggingface_hub import constants as hconst

    saved = (dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE)
    dconfig.HF_HUB_OFFLINE = hconst.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, hconst.HF_HUB_OFFLINE = saved


_SHARD = re.compile(r"^(?P<split>[\w.]+?)-\d{5}-of-\d{5}(\.\w+)?\.parquet$")


def parquet_splits(folder: Path) -> dict[str, list[str]]:
    """Parquet files under ``folder`` by split: from ``<split>-00000-of-00002.parquet`` names, else from
    the parent folder's name (``default/val/0000.parquet``); files with neither go to split ``""``."""
    out: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        m = _SHARD.match(path.name)
        if m:
            split = m.group("split")
        elif path.parent != folder:
            split = path.parent.name
        else:
            split = ""
        out.setdefault(split, []).append(str(path))
    return out


@dataclass
class OpenedSplit:
    """One split of a dataset, opened (memory-mapped) but not decoded."""

    dataset: Any  # datasets.Dataset
    description: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return str(self.dataset._fingerprint)


#: split names a role prefers, in order, for the hint of a missing split
_ROLE_SPLITS = {"eval": ("validation", "val", "test", "dev", "eval"), "support": ("train", "training")}


def _hint_split(spec_text: str, have: Sequence[str]) -> str:
    """The split to suggest: for an eval source a validation/test split (never train when another
    exists), for a support source train."""
    have = list(have)
    if not have:
        return "SPLIT"
    role = "eval" if "eval_source" in spec_text else "support" if "support_source" in spec_text else None
    for name in _ROLE_SPLITS.get(role, ()):
        for h in have:
            if h.lower() == name or h.lower().startswith(name):
                return h
    if role == "eval":
        others = [h for h in have if not h.lower().startswith("train")]
        return (others or have)[0]
    return have[0]


def _no_split(spec_text: str, split: str, have: Sequence[str]) -> DataError:
    location = spec_text.split(f"={PREFIX}", 1)[-1].rsplit("@", 1)[0]
    return DataError(f"{spec_text}: no split {split!r}; it has {', '.join(repr(s) for s in have) or '(none)'}. "
                     f"Name one with @SPLIT, e.g. {PREFIX}{location}@{_hint_split(spec_text, have)}")


def _load_parquet(files: Sequence[str], split: str) -> Any:
    import datasets

    # One split's files only: preparing a whole hub snapshot would convert every split.
    name = split if re.fullmatch(r"\w+(\.\w+)*", split) else "data"
    try:
        return datasets.load_dataset("parquet", data_files={name: list(files)}, split=name)
    except _parquet_errors() as exc:  # a garbage or truncated file
        log.debug("parquet read failed", exc_info=True)
        if _parquet_rows(files) == 0:
            raise DataError(f"the parquet file(s) {', '.join(map(str, files[:3]))} of split {split!r} have no rows; "
                            f"pick a split with data") from None
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"cannot read the parquet file(s) {', '.join(map(str, files[:3]))}"
                        f"{' ...' if len(files) > 3 else ''}: {type(exc).__name__}: {first}; "
                        f"is each a complete parquet file?") from None


def _parquet_errors() -> tuple[type[BaseException], ...]:
    """What reading a bad parquet file raises: pyarrow's errors (ArrowInvalid is also a ValueError,
    ArrowIOError an OSError) and datasets' wrapping of them while it prepares the split."""
    import pyarrow
    from datasets.exceptions import DatasetsError

    return (OSError, ValueError, pyarrow.ArrowException, DatasetsError)


def _parquet_rows(files: Sequence[str]) -> int | None:
    """Rows in readable parquet files (None if any cannot be read as parquet)."""
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except _parquet_errors():
        return None


def _from_parquet_folder(folder: Path, spec_text: str, split: str) -> tuple[Any, dict]:
    by_split = parquet_splits(folder)
    named = {k: v for k, v in by_split.items() if k}
    if split in named:
        files = named[split]
    elif not named and "" in by_split:  # unsplit folder: every file is the one split
        files = by_split[""]
    else:
        raise _no_split(spec_text, split, sorted(named))
    return _load_parquet(files, split), {"kind": "parquet", "files": len(files)}


def _saved_without_data(path: Path) -> bool:
    """A save_to_disk folder (or each split of one) whose state lists no data files: an empty dataset."""
    states = [path / "state.json"] if (path / "state.json").is_file() else sorted(path.glob("*/state.json"))
    try:
        return bool(states) and any(not json.loads(s.read_text(encoding="utf-8")).get("_data_files") for s in states)
    except (OSError, ValueError, AttributeError):
        return False


def _open_path(path: Path, spec_text: str, split: str) -> tuple[Any, dict]:
    import datasets

    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # a damaged save_to_disk folder, or one saved with no rows
            if _saved_without_data(path):
                raise DataError(f"{spec_text}: {path} holds a dataset with no rows; pick a split with data") from None
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise DataError(f"{spec_text}: {path} is a damaged save_to_disk folder ({type(exc).__name__}: "
                            f"{first})") from None
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        dd = loaded
        if split not in dd:
            raise _no_split(spec_text, split, list(dd))
        return dd[split], {"kind": "save_to_disk"}
    if path.is_dir() and (path / "state.json").is_file():
        return loaded, {"kind": "save_to_disk"}
    if path.is_dir():
        return _from_parquet_folder(path, spec_text, split)
    files = sorted(glob.glob(str(path))) if any(c in str(path) for c in "*?[") else []
    if files:
        return _load_parquet(files, split), {"kind": "parquet", "files": len(files)}
    if path.is_file() and path.suffix == ".parquet":
        return _load_parquet([str(path)], split), {"kind": "parquet", "files": 1}
    raise DataError(f"{spec_text}: {path} is not a save_to_disk folder, a folder of parquet files, a parquet "
                    f"glob, or a dataset id (ids look like owner/name)")


def _looks_like_id(location: str) -> bool:
    return (not os.path.isabs(location) and not location.startswith(".") and location.count("/") <= 1
            and not any(c in location for c in "*?[\\") and not location.endswith(".parquet"))


def _open_hub_id(repo_id: str, spec_text: str, split: str) -> tuple[Any, dict]:
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with _offline():
        try:
            snapshot = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
            snapshot = None
        if snapshot is not None and parquet_splits(snapshot):
            ds, desc = _from_parquet_folder(snapshot, spec_text, split)
            return ds, {**desc, "kind": "hub snapshot", "revision": snapshot.name, "resolved": str(snapshot)}
        try:
            dd = datasets.load_dataset(repo_id)  # the "cache" builder: reads prepared Arrow files only
        except Exception as exc:  # noqa: BLE001 - any failure here means "not in the local cache"
            log.debug("load_dataset(%s) offline: %r", repo_id, exc)
            raise DataError(
                f"{spec_text}: dataset {repo_id!r} is not in the local Hugging Face cache "
                f"(hub cache: {_hub_cache()}, datasets cache: {datasets.config.HF_DATASETS_CACHE}); nothing is "
                f"downloaded at run time. Make it available first, e.g. `huggingface-cli download --repo-type "
                f"dataset {repo_id}` (or datasets.load_dataset({repo_id!r}) once online), or pass a "
                f"save_to_disk / parquet folder as hf:PATH@SPLIT") from None
    if split not in dd:
        raise _no_split(spec_text, split, list(dd))
    ds = dd[split]
    revision = Path(ds.cache_files[0]["filename"]).parent.name if ds.cache_files else None
    return ds, {"kind": "datasets cache", "revision": revision}


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


_OPEN: dict[tuple[str, str], OpenedSplit] = {}
_OPEN_LOCK = threading.Lock()


def open_split(spec: SourceSpec, default_split: str, what: str) -> OpenedSplit:
    """Open ``spec`` (split ``spec.split`` or ``default_split``) without decoding anything; cached per process."""
    split = spec.split or default_split
    location = spec.location
    path = Path(location).expanduser()
    exists = path.exists() or any(c in location for c in "*?[")
    key = (str(path.resolve()) if exists else location, split)
    with _OPEN_LOCK:
        if key in _OPEN:
            return _OPEN[key]
    spec_text = f"{what}={PREFIX}{location}@{split}"
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise HarnessError(f"{spec_text}: reading Hugging Face datasets needs the datasets package "
                           f"(pip install -r requirements.txt)") from None
    if exists and not (path.is_dir() or path.is_file()) and not any(c in location for c in "*?["):
        raise DataError(f"{spec_text}: {path} is neither a folder nor a file")
    if exists or not _looks_like_id(location):
        ds, desc = _open_path(path, spec_text, split)
        desc["resolved"] = str(path.resolve()) if path.exists() else location
    else:
        ds, desc = _open_hub_id(location, spec_text, split)
    if ds.num_rows == 0:
        raise DataError(f"{spec_text}: the split has no rows; pick a split with data (or check the files)")
    opened = OpenedSplit(ds, {"source": f"{PREFIX}{location}@{split}", "location": location, "split": split,
                              **desc, "fingerprint": str(ds._fingerprint), "num_rows": ds.num_rows})
    register_dataset(opened.fingerprint, ds)
    with _OPEN_LOCK:
        _OPEN[key] = opened
    return opened


# ---- rows -> values, without decoding media ----------------------------------------------------
def check_columns(opened: OpenedSplit, required: Mapping[str, str], optional: Mapping[str, str],
                  what: str, option: str) -> dict[str, str]:
    """The logical -> column map restricted to present columns; a missing required one is a DataError."""
    have = list(opened.dataset.column_names)
    for logical, col in required.items():
        if col not in have:
            raise DataError(
                f"{what}: {opened.description['source']}: no column {col!r} (field {logical!r}); the dataset has "
                f"{', '.join(have)}. Map it with --task-arg {option}={logical}:COLUMN")
    features = getattr(opened.dataset, "features", None) or {}
    col = required.get("answers")
    if col is not None and type(features.get(col)).__name__ == "Value":
        log.warning("%s: %s: the answers column %r holds one string per row, so each question has ONE reference "
                    "answer (scored by the task's rule for other than ten answers, non_ten_answers); if it is not the "
                    "answers, map answers to a list column with --task-arg %s=answers:COLUMN",
                    what, opened.description["source"], col, option)
    return {**required, **{k: c for k, c in optional.items() if c in have}}


def read_rows(opened: OpenedSplit, mapping: Mapping[str, str], media: Sequence[str],
              media_dir: str | None = None) -> Iterator[dict[str, Any]]:
    """Each row as {logical: value}. A media name gets a lazy :class:`DatasetImage` (an ``Image`` column,
    never decoded here) or a file :class:`Image` (a string column: a path, relative to ``media_dir``,
    else to the dataset's folder)."""
    import datasets

    from harness.types import Image

    ds = opened.dataset
    embedded = {k: c for k, c in mapping.items() if k in media and isinstance(ds.features[c], datasets.Image)}
    plain = {k: c for k, c in mapping.items() if k not in embedded}
    resolved = Path(opened.description.get("resolved", "."))
    base = Path(media_dir) if media_dir else (resolved if resolved.is_dir() else resolved.parent)
    fp = opened.fingerprint
    i = 0
    # Every other column is read (Arrow -> Python) batch by batch; embedded images are never touched here.
    for table, n in _column_batches(ds, sorted(set(plain.values()))):
        for j in range(n):
            row = {k: table[c][j] for k, c in plain.items()}
            for k in media:
                if k in embedded:
                    row[k] = row_image(fp, i, embedded[k])
                elif row.get(k) is not None:
                    row[k] = Image(str(base / str(row[k])))
            yield row
            i += 1


def _column_batches(ds: Any, columns: Sequence[str], batch_size: int = 10_000) -> Iterator[tuple[dict[str, list], int]]:
    """({column: Python list}, rows) per Arrow batch; a list of ``{answer, ...}`` structs is read as its
    answer strings only (ten dicts per VQA question would cost ~2.5 KB each in Python)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not columns:
        yield {}, ds.num_rows
        return
    for batch in ds.select_columns(list(columns)).with_format("arrow").iter(batch_size=batch_size):
        out = {}
        for c in columns:
            arr = batch.column(c).combine_chunks()
            if (pa.types.is_list(arr.type) and pa.types.is_struct(arr.type.value_type)
                    and arr.type.value_type.get_field_index("answer") >= 0 and arr.null_count == 0):
                arr = pa.ListArray.from_arrays(arr.offsets, pc.struct_field(arr.values, "answer"))
            out[c] = arr.to_pylist()
        yield out, batch.num_rows


def row_image(fingerprint: str, row: int, column: str):
    from harness.types import DatasetImage

    return DatasetImage(f"{ROW_SCHEME}{fingerprint}/{row}/{column}")


# ---- lazy decoding ---------------------------------------------------------------------------
_DATASETS: dict[str, Any] = {}
_RAW: dict[tuple[str, str], Any] = {}
_COUNT_LOCK = threading.Lock()
_decoded = 0


def register_dataset(fingerprint: str, dataset: Any) -> None:
    """Make ``dataset``'s rows decodable by identity in this process."""
    _DATASETS.setdefault(fingerprint, dataset)


def decoded_images() -> int:
    """How many dataset-row images this process has decoded (a test/memory probe)."""
    return _decoded


def is_row_image(path: str) -> bool:
    return path.startswith(ROW_SCHEME)


def decode_image(identity: str):
    """The RGB PIL image of ``hfds://<fingerprint>/<row>/<column>``: reads that row's bytes only."""
    global _decoded
    import datasets
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        fp, row, column = identity[len(ROW_SCHEME):].split("/", 2)
        index = int(row)
    except ValueError:
        raise MediaError(f"not a dataset image identity: {identity}") from None
    ds = _DATASETS.get(fp)
    if ds is None:
        raise MediaError(f"{identity}: the dataset with fingerprint {fp} is not open in this process")
    key = (fp, column)
    raw = _RAW.get(key)
    if raw is None:  # decode=False: rows give {"bytes", "path"}, and only this column is read
        raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        _RAW[key] = raw
    try:
        value = raw[index][column]
    except IndexError:
        raise MediaError(f"{identity}: row {index} is out of range ({raw.num_rows} rows)") from None
    if value is None:
        raise MediaError(f"{identity}: the row has no image")
    data, path = value.get("bytes"), value.get("path")
    try:
        with (PILImage.open(io.BytesIO(data)) if data else PILImage.open(path)) as im:
            out = im.convert("RGB")
    except FileNotFoundError:
        raise MediaError(f"{identity}: image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as exc:
        raise MediaError(f"{identity}: image could not be read ({exc})") from None
    with _COUNT_LOCK:
        _decoded += 1
    return out


def file_stem(value: Any) -> str:
    return PurePosixPath(str(value)).stem
