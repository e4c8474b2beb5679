"""A measured latency table kept on disk: one JSON file per key, checksummed, written atomically.

The file ``<cache_dir>/latency/<name>-<digest>.json`` holds ``format`` (the table's cache
format: a model raises it when what its entries mean changes), ``key`` (what the entries
were measured on: a dict of plain values the model chooses, such as a CPU's model, ISA, torch
version and thread count, or a GPU's name and driver), ``entries`` (table key -> seconds) and
``checksum`` (SHA-256 over key and entries). ``digest`` is the key's SHA-256, so each key has
its own file. A file that is absent, corrupt, truncated, of another format or of another key
reads as empty (with a warning) and is rewritten on the next save.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rlprune.io import write_json_atomic

log = logging.getLogger(__name__)


class TableCache:
    """The file that keeps one latency table (entry key -> seconds) for one machine key.

    Attributes:
        key: what the entries were measured on (plain JSON values); part of the file name.
        format: the cache format the entries are written and read in.
        path: ``<cache_dir>/latency/<name>-<first 16 hex digits of the key's SHA-256>.json``.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], name: str, key: Mapping[str, Any], format: int
    ) -> None:
        self.key = dict(key)
        self.format = format
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / "latency" / f"{name}-{digest}.json"

    @staticmethod
    def checksum(key: Mapping[str, Any], entries: Mapping[str, float]) -> str:
        """The SHA-256 (hex) a file holds over its key and entries."""
        body = json.dumps({"key": key, "entries": entries}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()

    def read(self, warn: bool = True) -> dict[str, float] | None:
        """The entries of the file, or None when it is absent, corrupt or of another format or
        key (said in a warning, unless ``warn`` is false)."""
        if not self.path.is_file():
            return None
        try:
            data = json.loads(self.path.read_text())
            ok = (
                isinstance(data, dict)
                and data.get("format") == self.format
                and data.get("key") == self.key
                and isinstance(data.get("entries"), dict)
                and data.get("checksum") == self.checksum(data["key"], data["entries"])
            )
            entries = data["entries"] if ok else {}
            ok = ok and all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in entries.values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok:
            if warn:
                log.warning(
                    "latency cache %s is corrupt or stale (another format, or measured on another "
                    "machine or software: %s); it will be rebuilt",
                    self.path,
                    ", ".join(self.key),
                )
            return None
        return dict(entries)

    def load(self) -> dict[str, float]:
        """The entries of the file; empty where :meth:`read` finds none."""
        return self.read() or {}

    def save(self, entries: Mapping[str, float], forget: str = "") -> dict[str, float]:
        """Write ``entries`` over those on disk (another process may have added some meanwhile),
        atomically, less those whose key starts with ``forget`` when given; return the merged
        entries, which are what the file now holds."""
        merged = {**(self.read(warn=False) or {}), **entries}
        if forget:
            merged = {key: seconds for key, seconds in merged.items() if not key.startswith(forget)}
        write_json_atomic(
            self.path,
            {
                "format": self.format,
                "key": self.key,
                "checksum": self.checksum(self.key, merged),
                "entries": merged,
            },
        )
        return merged
