"""Looking after a results store, without Click: can this host write it (`probe_local`, before
`stepscope run` starts Ray), what its readers read and skip and what killed writers left
(`inspect`, for `stepscope store check`), and removing those leftovers (`clean`, for
`stepscope store clean`). Each raises StoreError with the one line the CLI prints."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from stepscope.errors import one_line
from stepscope.storage.layout import Leftover, StoreReport
from stepscope.storage.store import Store


def probe_local(st: Store) -> None:
    """Can this host write the local store? StoreError when not. An existing store gets a
    probe file written and deleted; a store yet to be made is not made here (a run that
    stops before its first trial leaves no folder): its nearest existing parent must be a
    folder this process may write in."""
    from stepscope.storage.store import PROBE_DIR, probe_write

    root = st.local_root
    if os.path.isdir(root):
        probe_write(st, f"driver-{uuid.uuid4().hex[:12]}")
        with contextlib.suppress(OSError):  # other probes may be running
            os.rmdir(os.path.join(root, PROBE_DIR))
        return
    parent = root
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if os.path.islink(parent) and not os.path.exists(parent):
        raise st.error(f"cannot write there: {parent} is a link to "
                         f"{os.readlink(parent)!r}, which does not exist")
    if not os.path.isdir(parent):
        raise st.error(f"cannot write there: {parent} is a file, not a folder")
    probe = os.path.join(parent, f".stepscope-probe-{uuid.uuid4().hex[:12]}")
    try:  # a real folder made and removed: permissions alone do not tell (/proc, a read-only mount)
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        raise st.error(f"cannot write there: cannot make a folder in {parent}: "
                         f"{exc.strerror or exc}") from None


def inspect(st: Store) -> StoreReport:
    """Every table's files, read and skipped, and the leftovers of killed writers. StoreError
    when there is no store directory there, or a table cannot be listed."""
    import pyarrow.fs as pafs

    from stepscope.storage.layout import TableUnreadable, inspect_store

    fs, root = st.filesystem()
    try:
        info = fs.get_file_info(root)
    except OSError as exc:
        raise st.error(one_line(exc, with_type=False)) from None
    if info.type == pafs.FileType.NotFound:
        raise st.error("no store there (nothing was ever written to it); "
                         "give the store a sweep wrote to")
    if info.type != pafs.FileType.Directory:
        raise st.error("is a file, not a directory; give a store directory or a URI")
    try:
        return inspect_store(fs, root)
    except TableUnreadable as exc:
        raise st.error(exc) from None


@dataclass(frozen=True, slots=True)
class Cleaned:
    """What `clean` did: leftovers removed (or, in a dry run, that would be), leftovers kept
    as too young (or of unknown age), and the skipped files it left alone."""

    removed: int
    kept: int
    skipped: int


def clean(st: Store, older_than_s: float, *, dry_run: bool = False,
          on_removed: Callable[[Leftover], None] | None = None, now: float | None = None) -> Cleaned:
    """Remove the leftovers of killed writers older than `older_than_s` seconds (temporary
    files, and steps/devices files whose trial never got its trials row); files the readers
    skip are never removed. A file whose age the filesystem does not tell is kept, unless
    `older_than_s` is 0. `on_removed` hears of each file as it goes (a file that vanished
    meanwhile is not one). StoreError when one cannot be removed (those before it are gone)."""
    cutoff = (time.time() if now is None else now) - older_than_s
    report = inspect(st)
    fs, _ = st.filesystem()
    removed = kept = 0
    for item in report.leftovers:
        if (item.mtime is None and older_than_s > 0) or (item.mtime is not None and item.mtime > cutoff):
            kept += 1
            continue
        if not dry_run:
            try:
                fs.delete_file(item.path)
            except FileNotFoundError:
                continue  # its writer finished or another clean removed it
            except OSError as exc:
                raise st.error(f"cannot remove {item.path}: {one_line(exc, with_type=False)}") from None
        if on_removed is not None:
            on_removed(item)
        removed += 1
    return Cleaned(removed, kept, len(report.skipped))
