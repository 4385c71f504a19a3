"""The output folder of an export: which folders may be written or replaced, one export at a time, and
no half-written folder left behind.

An export is built in a staging folder beside OUT_DIR (same file system, so the final move is a
rename) and moved into place only once its files and manifest are written. A lock file beside OUT_DIR
(`flock`, released by the kernel if the process dies) keeps a second export out of the same folder.
`--force` replaces only what ortdecode made: a previous export (a folder with ortdecode.json) or an
empty folder, never a folder with other files, and never the model's own folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ortdecode.manifest import MANIFEST_FILE


def check_out_dir(out_dir: Path, source: str | Path, force: bool) -> None:
    """Refuse an OUT_DIR that is, contains or lies inside the source folder, or holds files that are not a
    previous export (or any files, without `force`)."""
    if Path(source).exists():
        model, out = Path(source).resolve(), out_dir.resolve()
        if out == model:
            raise ValueError(f"OUT_DIR {out_dir} is the model folder itself; choose another folder")
        if out in model.parents:
            raise ValueError(f"OUT_DIR {out_dir} contains the model folder {source}; choose another folder")
        if model in out.parents:
            raise ValueError(f"OUT_DIR {out_dir} lies inside the model folder {source}; choose another folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not force:
        raise ValueError(f"OUT_DIR {out_dir} is not empty; pass --force to overwrite it")
    if not (out_dir / MANIFEST_FILE).is_file():
        raise ValueError(f"OUT_DIR {out_dir} holds files but no {MANIFEST_FILE}: --force only replaces a previous "
                         "ortdecode export or an empty folder; remove it yourself or choose another folder")


@contextlib.contextmanager
def export_lock(out_dir: Path) -> Iterator[None]:
    """Hold `.OUT_DIR.lock` beside OUT_DIR for the whole export; refuse when another export holds it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = out_dir.parent / f".{out_dir.name}.lock"
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ValueError(f"another export into {out_dir} is running (it holds {path}); wait for it to finish "
                             "or choose another OUT_DIR") from None
        # The previous holder may have removed the file between our open and flock: lock the current one.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside OUT_DIR, removed unless `publish` moved it into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to OUT_DIR, replacing what `check_out_dir` allowed to replace."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(staging, out_dir)
