"""What a finished run occupies on disk, and dropping its resume bundles once nothing needs them."""

from __future__ import annotations

import shutil
from pathlib import Path

from plaintune.names import LAST_FILE, STEP_DIR


def size_of(path: Path) -> int:
    """Bytes in `path` (a file, or every file below a folder; links are not followed)."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def drop_resume_bundles(run_dir: Path) -> int:
    """Delete last.pt and checkpoints/ of a run that finished (checkpoint.keep_last_after_finish:
    false); returns the bytes freed. best/ and top/ stay: inference and k-fold read those."""
    freed = 0
    for path in (run_dir / LAST_FILE, run_dir / STEP_DIR):
        freed += size_of(path)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()
    return freed


def disk_line(run_dir: Path) -> str:
    """One line: the run's size and its biggest parts."""
    parts = sorted(((size_of(p), p.name) for p in run_dir.iterdir()), reverse=True) if run_dir.is_dir() else []
    biggest = ", ".join(f"{name} {human(size)}" for size, name in parts[:3] if size)
    return f"on disk: {human(sum(size for size, _ in parts))} in {run_dir}" + (f" ({biggest})" if biggest else "")
