"""What a path argument names, told in one line: a file, a folder, a device, a symlink loop, nothing.

Every path a user gives (a data file, a checkpoint, --resume, model.init_from, output_dir) goes
through `path_kind`, so "does not exist" is said only of a path that does not exist: /dev/null
is a device, a folder given for a file is a folder, a symlink loop is a loop, and a folder on the
way that cannot be searched is "permission denied" (os.stat, since newer Pythons' Path.is_file
answers False for it).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Union

from plaintune.errors import UserError

FILE, DIR, MISSING, DEVICE, LOOP, DENIED, OTHER = "file", "directory", "missing", "device", "loop", "denied", "other"


def path_kind(path: Union[str, Path]) -> tuple[str, str]:
    """(kind, detail): one of FILE, DIR, MISSING, DEVICE, LOOP, DENIED, OTHER; detail says why for the odd ones."""
    try:
        mode = os.stat(path).st_mode
    except PermissionError as err:
        return DENIED, err.strerror or "permission denied"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return LOOP, "a symbolic link loop (it points, through others, back to itself)"
        if err.errno == errno.ENOTDIR:
            return MISSING, "a part of the path on the way is a file, not a folder"
        return MISSING, err.strerror or "not found"
    except ValueError:  # an embedded NUL byte
        return MISSING, "not a valid path"
    if stat.S_ISREG(mode):
        return FILE, ""
    if stat.S_ISDIR(mode):
        return DIR, ""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return DEVICE, "a device"
    if stat.S_ISFIFO(mode):
        return OTHER, "a named pipe"
    if stat.S_ISSOCK(mode):
        return OTHER, "a socket"
    return OTHER, "a special file"


def _what(kind: str, detail: str) -> str:
    return {
        FILE: "a file",
        DIR: "a directory",
        MISSING: "does not exist",
        DEVICE: detail,
        LOOP: detail,
        DENIED: "permission denied",
        OTHER: detail,
    }[kind]


def require(path: Union[str, Path], key: str, want: tuple[str, ...] = (FILE,), fix: str = "") -> str:
    """The kind of `path` if it is one of `want`; else a UserError in one line naming `key`, the path,
    what it is instead and `fix` (default: fix the path)."""
    kind, detail = path_kind(path)
    if kind in want:
        return kind
    wanted = " or ".join("a file" if w == FILE else "a directory" for w in want if w in (FILE, DIR))
    fix = fix or f"fix the path or override it ({key}=...)"
    where = f"{key}: '{path}'"
    if kind == MISSING:
        detail_text = "" if detail in ("not found", "No such file or directory") else f" ({detail})"
        raise UserError(f"{where} does not exist{detail_text}; {fix}")
    if kind == DENIED:
        raise UserError(f"{where}: permission denied; make it and its folders readable, or copy it somewhere readable")
    raise UserError(f"{where} is {_what(kind, detail)}, not {wanted}; {fix}")


def check_readable(path: Union[str, Path], key: str) -> None:
    """A file or folder that exists but cannot be read (its contents listed) is named as such."""
    path = Path(path)
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except PermissionError:
        raise UserError(
            f"{key}: cannot read '{path}': permission denied; make it readable (chmod -R u+rX "
            f"'{path}') or copy it somewhere readable"
        ) from None
    except OSError as err:
        raise UserError(f"{key}: cannot read '{path}': {err.strerror or err}") from None
