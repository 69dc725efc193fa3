"""A run directory: its layout, the one place that writes checkpoints into it, and finding them again.

    <output_dir>/<run>/last.pt                 newest resume bundle
    <output_dir>/<run>/checkpoints/step-N.pt   older bundles (checkpoint.keep_last - 1 of them)
    <output_dir>/<run>/best/                   best model by the validation metric (HF directory)
    <output_dir>/<run>/top/epoch-E/, step-S/   the k best validations (checkpoint.keep_top_k), HF directories

Every write is atomic (temp + fsync + rename, see atomic.py). Retention is derived
from what is on disk (file names carry the step), so it needs no bookkeeping of
its own to survive a crash or a resume; the top-k list lives in the train state,
which is inside the bundle. Keeping writers and readers here means they cannot
drift apart.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from box import Box

from plaintune import paths
from plaintune.commands import CLI, Switches
from plaintune.config.load import resolve_config_path
from plaintune.config.schema import data_files
from plaintune.errors import UserError
from plaintune.names import (
    BEST_DIR,
    BEST_DIRS,
    BEST_META,
    CONFIG_FILE,
    ENSEMBLE_FILE,
    LAST_FILE,
    LOAD_REPORT_FILE,
    MARKER,
    MODEL_CARD,
    RUN_FILES,
    RUN_FOLDERS,
    RUN_LAYOUT,
    SPLIT_FILE,
    STEP_BUNDLE,
    STEP_DIR,
    TOP_DIR,
    TOP_MODELS,
    is_one_of,
)
from plaintune.rundir import atomic, modelcard, ownership
from plaintune.weights.formats import SHARD_INDEXES, WEIGHT_FILES, check_checkpoint_dir, stat_path


def is_complete_best(path: Path) -> bool:
    meta = (path / BEST_META).is_file()
    return (
        (path / "config.json").is_file()
        and meta
        and any((path / name).is_file() for name in WEIGHT_FILES + SHARD_INDEXES)
    )


def find_best_dir(run_dir: Path) -> Optional[Path]:
    """best/, or best.old/ if a crash fell between the two renames of a best update."""
    for name in BEST_DIRS:
        if is_complete_best(run_dir / name):
            return run_dir / name
    return None


def resolve_saved_model(value: str, saved_root: Path = Path("saved_model")) -> Path:
    """`--saved_model Y`: a path; else a run name under saved_model/ (its best); else a file there."""
    where = f"--saved_model '{value}'"
    candidates = [Path(value).expanduser(), saved_root / value, saved_root / f"{value}.pt"]
    here, run = candidates[0], candidates[1]
    if here.exists() and run.is_dir() and here.resolve() != run.resolve():
        # a run named after a folder beside it (often the base model): either reading could be wrong
        raise UserError(
            f"{where} names both '{here}' here and the run '{run}'; give the path of the one you mean "
            f"(--saved_model ./{value} or --saved_model {run})"
        )
    for candidate in candidates:
        is_dir, is_file = stat_path(candidate, where)
        if is_file:
            return candidate
        if is_dir:
            # Its small files are checked now, before any model is built from its config.json.
            if (candidate / "config.json").is_file() or any(
                (candidate / n).is_file() for n in WEIGHT_FILES + SHARD_INDEXES
            ):
                check_checkpoint_dir(candidate, where)
                return candidate
            for name in BEST_DIRS:  # an unreadable best/ is named, not passed over for last.pt
                if (candidate / name).is_dir():
                    paths.check_readable(candidate / name, where)
            best = find_best_dir(candidate)
            if best is not None:
                check_checkpoint_dir(best, where)
                return best
            if (candidate / LAST_FILE).is_file():
                print(f"note: {candidate} has no complete best/ yet; using its {LAST_FILE}")
                return candidate / LAST_FILE
            raise UserError(
                f"--saved_model '{value}': directory '{candidate}' holds no checkpoint "
                "(no best/, last.pt or model weights)"
            )
    runs = sorted(p.name for p in saved_root.iterdir() if p.is_dir()) if saved_root.is_dir() else []
    shown = ", ".join(runs[:8]) + (f" and {len(runs) - 8} more" if len(runs) > 8 else "")
    hint = f"; runs under {saved_root}/: {shown}" if runs else f"; {saved_root}/ has no runs yet"
    raise UserError(f"--saved_model '{value}': no such file, directory or run name{hint}")


class RunFiles:
    """Writes a run's checkpoints: last.pt (rotated into checkpoints/), best/ and top/."""

    def __init__(
        self,
        run_dir: Path,
        keep_last: int = 1,
        tokenizer=None,
        bundle_extra: Optional[dict] = None,
        card: Optional[dict] = None,
    ):
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.tokenizer = tokenizer  # saved beside every model directory
        self.bundle_extra = bundle_extra or {}  # more plain data for every last.pt (config, data fingerprints)
        self.card = card  # the run's facts for each model's README.md (modelcard.py)

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_FILE

    def step_bundles(self) -> list[tuple[int, Path]]:
        """Older bundles, newest first."""
        folder = self.run_dir / STEP_DIR
        if not folder.is_dir():
            return []
        found = [(int(m.group("step")), p) for p in folder.iterdir() if (m := STEP_BUNDLE.match(p.name))]
        return sorted(found, reverse=True)

    def save_last(self, bundle: dict, previous_step: Optional[int]) -> None:
        """Write `bundle` as last.pt; the bundle it replaces becomes checkpoints/step-N.pt if kept."""
        step = bundle["train_state"]["global_step"]
        rotate = self.keep_last > 1 and previous_step is not None and previous_step != step

        def keep_previous() -> None:
            # Runs only once the new bundle is complete on disk: a write that fails (a full disk)
            # leaves last.pt where it was. A rename: no copy, the old bundle complete at every instant.
            if rotate and self.last_path.is_file():
                folder = self.run_dir / STEP_DIR
                folder.mkdir(exist_ok=True)
                os.replace(self.last_path, folder / STEP_BUNDLE.name(step=previous_step))

        bundle = {**bundle, **self.bundle_extra}
        atomic.write_with(self.last_path, lambda tmp: torch.save(bundle, tmp), before_replace=keep_previous)
        for _, path in self.step_bundles()[max(0, self.keep_last - 1) :]:
            path.unlink(missing_ok=True)

    def save_model_dir(self, target: Path, model, meta: dict) -> None:
        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            (tmp / BEST_META).write_text(json.dumps(atomic.json_safe(meta), indent=2) + "\n")
            if self.card is not None:
                (tmp / MODEL_CARD).write_text(modelcard.render(self.card, meta), encoding="utf-8")

        atomic.replace_dir(target, fill)

    def save_best(self, model, meta: dict) -> None:
        self.save_model_dir(self.run_dir / BEST_DIR, model, meta)

    def update_top_k(self, ranked: list, name: str, model, meta: dict) -> None:
        """Make top/ hold the models of `ranked` ([[metric, name], ...]): write `name`'s if it
        is listed, remove the directories of validations that dropped out."""
        folder = self.run_dir / TOP_DIR
        if any(entry[1] == name for entry in ranked):
            self.save_model_dir(folder / name, model, meta)
        keep = {entry[1] for entry in ranked}
        if folder.is_dir():
            for path in folder.iterdir():
                if is_one_of(path.name, TOP_MODELS) and path.name not in keep:
                    shutil.rmtree(path, ignore_errors=True)

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files and directories a killed save left in the run directory (last.pt's,
        best/'s, top/epoch-N's ...): never complete, safe to delete. Only plaintune's own names in
        plaintune's own folders (ownership.py): a user's file that looks like a temporary stays."""
        stale = ownership.stale_temporaries(self.run_dir, ownership.RUN) if self.run_dir.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return stale

    def resume_candidates(self) -> list[Path]:
        """Bundles to try for `--resume`, newest first."""
        candidates = [self.last_path] if self.last_path.is_file() else []
        return candidates + [p for _, p in self.step_bundles()]


def read_newest_bundle(
    candidates: list[Path],
    reader: Callable[[Path], dict],
    warn: Callable[[str], None] = print,
    switches: Switches = CLI,
) -> tuple[Path, dict]:
    """The first candidate that reads; unreadable ones are skipped with a warning naming them."""
    failures = []
    for path in candidates:
        try:
            return path, reader(path)
        except UserError as err:
            failures.append(str(path))
            warn(f"warning: skipping unreadable checkpoint {path} ({err})")
    key = switches.resume
    raise UserError(
        f"{key}: no readable checkpoint ({', '.join(failures)} could not be read); start the run "
        f"over with {switches.on('overwrite')} (this deletes its checkpoints; without {key}), or give "
        f"{key} the path of a readable bundle"
    )


# ------------------------------------------------------------- where runs live


def runs_root(cfg: Box) -> Path:
    """output_dir: where runs live (relative to the working directory; a Drive folder on Colab)."""
    return Path(cfg.output_dir).expanduser()


def run_dir_for(cfg: Box) -> Path:
    return runs_root(cfg) / cfg.run_name


def run_outputs(run_dir: Path) -> list[tuple[str, Path, bool]]:
    """What a training run writes in its directory: (chosen by, path, whole tree)."""
    trees = [("run_name", run_dir / name, True) for name in RUN_FOLDERS]
    files = [("run_name", run_dir / name, False) for name in RUN_FILES]
    return trees + files


def config_file(config_name: str) -> Optional[Path]:
    """The YAML file behind --config, or None for a config given as a dict (the Python API)."""
    try:
        return resolve_config_path(config_name)
    except UserError:
        return None


def check_not_in_a_run(target: Path, key: str) -> None:
    """A file written into a run directory could replace its checkpoints or logs (last.pt, metrics.jsonl)."""
    for folder in Path(target).expanduser().resolve().parents:
        if (
            (folder / LAST_FILE).is_file()
            or (folder / BEST_DIR).is_dir()
            and (folder / CONFIG_FILE).is_file()
            or (folder / SPLIT_FILE).is_file()
            or (folder / ENSEMBLE_FILE).is_file()
            or (folder / MARKER).is_file()
        ):  # a k-fold's folder, a fitted ensemble, any marked
            raise UserError(
                f"{key}: '{target}' lies inside the run directory '{folder}', whose files are "
                f"checkpoints and logs: choose another {key} (e.g. output/submission.csv)"
            )


def run_inputs(cfg: Box, fresh: bool, config_path: Optional[Path] = None) -> dict:
    """What a training run reads. A resumed run takes its weights from the bundle, not model.name/init_from."""
    inputs = {f"data.{key}": cfg.data.get(key) for key in data_files("train", "test")}
    inputs["--config"] = config_path
    if fresh:
        inputs["model.init_from"] = cfg.model.init_from
        local = Path(cfg.model.name).expanduser()
        inputs["model.name"] = str(local) if not cfg.model.name.startswith("pkg:") and local.exists() else None
    return inputs


def clear_run(run_dir: Path, switches: Switches = CLI) -> None:
    """overwrite (--overwrite): remove a previous run's checkpoints and logs (only the files plaintune writes,
    only in a directory marked as plaintune's). best/ is a model directory plaintune writes and replaces
    whole; in checkpoints/, top/, report/ and tensorboard/ only plaintune's names go."""
    if ownership.read_marker(run_dir) is None:  # check_owned and claim come first; never a user's folder
        raise UserError(
            f"{switches.overwrite}: '{run_dir}' is not marked as a plaintune run directory; nothing deleted"
        )
    for name in RUN_FILES:
        if name != CONFIG_FILE:  # start_run_dir writes the new one next
            (run_dir / name).unlink(missing_ok=True)
    for folder in RUN_FOLDERS:
        path = run_dir / folder
        if folder in BEST_DIRS:  # a model directory plaintune writes whole, and replaces whole at each new best
            shutil.rmtree(path, ignore_errors=True)
            continue
        if not path.is_dir():
            continue
        # checkpoints/, top/, report/, tensorboard/: only the names plaintune writes there; a user's file
        # in them stays (and so does the folder)
        for entry in path.iterdir():
            if not is_one_of(entry.name, RUN_LAYOUT[folder]):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError:
            pass  # not empty: the user's files are in it


def start_run_dir(
    run_dir: Path, config_text: str, clear: bool, load_report: Optional[str], switches: Switches = CLI
) -> None:
    """Rank 0, under the run's lock, after ownership.check_owned: mark the directory, remove what
    killed saves left, clear for --overwrite, write config.yaml (and what a warm start loaded)."""
    ownership.claim(run_dir, ownership.RUN)  # the marker first: the directory is plaintune's from now on
    if clear:
        clear_run(run_dir, switches)
    atomic.write_text(run_dir / CONFIG_FILE, config_text)
    if load_report is not None:
        atomic.write_text(run_dir / LOAD_REPORT_FILE, load_report)
