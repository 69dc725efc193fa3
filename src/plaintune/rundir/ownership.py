"""A run directory is plaintune's own: a marker file says so, and nothing else is written into.

plaintune writes `<dir>/.plaintune-run` (a small JSON: its format and the directory's kind) when
it creates a run directory, a k-fold's folder or an ensemble's directory. Before a run writes
anything it checks (`check_owned`, read-only):

- a directory that does not exist yet, or is empty (nothing but plaintune's lock and temporaries),
  is fine: the run creates or fills it and marks it;
- a directory with the marker is plaintune's, if the marker's kind fits (a single run never takes
  over a k-fold's folder or an ensemble's directory, nor the other way round);
- a directory without the marker is refused, with or without --overwrite, naming it: plaintune
  writes only into folders it created (a run directory of a plaintune release before the marker
  existed is refused too; 0.x releases carry no compatibility with earlier layouts).

Temporaries a killed write left (`.NAME.XXXXXXXX.tmp`, see atomic.py) are removed only where
plaintune writes them and only for the names plaintune writes (the layouts in names.py), never in a
user's subfolder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from plaintune import names, paths
from plaintune.errors import UserError
from plaintune.names import LOCK_FILE, MARKER
from plaintune.rundir import atomic

MARKER_FORMAT = "plaintune-run-dir"
RUN, FOLDS, ENSEMBLE = "run", "folds", "ensemble"
KIND_NAMES = {
    RUN: "a training run's directory",
    FOLDS: "a k-fold's folder (split and fold files)",
    ENSEMBLE: "a fitted ensemble's directory",
}

# What plaintune writes, per kind of directory and folder (names.py): only temporaries of these names are its own.
OWN_FOLDERS = {RUN: names.RUN_LAYOUT, FOLDS: names.FOLDS_LAYOUT, ENSEMBLE: names.ENSEMBLE_LAYOUT}


# ------------------------------------------------------------------- the marker


def read_marker(directory: Path) -> Optional[dict]:
    """The marker's content; None if `directory` has none. A damaged marker is an error."""
    path = Path(directory) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        if (
            not isinstance(marker, dict)
            or marker.get("format") != MARKER_FORMAT
            or marker.get("kind") not in KIND_NAMES
        ):
            raise ValueError
    except (OSError, ValueError):
        raise UserError(
            f"'{path}' is not plaintune's run marker (damaged or written by something else); if "
            f"'{directory}' is a plaintune run, delete that file and rerun to adopt it, else choose "
            "another run_name"
        ) from None
    return marker


def write_marker(directory: Path, kind: str) -> None:
    """Mark `directory` as plaintune's (under the run's lock, before anything else is written)."""
    if read_marker(directory) is None:
        atomic.write_text(
            Path(directory) / MARKER, json.dumps({"format": MARKER_FORMAT, "version": 1, "kind": kind}) + "\n"
        )


# ------------------------------------------------------------------- the check before any write


def _foreign_entries(directory: Path) -> list[str]:
    """What `directory` holds besides plaintune's lock, marker and temporaries."""
    return sorted(
        name for name in os.listdir(directory) if name not in (LOCK_FILE, MARKER) and not names.TEMPORARY.match(name)
    )


def check_output_dir(output_dir: Path, key: str = "output_dir") -> None:
    """`output_dir` (where runs live) must be a folder, or creatable as one, and writable."""
    probe = Path(output_dir).expanduser()
    for folder in (probe, *probe.parents):
        kind, detail = paths.path_kind(folder)
        if kind == paths.MISSING:
            continue
        if kind == paths.DIR:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise UserError(
                    f"{key}: cannot write in '{folder}' (permission denied); choose a writable "
                    f"{key}=..., or make it writable"
                )
            return
        what = "a file" if kind == paths.FILE else ("permission denied" if kind == paths.DENIED else detail)
        where = f"'{output_dir}'" if folder == probe else f"'{output_dir}' (its folder '{folder}' is {what})"
        raise UserError(
            f"{key}: {where} is not a folder{'' if folder != probe else f' ({what})'}; choose "
            f"another {key}=... (a folder where runs live)"
        )


def check_owned(directory: Path, kind: str, key: str = "run_name", announce: bool = True) -> None:
    """Before a run writes anything into `directory`: refuse it unless plaintune made it (see the
    module docstring). Read-only; `claim` marks it once the run holds its lock."""
    directory = Path(directory)
    check_output_dir(directory.parent)
    kind_found, detail = paths.path_kind(directory)
    if kind_found == paths.MISSING:
        return
    if kind_found != paths.DIR:
        what = "a file" if kind_found == paths.FILE else detail
        raise UserError(f"{key}: '{directory}' is {what}, not a run directory; choose another {key}=...")
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        raise UserError(
            f"{key}: cannot write in '{directory}' (permission denied); make it writable, or choose another {key}=..."
        )
    marker = read_marker(directory)
    if marker is not None:
        if marker["kind"] != kind:
            raise UserError(
                f"{key}: '{directory}' is {KIND_NAMES[marker['kind']]}, not {KIND_NAMES[kind]}; "
                f"choose another {key}=..."
            )
        return
    if not _foreign_entries(directory):
        return  # empty: nothing of anyone's to harm
    shown = ", ".join(_foreign_entries(directory)[:4])
    raise UserError(
        f"{key}: '{directory}' exists and was not made by plaintune (no {MARKER} marker; it holds "
        f"{shown}); plaintune writes only into folders it created: choose another {key}=... or "
        "another output_dir, or move that folder away"
    )


def claim(directory: Path, kind: str) -> list[Path]:
    """Under the run's lock: mark `directory` as plaintune's and remove the temporaries killed writes
    left in it; returns what was removed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    removed = stale_temporaries(directory, kind)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    write_marker(directory, kind)
    return removed


def stale_temporaries(directory: Path, kind: str) -> list[Path]:
    """Temporaries of plaintune's own writes in plaintune's own folders of `directory`: a write
    that never finished (its target still holds the previous complete version)."""
    found = []
    for folder, targets in OWN_FOLDERS[kind].items():
        where = Path(directory) / folder
        if not where.is_dir() or where.is_symlink():
            continue
        for name in os.listdir(where):
            match = names.TEMPORARY.match(name)
            if match and names.is_one_of(match.group("target"), targets):
                found.append(where / name)
    return sorted(found)
