"""Resuming a run: finding its bundle, and refusing one that belongs to another run.

A bundle continues a run only if the config still describes the same run
(the schema's IDENTITY keys) and the data files are the same (their fingerprints); either
check can be overridden with force (--force), and other config changes are noted. Every message names
the switches as the caller wrote them (commands.Switches: train.py's --resume, the API's resume=True).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml
from box import Box

from plaintune import paths
from plaintune.commands import CLI, Switches
from plaintune.config.load import to_plain
from plaintune.config.schema import IDENTITY, LEAVES, Role, lookup
from plaintune.data import checks as datacheck
from plaintune.errors import UserError
from plaintune.model.objective import Objective, resolve_objective
from plaintune.names import BEST_DIR, CONFIG_FILE, ENSEMBLE_FILE, LAST_FILE
from plaintune.rundir.layout import RunFiles, find_best_dir, read_newest_bundle, run_dir_for
from plaintune.training.derived import effective, resumed_values
from plaintune.weights import formats
from plaintune.weights import record as saved_record

MISSING = object()
EVERY_ROLE = Role(sum(role.value for role in Role))


def check_drift(saved: Optional[dict], current: dict, among: Role = EVERY_ROLE) -> tuple[list[str], list[str]]:
    """(IDENTITY keys that differ, other keys that differ) between a checkpoint's config and now,
    among the schema's keys whose role includes `among` (by default all of them).

    The keys come from the schema's roles, never from a list kept here. A key the checkpoint's
    plaintune did not have yet (a new option at its default) is no change. Keys whose `auto` a run
    resolves are compared as each run resolved them (derived.effective, before this is called)."""
    if not saved:
        return [], []
    identity, other = [], []
    for key, spec in LEAVES.items():
        if not spec.role & among:
            continue
        then, now = lookup(saved, key, MISSING), lookup(current, key, MISSING)
        if then is MISSING or then == now:
            continue
        (identity if IDENTITY in spec.role else other).append(key)
    return identity, other


def check_same_data(bundle: dict, fingerprints: dict, force: bool, announce: bool, switches: Switches = CLI) -> None:
    """A resume on data that changed since the checkpoint is another run: refused unless forced."""
    changes = datacheck.changed_files(bundle.get("data_fingerprints"), fingerprints)
    if changes and not force:
        raise UserError(
            f"{switches.resume}: the data changed since the checkpoint: {'; '.join(changes)}; restore "
            f"it, or pass {switches.on('force')} to continue on the new data (batch order and epoch "
            "length then differ)"
        )
    if changes and announce:
        print(f"warning: resuming on changed data ({switches.on('force')}): {'; '.join(changes)}")


def read_bundle(path: Path, key: str = "--resume") -> dict:
    """A resume bundle (or a plain state dict) read with weights_only=True."""
    obj = formats.load_torch_file(path, trust=False)
    if not isinstance(obj, dict):
        raise UserError(f"{key}: '{path}' holds a {type(obj).__name__}, not a training bundle")
    if "model_state_dict" not in obj:
        state, fmt = formats.find_state_dict(obj, path)
        obj = {"model_state_dict": state, "_format": fmt}
    return obj


def find_resume_bundle(resume: str, files: RunFiles, switches: Switches = CLI) -> tuple[Path, dict]:
    """`--resume PATH` reads that bundle; `--resume` the run's newest readable one."""
    key = switches.resume
    if resume:
        path = Path(resume)
        if (
            paths.require(
                path, key, (paths.FILE, paths.DIR), fix=f"give a resume bundle (a run directory or its {LAST_FILE})"
            )
            == paths.DIR
        ):
            if not (path / LAST_FILE).is_file():
                raise UserError(
                    f"{key}: directory '{resume}' holds no {LAST_FILE}; give a resume bundle (a run "
                    f"directory or its {LAST_FILE}); to start from a model's weights use model.init_from"
                )
            path = path / LAST_FILE
        if not path.is_file():
            raise UserError(f"{key}: checkpoint '{resume}' does not exist")
        try:
            return path, read_bundle(path, key)
        except UserError as err:  # formats' own messages ("checkpoint '...' is not ...") get the switch's name
            message = str(err)
            raise UserError(message if message.startswith(f"{key}:") else f"{key}: {message}") from None
    candidates = files.resume_candidates()
    if not candidates and find_best_dir(files.run_dir) is not None:
        best = files.run_dir / BEST_DIR
        if _dropped_its_bundles(files.run_dir):
            raise UserError(
                f"{key}: the run in {files.run_dir}/ has finished and its {LAST_FILE} was dropped "
                "(checkpoint.keep_last_after_finish: false), so it cannot continue; its best/ stands. "
                f"Train more from it with model.init_from={best} and another run_name"
            )
        raise UserError(
            f"{key}: the run in {files.run_dir}/ stopped after saving best/ but before its first {LAST_FILE} "
            "(it was killed between its first validation and its first resume checkpoint), so there is "
            f"nothing to continue from; start it over with {switches.on('overwrite')}, or train on from "
            f"its best/ with model.init_from={best} and another run_name"
        )
    if not candidates:
        raise UserError(
            f"{key}: no checkpoint in {files.run_dir}/ to resume (no {LAST_FILE}); start the run without {key}"
        )
    return read_newest_bundle(candidates, lambda path: read_bundle(path, key), switches=switches)


def _dropped_its_bundles(run_dir: Path) -> bool:
    """Whether the run's recorded config deleted its resume bundles once finished
    (checkpoint.keep_last_after_finish: false); a run killed before its first bundle did not."""
    try:
        recorded = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(recorded, dict) and (recorded.get("checkpoint") or {}).get("keep_last_after_finish") is False


@dataclass
class OpenedRun:
    """Where a run writes, and the bundle it continues (None: a fresh run)."""

    cfg: Box  # the validated config, as the user wrote it
    run_dir: Path
    bundle: Optional[dict] = None
    bundle_path: Optional[Path] = None
    objective: Optional[Objective] = None  # a resumed run's: the head continues as it was trained
    switches: Switches = CLI  # train's switches as the caller wrote them, for messages


def open_run(
    cfg: Box, resume: Optional[str], force: bool, overwrite: bool, announce: bool, switches: Switches = CLI
) -> OpenedRun:
    """The run directory and, with `resume` ('' for the run's newest bundle, or a path), the bundle
    to continue, checked to belong to this run. A fresh run never clobbers an existing one."""
    run_dir = run_dir_for(cfg)
    if (run_dir / ENSEMBLE_FILE).is_file():
        raise UserError(f"run_name: '{run_dir}' holds a fitted ensemble ({ENSEMBLE_FILE}); choose another run_name")
    files = RunFiles(run_dir)
    if resume is None:
        if files.resume_candidates() and not overwrite:
            raise UserError(
                f"run_name: '{cfg.run_name}' already has a checkpoint in {run_dir}/; continue it with "
                f"{switches.on('resume')}, start over with {switches.on('overwrite')}, or choose another "
                "run_name=..."
            )
        if find_best_dir(run_dir) is not None and not overwrite:
            # a finished run whose last.pt was dropped (keep_last_after_finish: false) is still a run
            raise UserError(
                f"run_name: '{cfg.run_name}' already holds a trained model in {run_dir}/best/; start "
                f"over with {switches.on('overwrite')}, or choose another run_name=..."
            )
        return OpenedRun(cfg, run_dir)
    bundle_path, bundle = find_resume_bundle(resume, files, switches)
    # The head continues as it was trained: plaintune's recorded mapping, raw for a foreign bundle.
    objective = resolve_objective(
        cfg, saved_record.from_bundle(bundle), head_fresh=False, record_wins=False, announce=announce
    )
    # compared as the two runs ran: auto as each resolved it (the checkpoint's, while the config says auto)
    saved_resolved = bundle.get("resolved")
    now = {**resumed_values(to_plain(cfg), saved_resolved), **objective.resolved}
    identity, other = check_drift(effective(bundle.get("config") or {}, saved_resolved), effective(to_plain(cfg), now))
    # A data file given by another path (the run resumed from another folder, or moved) is the same
    # run when its contents are: those are compared with the checkpoint's fingerprints (check_same_data).
    fingerprinted = [key for key in identity if key in (bundle.get("data_fingerprints") or {})]
    identity = [key for key in identity if key not in fingerprinted]
    other = fingerprinted + other
    if identity and not force:
        raise UserError(
            f"{switches.resume}: the config differs from the checkpoint's in {', '.join(identity)}, "
            f"which makes it a different run; restore those values, or pass {switches.on('force')} to "
            "continue anyway"
        )
    if announce:
        if identity:
            print(f"warning: resuming despite changed {', '.join(identity)} ({switches.on('force')})")
        if other:
            print(f"note: config changes since the checkpoint: {', '.join(other)}")
        print(f"resuming from {bundle_path}")
    return OpenedRun(cfg, run_dir, bundle, bundle_path, objective, switches)
