"""Moved to :mod:`harness.store` (layout, journal, locks, identity); kept so old imports work.

    <output>/<label>/<task>/<shots>shot_seed<seed>/
        predictions.jsonl   one SampleRecord per line, appended as each batch finishes
        journal.json        the cell's configuration and its key; a rerun with the same key resumes
        metrics.json        written last: metrics plus the complete configuration, sealed
        parts.jsonl         time spent by each process that worked on the cell (resume, shards)
        .lock               held (fcntl.flock) by the process working on the cell
        shards/<key>/<k>of<n>.jsonl   the journals of ``--shard k/n`` processes, merged later
    <output>/<label>/summary.json   mean/std over seeds per task x shots x configuration
"""

from harness.store.identity import config_diff, flatten as _flatten  # noqa: F401
from harness.store.journal import CellConflict, Journal, read_records as _read_records  # noqa: F401
from harness.store.layout import cell_dir, read_json, safe_name, write_json, writing  # noqa: F401
from harness.store.locks import CellLock  # noqa: F401
