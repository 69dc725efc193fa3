"""The submission file: predictions clipped and rounded, in the template's rows and order."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from plaintune.data.tables import read_csv_checked, require_columns
from plaintune.errors import UserError
from plaintune.rundir import atomic


def postprocess(values: np.ndarray, clip: Optional[Sequence[float]], decimals: Optional[int]) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    if decimals is not None:
        values = np.round(values, decimals)
    return values


def write_submission(
    template_path: str,
    ids: Sequence[str],
    values: np.ndarray,
    output_path: str,
    id_column: str = "id",
    target_column: str = "target",
    encoding: str = "utf-8",
    integer: bool = False,
) -> None:
    """Write the template's rows, in the template's order, with `target_column` filled.

    Each template id must be a predicted id and vice versa; a mismatch is an
    error that names the first offending id, and nothing is written.
    """
    key = "data.submission_template"
    template = read_csv_checked(template_path, key, encoding)
    require_columns(template, f"{key}: '{template_path}'", {"id": id_column})
    if target_column not in template.columns:
        raise UserError(
            f"{key}: '{template_path}' lacks the target column '{target_column}' (found: "
            f"{', '.join(map(str, template.columns))}); set data.columns.target"
        )
    position = {str(i): n for n, i in enumerate(ids)}
    template_ids = template[id_column].astype(str).tolist()
    unknown = [(line, i) for line, i in enumerate(template_ids, start=2) if i not in position]
    if unknown:
        line, first = unknown[0]
        raise UserError(
            f"{key}: '{template_path}' line {line}: id '{first}' is not in data.predict_path "
            f"({len(unknown)} template ids are missing there); template and predict file must "
            "list the same ids"
        )
    if len(set(template_ids)) != len(template_ids):
        first = template[id_column][template[id_column].duplicated()].iloc[0]
        raise UserError(f"{key}: '{template_path}': duplicate id '{first}'; ids must be unique")
    if len(template_ids) != len(ids):
        missing = next(i for i in ids if i not in set(template_ids))
        raise UserError(
            f"{key}: '{template_path}' has {len(template_ids)} rows but data.predict_path has "
            f"{len(ids)} (first id not in the template: '{missing}'); they must list the same ids"
        )
    ordered = np.asarray(values)[[position[i] for i in template_ids]]
    if not integer and not np.isfinite(ordered).all():
        raise RuntimeError("non-finite predictions; the model diverged (check learning_rate)")
    template[target_column] = ordered.astype(np.int64) if integer else ordered
    atomic.write_with(output_path, lambda tmp: template.to_csv(tmp, index=False, encoding="utf-8"))
