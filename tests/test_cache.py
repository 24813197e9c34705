"""harness.cache: the byte-bounded LRU every in-memory cache uses, atomic writes, the file stamp rule."""

import os
import threading

import pytest

from harness.cache import ByteLRU, atomic_write, cache_root, file_stamp, stamped


def test_byte_lru_evicts_least_recent_by_bytes_and_count():
    lru = ByteLRU(10, len)
    for k in "abc":
        lru.put(k, "xxx")  # 9 bytes
    assert lru.lookup("a") == "xxx"  # a is now the most recent
    lru.put("d", "xx")  # 11 bytes: b (least recent) goes
    assert "b" not in lru and {"a", "c", "d"} <= {k for k in "abcd" if k in lru}
    assert lru.nbytes == 8 and lru.evictions == 1 and (lru.hits, lru.misses) == (1, 0)
    lru.put("big", "x" * 11)  # never fits: kept nowhere, evicts nothing
    assert "big" not in lru and len(lru) == 3 and lru.evictions == 2
    counted = ByteLRU(100, len, max_items=2)
    for k in "abc":
        counted.put(k, "x")
    assert len(counted) == 2 and "a" not in counted
    loads = []
    assert counted.get("z", lambda: loads.append(1) or "v") == "v" == counted.get("z", lambda: loads.append(1))
    assert loads == [1] and counted.misses == 1
    counted.clear()
    assert len(counted) == 0 and counted.nbytes == 0 and counted.hits == 0


def test_byte_lru_is_safe_across_threads():
    lru = ByteLRU(1000, len)

    def work(i):
        for j in range(500):
            lru.put((i, j % 50), "x" * (j % 7 + 1))
            lru.lookup((i, j % 50))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lru.nbytes == sum(len(v) for v, _ in lru._items.values()) <= 1000


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "f.json"
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["f.json"]
    with atomic_write(path, "wb") as f:
        f.write(b"\x00new")
    assert path.read_bytes() == b"\x00new"


def test_atomic_write_names_the_file_in_a_disk_error(tmp_path):
    path = tmp_path / "f.txt"
    with pytest.raises(OSError) as info, atomic_write(path) as f:
        raise OSError(28, "No space left on device")  # what a full disk's write() raises: no file name
    assert info.value.filename == str(path) and not path.exists() and not list(tmp_path.iterdir())


def test_file_stamp_and_stamped_keys(tmp_path, monkeypatch):
    f = tmp_path / "img.png"
    f.write_bytes(b"1234")
    st = os.stat(f)
    assert file_stamp(f) == (4, st.st_mtime_ns) and file_stamp(tmp_path / "gone") is None
    key = stamped(str(f))
    f.write_bytes(b"12345")  # replaced in place: another key
    assert stamped(str(f)) != key and stamped(str(f)).startswith(f"{f}|5:")
    assert stamped("hfds://abc/1/image") == "hfds://abc/1/image"
    assert stamped(str(tmp_path / "gone")) == str(tmp_path / "gone")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
