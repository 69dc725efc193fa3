"""One training process per run directory: an exclusive lock file, `<run_dir>/.lock`.

The lock is an OS lock (`fcntl.flock`) on that file, so it dies with its process,
SIGKILL included: a lock left by a dead process is never stale. The file names the
holder (pid, host) for the error message. Where the filesystem has no flock (some
network/FUSE mounts), the file's pid is the lock, and a pid that no longer runs on
this host is taken as stale.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Optional

from plaintune.errors import UserError
from plaintune.names import LOCK_FILE


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _holder(text: str) -> tuple[Optional[int], str]:
    """(pid, host) from a lock file's text "pid host"; (None, "") for anything else."""
    pid, _, host = text.strip().partition(" ")
    return (int(pid), host) if pid.isdigit() and "\n" not in host else (None, "")


def _read_holder(path: Path) -> tuple[Optional[int], str]:
    try:
        return _holder(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, ""


class RunLock:
    """`with RunLock(run_dir, run_name):` holds the run for the block; a second holder gets a UserError."""

    def __init__(self, run_dir: Path, run_name: str):
        self.path = Path(run_dir) / LOCK_FILE
        self.run_name = run_name
        self.fd: Optional[int] = None
        self.created: list[Path] = []  # folders this lock made (the run's, output_dir ...), innermost first

    def _refuse(self, pid: Optional[int], host: str) -> UserError:
        who = (
            f"pid {pid}" + (f" on {host}" if host and host != socket.gethostname() else "")
            if pid
            else "another process"
        )
        return UserError(
            f"run_name: '{self.run_name}' is being trained right now by {who} (lock {self.path}); wait "
            "for it to finish, stop it, or choose another run_name=..."
        )

    def acquire(self) -> "RunLock":
        try:
            return self._acquire()
        except UserError:
            self._remove_created()  # the loser of a race leaves nothing behind
            raise

    def _remove_created(self) -> None:
        for folder in self.created:  # a run that stopped before writing anything leaves no empty directory
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: a run wrote into it

    def _acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; the pid file alone
            fcntl = None
        try:
            self.created = [folder for folder in (self.path.parent, *self.path.parent.parents) if not folder.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    if fcntl is None:
                        raise OSError(errno.ENOSYS, "no flock")
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise self._refuse(*_read_holder(self.path)) from None
                except OSError as err:
                    if err.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                        os.close(fd)
                        raise
                    pid, host = _read_holder(self.path)  # no flock here: the pid in the file is the lock
                    if pid and pid != os.getpid() and host == socket.gethostname() and _pid_alive(pid):
                        os.close(fd)
                        raise self._refuse(pid, host) from None
                # The holder before us may have removed the file after we opened it: lock the file
                # that is at the path now, or two processes could each hold a different inode.
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            # A file at this path that is neither empty nor "pid host" is another tool's: never truncate it
            earlier = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            if earlier and _holder(earlier)[0] is None:
                os.close(fd)
                raise UserError(
                    f"'{self.path}' is not plaintune's lock file (it holds something else); "
                    f"'{self.path.parent}' is not a plaintune run: choose another run_name=..."
                )
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as err:
            raise UserError(
                f"cannot write '{self.path}' (the run's lock file): {err.strerror or err}; choose a writable output_dir"
            ) from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # removed while still held, so no one locks a dead file
        except OSError:
            pass
        os.close(self.fd)  # closing releases the flock
        self.fd = None
        self._remove_created()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
