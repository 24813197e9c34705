"""The results store: the one owner of every rule about results.

- :mod:`harness.store.layout`   where a cell's files live, safe names, labels, atomic JSON writes
- :mod:`harness.store.journal`  the ONE reader and writer of ``predictions.jsonl``
- :mod:`harness.store.locks`    the per-cell OS file lock
- :mod:`harness.store.identity` a cell's configuration, its key, fingerprints, the readable diff,
  which fields ``compare`` averages over seeds and which ``--baseline`` pairs on
- :mod:`harness.store.results`  reading finished cells (report, compare, summary, paired, viewer)
"""
