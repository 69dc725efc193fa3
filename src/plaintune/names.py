"""The name of everything plaintune writes, declared once: a run directory's files and folders, a
k-fold's folder, a fitted ensemble's directory, and the run names a k-fold and a leaderboard make.

Writers and readers use these names; ownership.py derives from the layouts at the bottom which
temporaries are plaintune's own, so a name added to a layout here is known there too. A name that
carries a number (a fold, a step) is a `NameFamily`: one template makes each name, and the same
template gives the pattern that recognises them all.

This module imports nothing from plaintune: every layer may read it.
"""

from __future__ import annotations

import re
import string
from typing import Optional, Union


class NameFamily:
    """Names made from a str.format `template` (e.g. "fold{fold}_{part}.csv"); `fields` gives the
    regex each field's values match, from which `pattern` and `glob` are derived."""

    def __init__(self, template: str, **fields: str):
        self.template = template
        parsed = [(literal, field) for literal, field, _, _ in string.Formatter().parse(template)]
        regex = "".join(
            re.escape(literal) + (f"(?P<{field}>{fields[field]})" if field is not None else "")
            for literal, field in parsed
        )
        self.pattern = re.compile(f"^{regex}$")
        self.glob = "".join(literal + ("*" if field is not None else "") for literal, field in parsed)

    def name(self, **values) -> str:
        return self.template.format(**values)

    def match(self, name: str) -> Optional[re.Match]:
        """The match (each field a named group), or None if `name` is not of this family."""
        return self.pattern.match(name)

    def __repr__(self) -> str:
        return f"NameFamily({self.template!r})"


NUMBER = r"\d+"
Name = Union[str, NameFamily]

# ------------------------------------------------------------------- in every directory plaintune makes

MARKER = ".plaintune-run"  # ownership.py: plaintune made this directory, and of which kind
LOCK_FILE = ".lock"  # lock.py: the one process that writes here now
OLD_SUFFIX = ".old"  # atomic.replace_dir: the previous copy, kept while a directory is replaced
# atomic.py writes `.NAME.XXXXXXXX.tmp` beside NAME (XXXXXXXX: tempfile's random part) and renames it
TEMP_SUFFIX = ".tmp"
TEMPORARY = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


def temp_prefix(target: str) -> str:
    return f".{target}."


# ------------------------------------------------------------------- a run: <output_dir>/<run_name>/

LAST_FILE = "last.pt"  # the newest resume bundle
CONFIG_FILE = "config.yaml"  # the run's resolved config
LOAD_REPORT_FILE = "load_report.txt"  # what a warm start (model.init_from) loaded
METRICS_FILE = "metrics.jsonl"  # one line per logged step or validation
PLOT_FILE = "curves.png"  # those curves drawn
BEST_DIR = "best"  # the best model (a Hugging Face directory)
BEST_OLD_DIR = BEST_DIR + OLD_SUFFIX  # best/'s previous copy, if a crash fell between two renames
STEP_DIR = "checkpoints"  # older resume bundles (checkpoint.keep_last)
TOP_DIR = "top"  # the k best validations' models (checkpoint.keep_top_k)
REPORT_DIR = "report"  # where the best model goes wrong on dev
TENSORBOARD_DIR = "tensorboard"  # TensorBoard's event files (named by TensorBoard)

RUN_FILES = (LAST_FILE, METRICS_FILE, PLOT_FILE, LOAD_REPORT_FILE, CONFIG_FILE)
RUN_FOLDERS = (BEST_DIR, BEST_OLD_DIR, STEP_DIR, TOP_DIR, TENSORBOARD_DIR, REPORT_DIR)
BEST_DIRS = (BEST_DIR, BEST_OLD_DIR)  # where the best model is looked for, in this order

STEP_BUNDLE = NameFamily("step-{step:08d}.pt", step=NUMBER)  # in checkpoints/
EPOCH_MODEL = NameFamily("epoch-{epoch:03d}", epoch=NUMBER)  # in top/: a validation at an epoch end
STEP_MODEL = NameFamily("step-{step:08d}", step=NUMBER)  # in top/: a validation mid-epoch
TOP_MODELS = (EPOCH_MODEL, STEP_MODEL)
# in tensorboard/: torch's SummaryWriter names its event files events.out.tfevents.<time>.<host>.<pid>.<n>
TENSORBOARD_EVENTS = NameFamily(
    "events.out.tfevents.{time}.{host}.{pid}.{n}", time=NUMBER, host=r"[^/]+", pid=NUMBER, n=NUMBER
)

# Beside every saved model (best/, top/...): its epoch, step and metrics. Not transformers.Trainer's
# trainer_state.json, whose schema it does not follow.
BEST_META = "plaintune_state.json"
BEST_META_KEYS = ("epoch", "global_step", "metric", "value")  # what that file holds (trainer.py writes them)
MODEL_CARD = "README.md"

# The error report: a run's report/, and <stem>_report/ beside a labelled prediction <stem>.csv
REPORT_SUMMARY = "summary.json"
REPORT_BY_SOURCE = "by_source.csv"
REPORT_WORST_PAIRS = "worst_pairs.csv"
REPORT_SCATTER = "scatter.png"
REPORT_FILES = (REPORT_SUMMARY, REPORT_BY_SOURCE, REPORT_WORST_PAIRS, REPORT_SCATTER)


def report_folder_name(submission_stem: str) -> str:
    return f"{submission_stem}_report"


# Beside a submission inference wrote (outside any run directory): who wrote it, for which models, and
# the file's SHA-256 (inference/written.py), so a later inference replaces only its own file.
OUTPUT_RECORD = NameFamily(".{name}.plaintune.json", name=r".+")
DEFAULT_OUTPUT_DIR = "output"  # inference.output_path null: output/<the model's run name>.csv


# ------------------------------------------------------------------- a k-fold: <output_dir>/<run_name>-folds/

FOLDS_SUFFIX = "-folds"
SPLIT_FILE = "split.json"  # the cut and the recipe every fold depends on
FOLDS_SUMMARY = "summary.json"  # each fold's held-out score and the out-of-fold one
FOLD_PART = NameFamily("fold{fold}_{part}.csv", fold=NUMBER, part="train|dev")
FOLD_PREDICTIONS = NameFamily("fold{fold}_predictions.json", fold=NUMBER)  # a finished fold's held-out predictions


def folds_folder_name(run_name: str) -> str:
    return f"{run_name}{FOLDS_SUFFIX}"


def fold_run_name(run_name: str, fold: Union[int, str]) -> str:
    """Fold `fold`'s run: an ordinary run directory beside the k-fold's folder."""
    return f"{run_name}-fold{fold}"


def fold_file(fold: int, part: str) -> str:
    """A fold's CSV: `part` is "train" (what it trains on) or "dev" (its held-out part)."""
    return FOLD_PART.name(fold=fold, part=part)


def fold_predictions_file(fold: int) -> str:
    return FOLD_PREDICTIONS.name(fold=fold)


# ------------------------------------------------------------------- a fitted ensemble: <output_dir>/<run_name>/

ENSEMBLE_FILE = "ensemble.json"


def member_run_name(run_name: str, member: str) -> str:
    """A leaderboard member's run name (its k-fold's folder and fold runs start with it)."""
    return f"{run_name}-{member}"


# ------------------------------------------------------------------- what plaintune writes where

ANYTHING = NameFamily("{name}", name=r".+")  # in a folder plaintune writes whole (best/: a model directory)

# Per kind of directory: each folder plaintune writes into (relative to the directory) and the names
# it writes there. Only these names' temporaries are plaintune's own (ownership.stale_temporaries).
RUN_LAYOUT: dict[str, tuple[Name, ...]] = {
    ".": (*RUN_FILES, *RUN_FOLDERS, MARKER),
    STEP_DIR: (STEP_BUNDLE,),
    TOP_DIR: TOP_MODELS,
    REPORT_DIR: REPORT_FILES,
    TENSORBOARD_DIR: (TENSORBOARD_EVENTS,),
    BEST_DIR: (ANYTHING,),
}
FOLDS_LAYOUT: dict[str, tuple[Name, ...]] = {".": (SPLIT_FILE, FOLDS_SUMMARY, FOLD_PART, FOLD_PREDICTIONS, MARKER)}
ENSEMBLE_LAYOUT: dict[str, tuple[Name, ...]] = {".": (ENSEMBLE_FILE, MARKER)}


def is_one_of(name: str, names: tuple[Name, ...]) -> bool:
    """Whether `name` is one of `names`: an exact name, or one of a family's."""
    return any(name == n if isinstance(n, str) else n.match(name) is not None for n in names)
