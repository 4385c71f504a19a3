"""Files that matched their sha256, remembered by what `stat` says about them (git's index does the same).

`load` checks every graph against the manifest's sha256 before ONNX Runtime reads it: about 0.5 s for a
t5-small export (566 MB), on every load, every CLI call. A file that matched a sha256 is remembered with its
size, modification and status-change times (nanoseconds), inode and device; while all of them are unchanged
the file is not hashed again. Writing to a file changes its status-change time, which no user program can set
back. An explicit check (`ortdecode.verify_checksums`, `ortdecode verify`, `ortdecode check`) always hashes.

The record is one JSON file in the user's cache folder: $ORTDECODE_CACHE_DIR, else $XDG_CACHE_HOME/ortdecode,
else ~/.cache/ortdecode. A record that cannot be read or written (a read-only home) only means hashing again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RECORD_FILE = "verified-files.json"
_MAX_ENTRIES = 2000  # beyond it, entries of files that no longer exist are dropped first, then the oldest


def cache_dir() -> Path:
    configured = os.environ.get("ORTDECODE_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ortdecode"


def file_signature(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev]


class VerifiedFiles:
    """The record: resolved path -> the sha256 the file matched and its signature then."""

    def __init__(self) -> None:
        self.path = cache_dir() / RECORD_FILE
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            entries = {}
        self.entries: dict = entries if isinstance(entries, dict) else {}
        self.changed = False

    def unchanged_since_match(self, path: Path, sha256: str) -> bool:
        return self._entry(path, sha256) is not None

    def external_data(self, path: Path, sha256: str) -> list[str] | None:
        """The external-data files a graph named when it matched `sha256`, if it is unchanged since (reading
        them from the graph walks every node in Python: 16-27 ms for a t5-small decoder)."""
        names = (self._entry(path, sha256) or {}).get("external_data")
        return list(names) if isinstance(names, list) else None

    def _entry(self, path: Path, sha256: str) -> dict | None:
        entry = self.entries.get(str(path.resolve()))
        if isinstance(entry, dict) and entry.get("sha256") == sha256 and entry.get("stat") == file_signature(path):
            return entry
        return None

    def remember(self, path: Path, sha256: str, signature: list[int], external_data: list[str] | None = None) -> None:
        """`signature`: taken before the file was hashed; nothing is remembered if the file changed since.
        external_data: for a graph, the external-data files it names."""
        if file_signature(path) != signature:
            return
        key = str(path.resolve())
        self.entries.pop(key, None)  # re-inserted last: the dict keeps the most recent entries at the end
        self.entries[key] = {"sha256": sha256, "stat": signature}
        if external_data is not None:
            self.entries[key]["external_data"] = sorted(external_data)
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        if len(self.entries) > _MAX_ENTRIES:
            self.entries = {k: v for k, v in self.entries.items() if Path(k).exists()}
            self.entries = dict(list(self.entries.items())[-_MAX_ENTRIES:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".verified-files-", suffix=".json")
            with os.fdopen(handle, "w") as out:
                json.dump(self.entries, out)
            os.replace(temporary, self.path)  # readers see the old record or the new one, never half of one
        except OSError:
            pass
        self.changed = False
