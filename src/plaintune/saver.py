"""Where a run's checkpoints live, how many are kept, and which one a resume takes.

    saved_model/<run>/last.pt                 newest resume bundle
    saved_model/<run>/checkpoints/step-N.pt   older bundles (checkpoint.keep_last - 1 of them)
    saved_model/<run>/best/                   best model by the validation metric (HF directory)
    saved_model/<run>/top/epoch-E/            the k best epochs (checkpoint.keep_top_k), HF directories

Retention is derived from what is on disk (file names carry the step), so it
needs no bookkeeping of its own to survive a crash or a resume; the top-k list
lives in the train state, which is inside the bundle.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch

from . import atomic, checkpoint
from .errors import UserError

LAST_FILE = "last.pt"
STEP_DIR = "checkpoints"
STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")


class CheckpointSaver:
    def __init__(self, run_dir: Path, keep_last: int = 1, keep_top_k: int = 0):
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.keep_top_k = keep_top_k

    @property
    def last_path(self) -> Path:
        return self.run_dir / LAST_FILE

    def step_bundles(self) -> list[tuple[int, Path]]:
        """Older bundles, newest first."""
        folder = self.run_dir / STEP_DIR
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_PATTERN.match(p.name))]
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
                os.replace(self.last_path, folder / f"step-{previous_step:08d}.pt")

        atomic.write_with(self.last_path, lambda tmp: torch.save(bundle, tmp), before_replace=keep_previous)
        for _, path in self.step_bundles()[max(0, self.keep_last - 1):]:
            path.unlink(missing_ok=True)

    def save_model_dir(self, target: Path, model, tokenizer, meta: dict) -> None:
        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            (tmp / checkpoint.BEST_META).write_text(json.dumps(meta, indent=2) + "\n")

        atomic.replace_dir(target, fill)

    def save_best(self, model, tokenizer, meta: dict) -> None:
        self.save_model_dir(self.run_dir / "best", model, tokenizer, meta)

    def update_top_k(self, top: list, metric: float, epoch: int, model, tokenizer, meta: dict) -> list:
        """Keep the k best epochs as HF directories; return the new [[metric, epoch], ...] list."""
        if self.keep_top_k <= 0 or metric != metric:  # nan never enters
            return top
        ranked = sorted(top + [[metric, epoch]], key=lambda item: -item[0])[:self.keep_top_k]
        if [metric, epoch] in ranked:
            self.save_model_dir(self.run_dir / "top" / f"epoch-{epoch:03d}", model, tokenizer, meta)
        keep = {f"epoch-{e:03d}" for _, e in ranked}
        folder = self.run_dir / "top"
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.startswith("epoch-") and path.name not in keep:
                    shutil.rmtree(path, ignore_errors=True)
        return ranked

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files and directories a killed save left anywhere in the run directory
        (last.pt's, best/'s, top/epoch-N's, checkpoints/'s ...): never complete, safe to delete."""
        stale = atomic.stale_temporaries(self.run_dir) if self.run_dir.is_dir() else []
        for path in stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return stale

    def resume_candidates(self) -> list[Path]:
        """Bundles to try for `--resume`, newest first."""
        candidates = [self.last_path] if self.last_path.is_file() else []
        return candidates + [p for _, p in self.step_bundles()]


def read_newest_bundle(candidates: list[Path], reader: Callable[[Path], dict],
                       warn: Callable[[str], None] = print) -> tuple[Path, dict]:
    """The first candidate that reads; unreadable ones are skipped with a warning naming them."""
    failures = []
    for path in candidates:
        try:
            return path, reader(path)
        except UserError as err:
            failures.append(str(path))
            warn(f"warning: skipping unreadable checkpoint {path} ({err})")
    raise UserError(f"--resume: no readable checkpoint ({', '.join(failures)} could not be read); start the run "
                    "again without --resume, or give a bundle with --resume PATH")
