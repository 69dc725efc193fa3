"""What inference writes outside a run directory (the submission, its error report) is replaced only
when plaintune wrote it for the same run(s). The submission gets a record beside it
(`.NAME.plaintune.json`: who wrote it, for which models, the file's SHA-256); the report's summary.json
says the same. A file without that record, changed since, or written for other models is the user's:
refused before any work unless the caller asks to overwrite, and then the output line says replaced."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

from plaintune.commands import CLI, Switches
from plaintune.errors import UserError
from plaintune.names import BEST_DIRS, DEFAULT_OUTPUT_DIR, LAST_FILE, OUTPUT_RECORD, STEP_DIR, TOP_DIR
from plaintune.rundir import atomic

WRITER = "plaintune inference"


def run_of(model: Path) -> Path:
    """The run a model belongs to: best/, best.old/, top/<model>/, last.pt and checkpoints/step-N.pt
    belong to their run folder; any other file or folder stands for itself."""
    if model.name in BEST_DIRS or model.name == LAST_FILE:
        return model.parent
    if model.parent.name in (TOP_DIR, STEP_DIR):
        return model.parent.parent
    return model


def models_identity(models: Sequence, runs_root: Path) -> list[str]:
    """The runs an inference predicts with (the models it loads, or a fitted ensemble's name: a run's
    folder, its best/ or last.pt all name the same run), as absolute paths: what "written for the same
    run" compares."""
    found = []
    for model in models:
        path = Path(model).expanduser()
        found.append(str(run_of((path if path.exists() else runs_root / model).resolve())))
    return list(dict.fromkeys(found))


def default_output(identity: Sequence[str]) -> Path:
    """inference.output_path null: output/<run>.csv, named after the models' runs, so two runs never
    share a submission (several: their names joined by '+'; a checkpoint file outside a run: its stem)."""
    names = dict.fromkeys(Path(run).stem if Path(run).is_file() else Path(run).name for run in identity)
    return Path(DEFAULT_OUTPUT_DIR) / f"{'+'.join(names)}.csv"


def record_path(path: Path) -> Path:
    return path.with_name(OUTPUT_RECORD.name(name=path.name))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def whose(path: Path, identity: Sequence[str]) -> Optional[str]:
    """None when `path` may be written: absent, or plaintune's own for these models and unchanged since;
    otherwise why it is not ours to replace."""
    if not path.exists():
        return None
    try:
        record = json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "plaintune did not write it"
    if not isinstance(record, dict) or record.get("written_by") != WRITER:
        return "plaintune did not write it"
    if record.get("sha256") != _sha256(path):
        return "it changed since plaintune wrote it"
    if sorted(record.get("models") or []) != sorted(identity):
        shown = ", ".join(record.get("models") or ["?"])
        return f"plaintune wrote it for other models ({shown})"
    return None


def check_replace(path: Path, identity: Sequence[str], overwrite: bool, key: str, switches: Switches = CLI) -> bool:
    """Before any work: whether writing `path` replaces a file (True: say so after). Refuses a file that
    is not plaintune's for these models, unless `overwrite`; and a folder on the way that is a file."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest existing folder: the rest is created when written
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"{key}: '{path}' cannot be written: '{folder}' is a file, not a folder; move that file, or "
            f"choose another {key}=..."
        )
    reason = whose(path, identity)
    if reason is not None and not overwrite:
        raise UserError(
            f"{key}: '{path}' exists and {reason}; it stays as it is. Choose another {key}=..., or pass "
            f"{switches.on('overwrite')} to replace it"
        )
    return path.exists()


def mark(path: Path, identity: Sequence[str]) -> None:
    """After `path` is written: record that plaintune wrote it, for which models."""
    record = {"written_by": WRITER, "models": list(identity), "sha256": _sha256(path)}
    atomic.write_text(record_path(path), json.dumps(record, indent=2) + "\n")
