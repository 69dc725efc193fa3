"""Crash-safe file writes: write to a temporary name in the same folder, flush, fsync, rename.

`os.replace` is atomic on POSIX and Windows, so a reader (or a resumed run)
sees either the old complete file or the new complete file, never a torn one.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

from .errors import UserError

PathLike = Union[str, Path]


def _disk_error(path: Path, err: OSError) -> UserError:
    if err.errno == errno.ENOSPC:
        why = "the disk is full; free space or choose another directory"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied; choose a writable directory"
    else:
        why = f"{err.strerror or err}"
    return UserError(f"cannot write '{path}': {why} (the previous file, if any, is intact)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. Windows)
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    On any failure the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    except OSError as err:
        raise _disk_error(path, err) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_with(path: PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically create `path` with `writer(tmp_path)` (e.g. torch.save, DataFrame.to_csv)."""
    with atomic_path(path) as tmp:
        writer(tmp)


def replace_dir(target: PathLike, fill: Callable[[Path], None]) -> None:
    """Atomically replace directory `target` by one that `fill(tmp_dir)` writes.

    The new directory is complete on disk before the old one moves away; if a
    crash falls between the two renames, `<target>.old` still holds the previous
    complete copy (loaders look there, see `checkpoint.find_best_dir`).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as err:
        raise _disk_error(target, err) from None
    old = target.with_name(target.name + ".old")
    try:
        fill(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as handle:
                    os.fsync(handle.fileno())
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(target, err) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
