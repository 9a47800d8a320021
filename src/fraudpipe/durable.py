"""Atomic, durable file writes: write elsewhere, fsync, close, rename in (DESIGN.md section 4).

Readers never see a partial file, on a local disk or on NFS (rename is atomic on the server).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the rename still stands
        pass
    finally:
        os.close(fd)


HOST = socket.gethostname().split(".")[0] or "host"


def _tmp_name(final: Path, tmp_dir: Path | None) -> Path:
    """A write in progress: `.<name>.<host>.<pid>.<random>.tmp`, so that what a killed writer
    left can be told from a write under way (writer_gone)."""
    where = tmp_dir if tmp_dir is not None else final.parent
    return where / f".{final.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def writer_gone(tmp_name: str) -> bool:
    """Whether the writer of a partial file (named by _tmp_name) is known to be dead: it ran on
    this host and its pid is gone. A writer on another host cannot be known (False)."""
    parts = tmp_name.rsplit(".", 4)
    if len(parts) != 5 or parts[4] != "tmp" or parts[1] != HOST or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


@contextlib.contextmanager
def _atomic(final: Path, tmp_dir: Path | None, fsync: bool) -> Iterator[BinaryIO]:
    """Yield a file to write; on success it is fsynced and renamed to final, else removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final, tmp_dir)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(final.parent)


def write_bytes(
    final: Path, data: bytes | memoryview, *, tmp_dir: Path | None = None, fsync: bool = True
) -> Path:
    """Write data to final atomically (replacing any previous file of that name)."""
    with _atomic(final, tmp_dir, fsync) as fh:
        fh.write(data)
    return final


def write_parquet(
    final: Path,
    df: pl.DataFrame,
    *,
    tmp_dir: Path | None = None,
    fsync: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write df as Parquet to final atomically (replacing any previous file of that name),
    with metadata as the file's key-value metadata.

    The file is encoded in memory, then written: a failing write (ENOSPC, EIO) then raises
    the OSError itself, with its errno, where polars would wrap it in an error of its own.
    """
    buffer = io.BytesIO()
    df.write_parquet(buffer, compression="lz4", statistics=False, metadata=metadata)
    return write_bytes(final, buffer.getbuffer(), tmp_dir=tmp_dir, fsync=fsync)


def write_json(final: Path, obj: Any, *, fsync: bool = True) -> Path:
    return write_bytes(
        final, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), fsync=fsync
    )
