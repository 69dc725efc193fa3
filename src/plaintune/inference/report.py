"""Where a model goes wrong: the error report on a labelled set (the dev set after training, or a
labelled predict file at inference).

    report/summary.json     every metric, and the spread of the predictions against the labels'
    report/by_source.csv    the metrics per `source` value (genre), with counts, worst first
    report/worst_pairs.csv  the pairs with the largest errors, both sentences
    report/scatter.png      prediction against label
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from plaintune.commands import CLI, Switches
from plaintune.data.tables import PairTable
from plaintune.errors import UserError
from plaintune.names import (
    REPORT_BY_SOURCE,
    REPORT_FILES,
    REPORT_SCATTER,
    REPORT_SUMMARY,
    REPORT_WORST_PAIRS,
    TEMPORARY,
    is_one_of,
)
from plaintune.recipe.metrics import compute_metrics
from plaintune.rundir import atomic

WORST = 20


# summary.json says who wrote it: a <stem>_report/ folder beside a submission is replaced only when it is
# plaintune's (a run's report/ is covered by the run directory's own marker).
REPORT_WRITER = "plaintune error report"


# Files the desktop or a notebook drops into any folder a user opens (Finder, Explorer, Jupyter): the report
# never writes or deletes them, so they do not make a folder someone else's.
DESKTOP_LITTER = (".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints")


def check_report_folder(
    folder: Path,
    key: str,
    standalone: bool = False,
    models: Sequence[str] = (),
    overwrite: bool = False,
    switches: Switches = CLI,
) -> None:
    """Before any work: the report's folder must be creatable (not an existing file, not a broken link).
    A `standalone` folder (beside a submission, not in a run) that exists must be empty or an earlier
    report of plaintune's for the same `models` (another's only with `overwrite`), holding nothing else:
    its files are replaced, a user's never."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{key}: the error report goes to '{folder}/', but that is a file; move or delete it")
    if folder.is_symlink() and not folder.exists():
        raise UserError(
            f"{key}: the error report goes to '{folder}/', a link to a folder that does not exist; "
            "delete the link or create the folder it points to"
        )
    if not standalone or not folder.is_dir():
        return
    try:
        entries = [p for p in folder.iterdir() if p.name not in DESKTOP_LITTER and not p.name.startswith("._")]
    except OSError as err:
        raise UserError(
            f"{key}: the error report goes to '{folder}/', which cannot be read ({err.strerror}); "
            "fix its permissions, or choose another inference.output_path"
        ) from None
    names = sorted(p.name for p in entries)
    # a report's name is plaintune's only as a file: a folder of that name (a user's) is not overwritten
    others = sorted(
        p.name
        for p in entries
        if not (p.is_file() and is_one_of(p.name, REPORT_FILES))
        and not ((m := TEMPORARY.match(p.name)) and is_one_of(m.group("target"), REPORT_FILES))
    )
    summary = _summary(folder / REPORT_SUMMARY)
    if names and (others or summary is None):
        shown = ", ".join(others[:3]) if others else ", ".join(names[:3])
        raise UserError(
            f"{key}: the error report goes to '{folder}/', which holds files plaintune did not write "
            f"({shown}); move them, or choose another inference.output_path (the report folder is "
            f"named after it)"
        )
    if summary is not None and sorted(summary.get("models") or []) != sorted(models) and not overwrite:
        raise UserError(
            f"{key}: the error report goes to '{folder}/', which holds plaintune's report of other models "
            f"({', '.join(summary.get('models') or ['?'])}); choose another inference.output_path, or pass "
            f"{switches.on('overwrite')} to replace it"
        )


def _summary(summary: Path) -> Optional[dict]:
    """`summary` read if it is the summary.json of a plaintune error report, else None."""
    try:
        content = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("written_by") == REPORT_WRITER else None


def by_source(table: PairTable, predictions: np.ndarray, threshold: float) -> pd.DataFrame:
    """Metrics per source value, the lowest Pearson first (rows without a source count as '(none)')."""
    sources = np.asarray(table.sources if table.sources is not None else ["(all)"] * len(table), dtype=object)
    sources = np.where(pd.isna(sources) | (sources == ""), "(none)", sources)
    rows = []
    for source in sorted(set(sources.tolist())):
        mask = sources == source
        binary = table.binary[mask] if table.binary is not None else None
        metrics = compute_metrics(predictions[mask], table.labels[mask], 1, binary, threshold)
        rows.append(
            {
                "source": source,
                "pairs": int(mask.sum()),
                **metrics,
                "mean_abs_error": float(np.mean(np.abs(predictions[mask] - table.labels[mask]))),
            }
        )
    # weakest first; sources too small for a correlation (NaN) last
    return pd.DataFrame(rows).sort_values("pearson", na_position="last", kind="stable").reset_index(drop=True)


def worst_pairs(table: PairTable, predictions: np.ndarray, count: int = WORST) -> pd.DataFrame:
    errors = predictions - table.labels
    order = np.argsort(-np.abs(np.nan_to_num(errors, nan=np.inf)), kind="stable")[:count]
    return pd.DataFrame(
        {
            "id": [table.ids[i] for i in order],
            "source": [table.sources[i] if table.sources else None for i in order],
            "sentence_1": [table.sentence_1[i] for i in order],
            "sentence_2": [table.sentence_2[i] for i in order],
            "label": table.labels[order],
            "prediction": predictions[order],
            "error": errors[order],
        }
    )


def _scatter(path: Path, labels: np.ndarray, predictions: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(labels, predictions, s=6, alpha=0.4)
    low = float(np.nanmin([labels.min(), np.nanmin(predictions)]))
    high = float(np.nanmax([labels.max(), np.nanmax(predictions)]))
    axis.plot([low, high], [low, high], "k--", linewidth=1)
    axis.set_xlabel("label")
    axis.set_ylabel("prediction")
    axis.set_title(title)
    fig.tight_layout()
    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=80))
    plt.close(fig)


def write_error_report(
    folder: Path, table: PairTable, predictions: np.ndarray, threshold: float = 3.0, models: Sequence[str] = ()
) -> str:
    """Write the report for regression `predictions` of `table` (labelled) into `folder` (made by `models`,
    recorded for the next inference's check); return the one line that points to it."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = table.labels.astype(np.float64)
    folder.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(predictions, labels, 1, table.binary, threshold)
    spread = float(np.nanstd(predictions) / labels.std()) if labels.std() > 0 else float("nan")
    summary = {
        "written_by": REPORT_WRITER,
        **({"models": list(models)} if models else {}),
        "file": table.path,
        "pairs": len(table),
        **metrics,
        "prediction_mean": float(np.nanmean(predictions)),
        "prediction_std": float(np.nanstd(predictions)),
        "label_mean": float(labels.mean()),
        "label_std": float(labels.std()),
        "spread_ratio": spread,
    }
    atomic.write_text(folder / REPORT_SUMMARY, json.dumps(atomic.json_safe(summary), indent=2) + "\n")
    sources = by_source(table, predictions, threshold)
    atomic.write_with(folder / REPORT_BY_SOURCE, lambda tmp: sources.to_csv(tmp, index=False))
    worst = worst_pairs(table, predictions)
    atomic.write_with(folder / REPORT_WORST_PAIRS, lambda tmp: worst.to_csv(tmp, index=False))
    _scatter(folder / REPORT_SCATTER, labels, predictions, f"{Path(table.path).name}: pearson {metrics['pearson']:.3f}")
    weakest = sources.iloc[0]
    squashed = " (squashed toward the mean)" if spread < 0.8 else ""
    where = (
        f"; weakest source '{weakest['source']}' pearson {weakest['pearson']:.3f} over {weakest['pairs']} pairs"
        if len(sources) > 1 and np.isfinite(weakest["pearson"])
        else ""
    )
    return (
        f"error report: {folder}/ (pearson {metrics['pearson']:.4f}; predictions spread {spread:.2f}x the "
        f"labels'{squashed}{where})"
    )
