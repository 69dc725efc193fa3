"""The names plaintune writes are declared once (rundir/names.py), and ownership knows every one of them:
a temporary `.NAME.XXXXXXXX.tmp` of anything plaintune writes into its own folders is plaintune's to clean,
a user's file with a similar name is not."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import train
from plaintune import names
from plaintune.rundir import atomic, ownership

LAYOUTS = {
    ownership.RUN: names.RUN_LAYOUT,
    ownership.FOLDS: names.FOLDS_LAYOUT,
    ownership.ENSEMBLE: names.ENSEMBLE_LAYOUT,
}
# one name of each family, as plaintune makes it
EXAMPLES = {
    names.STEP_BUNDLE: names.STEP_BUNDLE.name(step=120),
    names.EPOCH_MODEL: names.EPOCH_MODEL.name(epoch=3),
    names.STEP_MODEL: names.STEP_MODEL.name(step=120),
    names.FOLD_PART: names.fold_file(2, "dev"),
    names.FOLD_PREDICTIONS: names.fold_predictions_file(10),
    names.ANYTHING: "model.safetensors",
    names.TENSORBOARD_EVENTS: "events.out.tfevents.1796620000.host.example.org.4242.0",
}


def temporary(target: str) -> str:
    return f"{names.temp_prefix(target)}a1B2_c3d{names.TEMP_SUFFIX}"


def undeclared(directory: Path, layout: dict) -> list[str]:
    """What `directory` holds, in the folders its layout lists, that the layout does not declare
    (the lock is written in place, never through a temporary, and removed when the run ends)."""
    found = []
    for folder, declared in layout.items():
        if names.ANYTHING in declared or not (directory / folder).is_dir():
            continue
        found += [
            f"{folder}/{entry}"
            for entry in os.listdir(directory / folder)
            if entry != names.LOCK_FILE and not names.is_one_of(entry, declared)
        ]
    return found


def plant(paths: list[Path]) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_names_imports_nothing_from_the_project():
    tree = ast.parse(Path(names.__file__).read_text(encoding="utf-8"))
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)] + [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    ]
    assert [m for m in imported if m.startswith("plaintune")] == []


@pytest.mark.parametrize("family", list(EXAMPLES), ids=lambda f: f.template)
def test_a_name_family_recognises_what_it_makes_and_nothing_else(family, tmp_path):
    made = EXAMPLES[family]
    assert family.match(made)
    (tmp_path / made).write_text("x")
    assert [p.name for p in tmp_path.glob(family.glob)] == [made]
    if family is not names.ANYTHING:
        assert not any(family.match(other) for other in (f"{made}.bak", f"x{made}", ""))
    assert names.STEP_BUNDLE.match("step-00000120.pt")["step"] == "00000120"
    assert not names.FOLD_PART.match("fold1_test.csv") and not names.EPOCH_MODEL.match("epoch-")


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_every_declared_name_has_its_temporaries_cleaned_and_no_lookalike(kind, tmp_path):
    directory = tmp_path / "d"
    ours, theirs = [], [directory / "mine" / temporary(names.LAST_FILE), directory / temporary("notes.txt")]
    for folder, declared in LAYOUTS[kind].items():
        for name in declared:
            made = name if isinstance(name, str) else EXAMPLES[name]
            ours.append(directory / folder / temporary(made))
            if names.ANYTHING not in declared:  # best/ is written whole: every temporary in it is plaintune's
                theirs += [
                    directory / folder / temporary(f"{made}.bak"),
                    directory / folder / temporary(f"my{made}"),
                    directory / folder / f".{made}.tmp",
                ]
    plant(ours + theirs)
    assert sorted(ownership.claim(directory, kind)) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)
    assert ownership.read_marker(directory)["kind"] == kind


def test_atomic_writes_use_the_temporary_name_ownership_cleans(tmp_path):
    run = tmp_path / "run"
    seen = []
    with atomic.atomic_path(run / names.LAST_FILE) as tmp:
        tmp.write_bytes(b"bundle")
        seen.append(ownership.stale_temporaries(run, ownership.RUN) == [tmp])

    def fill(folder: Path) -> None:
        (folder / names.BEST_META).write_text("{}")
        seen.append(ownership.stale_temporaries(run, ownership.RUN) == [folder])

    atomic.replace_dir(run / names.BEST_DIR, fill)
    atomic.replace_dir(run / names.BEST_DIR, fill)  # the second moves the first aside as best.old
    assert seen == [True, True, True] and not (run / names.BEST_OLD_DIR).exists()


@pytest.mark.e2e
def test_everything_a_run_writes_is_declared(project, tiny_model_dir):
    """A run that writes every kind of file (a warm start's load report, older bundles, top-k models of
    epoch ends and mid-epoch validations, the error report, TensorBoard): every entry in the run's
    folders is a name its layout declares, so ownership cleans its temporaries."""
    pytest.importorskip("tensorboard")
    assert (
        train.main(
            [
                "--config",
                "t",
                f"model.init_from={tiny_model_dir}",
                "checkpoint.keep_last=3",
                "checkpoint.keep_top_k=9",
                "checkpoint.every_n_steps=2",
                "training.eval_every_n_steps=4",
                "logging.tensorboard=true",
            ]
        )
        == 0
    )
    run = project / "saved_model" / "t"
    present = {folder: os.listdir(run / folder) for folder in names.RUN_LAYOUT if (run / folder).is_dir()}
    assert {names.LOAD_REPORT_FILE, names.TENSORBOARD_DIR, names.TOP_DIR, names.REPORT_DIR} <= set(present["."])
    assert present[names.STEP_DIR] and len(present[names.TOP_DIR]) >= 3 and present[names.REPORT_DIR]
    assert any(names.STEP_MODEL.match(n) for n in present[names.TOP_DIR])
    assert undeclared(run, names.RUN_LAYOUT) == []
    ours = [run / folder / temporary(entry) for folder, entries in present.items() for entry in entries]
    plant(ours)
    assert sorted(ownership.claim(run, ownership.RUN)) == sorted(ours)
