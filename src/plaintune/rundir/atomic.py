"""Crash-safe file writes: write to a temporary name in the same folder, flush, fsync, rename.

`os.replace` is atomic on POSIX and Windows, so a reader (or a resumed run)
sees either the old complete file or the new complete file, never a torn one.

Temporaries are named `.NAME.XXXXXXXX.tmp` next to their target, so a run can
find and delete what a killed write left behind (ownership.stale_temporaries: only
plaintune's own names in its own folders).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Union

from plaintune.errors import UserError
from plaintune.names import OLD_SUFFIX, TEMP_SUFFIX, temp_prefix

PathLike = Union[str, Path]

# A failed write with less free space than this left on its file system ran out of space,
# whatever the writer's exception says (torch.save reports it as "unexpected pos N vs M").
FULL_DISK_BYTES = 1 << 20
DISK_FULL = "the disk is full; free space or choose another directory"
# Exceptions other than OSError that writers raise for an I/O failure: torch.save's
# PytorchStreamWriter (a RuntimeError) and safetensors' serializer. Anything else a writer
# raises (e.g. an object that cannot be pickled) is a bug in plaintune and propagates.
WRITER_IO_FAILURES = (
    "PytorchStreamWriter",
    "inline_container",
    "file write failed",
    "unexpected pos",
    "I/O error",
    "Error while serializing",
)


def _errnos(err: BaseException) -> set[int]:
    """errno values of `err` and the exceptions it was raised from."""
    found, seen = set(), set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            found.add(err.errno)
        err = err.__cause__ or err.__context__
    return found


def _disk_full(folder: Path, err: BaseException) -> bool:
    codes = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
    if _errnos(err) & codes or "No space left" in str(err) or "os error 28" in str(err):
        return True
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_error(path: Path, err: BaseException) -> Optional[UserError]:
    """The UserError for a failed write of `path`, or None when `err` is no I/O failure (a bug).

    Call it before removing the temporary: the space it holds is what shows a full disk.
    """
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent  # disk_usage needs a folder that exists
    if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied; choose a writable directory"
    elif _disk_full(folder, err):
        why = DISK_FULL
    elif isinstance(err, OSError):
        why = err.strerror or _first_line(err)
    elif any(marker in str(err) for marker in WRITER_IO_FAILURES):
        why = f"the write failed ({_first_line(err)})"
    else:
        return None
    return UserError(f"cannot write '{path}': {why} (the previous file, if any, is intact)")


def _disk_error(path: Path, err: OSError) -> UserError:
    return _write_error(path, err) or UserError(f"cannot write '{path}': {_first_line(err)}")


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike, before_replace: Optional[Callable[[], None]] = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    `before_replace` runs once the temporary is complete on disk, just before the rename
    (e.g. to rotate the file being replaced). On any failure the temporary file is
    removed and `path` is left untouched; I/O failures become a `UserError` naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    except OSError as err:
        raise _disk_error(path, err) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as err:
        mapped = _write_error(path, err)  # before the unlink: the temporary's bytes show a full disk
        tmp.unlink(missing_ok=True)
        if mapped is None:
            raise
        raise mapped from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def json_safe(value):
    """`value` with every NaN and inf as None (null): JSON has no such numbers, strict readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return [json_safe(v) for v in value] if isinstance(value, (list, tuple)) else value


def write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def write_with(
    path: PathLike, writer: Callable[[Path], None], before_replace: Optional[Callable[[], None]] = None
) -> None:
    """Atomically create `path` with `writer(tmp_path)` (e.g. torch.save, DataFrame.to_csv)."""
    with atomic_path(path, before_replace) as tmp:
        writer(tmp)


def _make_temp_dir(target: Path, where: Path) -> Path:
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name or "dir"), suffix=TEMP_SUFFIX, dir=where))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as err:
        raise _disk_error(target, err) from None
    return tmp


def _fsync_tree(folder: Path) -> None:
    """fsync every file, giving each the usual permissions (some writers, e.g. safetensors, make 0600)."""
    mode = 0o666 & ~_umask()
    for file in folder.rglob("*"):
        if file.is_file():
            with contextlib.suppress(OSError):
                os.chmod(file, mode)
            _fsync_file(file)


def replace_dir(target: PathLike, fill: Callable[[Path], None]) -> None:
    """Atomically replace directory `target` by one that `fill(tmp_dir)` writes.

    The new directory is complete on disk before the old one moves away; if a
    crash falls between the two renames, `<target>.old` still holds the previous
    complete copy (loaders look there, see `rundir.find_best_dir`).
    """
    target = Path(target)
    tmp = _make_temp_dir(target, target.parent)
    old = target.with_name(target.name + OLD_SUFFIX)
    try:
        fill(tmp)
        _fsync_tree(tmp)
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as err:
        mapped = _write_error(target, err)
        shutil.rmtree(tmp, ignore_errors=True)
        if mapped is None:
            raise
        raise mapped from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_into_dir(target: PathLike, fill: Callable[[Path], None], remove: Iterable[str] = ()) -> list[str]:
    """Write the files `fill(tmp_dir)` makes into the existing (or new) directory `target`.

    Unlike `replace_dir`, files of `target` that `fill` does not write stay where they are;
    each written file replaces its namesake atomically, and the names in `remove` that
    `fill` did not write are deleted after the new files are in place (e.g. weight files of
    another format that would shadow the new ones). The temporary directory lives inside
    `target` (so the renames stay on one file system, even for `.`) and is always removed.
    Returns the relative paths written.
    """
    target = Path(target)
    tmp = _make_temp_dir(target, target)
    try:
        fill(tmp)
        _fsync_tree(tmp)
        written = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        for name in written:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / name, target / name)
        for name in set(remove) - set(written):
            if (target / name).is_file():
                (target / name).unlink()
        _fsync_dir(target)
        return written
    except Exception as err:
        mapped = _write_error(target, err)
        if mapped is None:
            raise
        raise mapped from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
