"""The table cache on its own: any key, one file per key, merged, atomic, damaged files ignored."""

from __future__ import annotations

import json

import pytest

from rlprune.hardware.measured.cache import TableCache

GPU_KEY = {"gpu": "NVIDIA H200", "driver": "570.1", "torch": "2.13.0", "cusparselt": "0.7.1"}


def test_a_table_round_trips_under_any_key(tmp_path):
    cache = TableCache(tmp_path, "local_gpu", GPU_KEY, format=3)
    assert cache.load() == {} and not cache.path.exists()
    assert cache.save({"a": 1e-6, "pace:m": 2e-6}) == {"a": 1e-6, "pace:m": 2e-6}
    assert cache.path.parent == tmp_path / "latency" and cache.path.name.startswith("local_gpu-")
    again = TableCache(tmp_path, "local_gpu", dict(reversed(GPU_KEY.items())), format=3)  # same key
    assert again.path == cache.path and again.load() == {"a": 1e-6, "pace:m": 2e-6}
    data = json.loads(cache.path.read_text())
    assert data["format"] == 3 and data["key"] == GPU_KEY
    assert data["checksum"] == TableCache.checksum(GPU_KEY, data["entries"])
    assert [p.name for p in cache.path.parent.iterdir()] == [cache.path.name]  # no temporary left


def test_each_key_has_its_own_file_and_a_save_keeps_what_another_process_added(tmp_path):
    cache = TableCache(tmp_path, "t", GPU_KEY, format=1)
    other = TableCache(tmp_path, "t", {**GPU_KEY, "driver": "575.0"}, format=1)
    assert other.path != cache.path
    cache.save({"a": 1.0})
    meanwhile = TableCache(tmp_path, "t", GPU_KEY, format=1)
    meanwhile.save({"b": 2.0})
    assert cache.save({"a": 3.0}) == {"a": 3.0, "b": 2.0}  # its own entries win
    assert other.load() == {}


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: json.dumps(data)[:40],  # truncated
        lambda data: json.dumps({**data, "format": 2}),  # another format
        lambda data: json.dumps({**data, "entries": {**data["entries"], "a": 5.0}}),  # checksum fails
        lambda data: json.dumps({**data, "key": {"gpu": "other"}}),  # another key, same name
        lambda data: json.dumps(
            {**data, "entries": {"a": -1.0}, "checksum": TableCache.checksum(data["key"], {"a": -1.0})}
        ),  # no entry is negative
    ],
    ids=["truncated", "format", "checksum", "key", "negative"],
)
def test_a_damaged_or_foreign_file_reads_as_empty_and_is_rewritten(tmp_path, caplog, damage):
    cache = TableCache(tmp_path, "t", GPU_KEY, format=1)
    cache.save({"a": 1.0})
    cache.path.write_text(damage(json.loads(cache.path.read_text())))
    with caplog.at_level("WARNING"):
        assert cache.load() == {}
    assert "is corrupt or stale" in caplog.text and "gpu, driver, torch, cusparselt" in caplog.text
    assert cache.save({"b": 2.0}) == {"b": 2.0}
    assert TableCache(tmp_path, "t", GPU_KEY, format=1).load() == {"b": 2.0}
