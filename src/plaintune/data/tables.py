"""CSV reading with checks: a pair file -> a PairTable, every problem named by key, file, line and column.

Errors name the config key, the file, the line and the column, so a user can
fix the CSV without reading code. Line numbers count the header as line 1.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from box import Box

from plaintune import paths
from plaintune.errors import UserError

MISSING_TEXT = {"", "nan", "null", "none", "n/a", "na", "<na>"}
MAX_LISTED = 3  # bad rows named per problem before "and N more"


@dataclass
class PairTable:
    """The checked contents of one CSV: ids, sentence pairs, optional float labels."""

    path: str
    ids: list[str]
    sentence_1: list[str]
    sentence_2: list[str]
    labels: Optional[np.ndarray]
    binary: Optional[np.ndarray] = None  # the 0/1 column (data.columns.binary_label), when the file has one
    binary_problem: Optional[str] = None  # why a binary column the file has cannot be used
    sources: Optional[list] = None  # the `source` column (genre), when the file has one

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: Sequence[int]) -> "PairTable":
        """The rows at `positions`, in that order (the optional columns too)."""
        pick = lambda values: None if values is None else [values[i] for i in positions]  # noqa: E731
        array = lambda values: None if values is None else values[np.asarray(positions, dtype=int)]  # noqa: E731
        return PairTable(
            path=self.path,
            ids=pick(self.ids),
            sentence_1=pick(self.sentence_1),
            sentence_2=pick(self.sentence_2),
            labels=array(self.labels),
            binary=array(self.binary),
            binary_problem=self.binary_problem,
            sources=pick(self.sources),
        )


def pool(first: PairTable, second: PairTable) -> PairTable:
    """Two labelled tables as one (train and dev pooled for k-fold), first's rows first."""
    return PairTable(
        path=f"{first.path} + {second.path}",
        ids=first.ids + second.ids,
        sentence_1=first.sentence_1 + second.sentence_1,
        sentence_2=first.sentence_2 + second.sentence_2,
        labels=np.concatenate([first.labels, second.labels]),
    )


def _rows_text(lines: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in lines[:MAX_LISTED])
    more = f" and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else ""
    return f"line{'s' if len(lines) > 1 else ''} {shown}{more}"


def _check_exists(path: str, key: str) -> None:
    paths.require(path, key, (paths.FILE,), fix=f"fix the path or override it ({key}=path/to/file.csv)")


def _read_rows(path: str, where: str, encoding: str) -> tuple[list[list[str]], list[int]]:
    """The non-blank rows of a CSV and the file line each ends on."""
    # utf-8-sig reads plain UTF-8 too, and drops the BOM that Excel puts in front.
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    rows, lines = [], []
    try:
        with open(path, newline="", encoding=codec) as handle:
            reader = csv.reader(handle, strict=True)
            for row in reader:
                if row:  # blank lines carry no record
                    rows.append(row)
                    lines.append(reader.line_num)
    except UnicodeDecodeError as err:
        if err.object[:2] in (b"\xff\xfe", b"\xfe\xff"):  # the byte-order mark of UTF-16 (Excel's "Unicode text")
            hint = "; it is UTF-16: save it as UTF-8, or set data.encoding=utf-16"
        elif codec == "utf-8-sig":
            hint = "; Korean Excel exports are often cp949: set data.encoding=cp949"
        else:
            hint = "; set data.encoding to the file's encoding"
        raise UserError(
            f"{where} is not valid {encoding} (byte {err.object[err.start : err.start + 1]!r} "
            f"at offset {err.start}){hint}"
        ) from None
    except LookupError:
        raise UserError(f"data.encoding: unknown encoding '{encoding}'; use e.g. utf-8 or cp949") from None
    except PermissionError:
        raise UserError(
            f"{where}: permission denied; make it readable (chmod u+r '{path}') or copy it somewhere readable"
        ) from None
    except OSError as err:  # e.g. an I/O error on a failing disk or a dropped network mount
        raise UserError(f"{where} cannot be read ({err.strerror or err})") from None
    except csv.Error as err:
        line = lines[-1] + 1 if lines else 1
        if "field larger than field limit" in str(err):
            # almost always a quote that opens a field and never closes: the rest of the file is one field
            raise UserError(
                f"{where}: from line {line} on, one field is longer than {csv.field_size_limit():,} characters: "
                f'usually a quote (") that opens a field and is never closed, so the rest of the file reads as '
                f'one text; check the quotes on line {line} (a quote inside a quoted field is written twice: "")'
            ) from None
        raise UserError(
            f"{where} is not a well-formed CSV (line {line}: {err}); quote fields that contain commas or quotes"
        ) from None
    return rows, lines


def read_csv_checked(path: str, key: str, encoding: str = "utf-8") -> pd.DataFrame:
    """Read a CSV as strings; turn every way it can be unreadable into a `UserError`.

    The csv module (not pandas) reads it, so a row with too many or too few
    fields is reported with its line instead of being silently re-aligned.
    """
    where = f"{key}: '{path}'"
    _check_exists(path, key)
    rows, lines = _read_rows(path, where, encoding)
    if not rows:
        raise UserError(f"{where} is empty; expected a header line such as id,source,sentence_1,sentence_2,label")
    header = [name.strip() for name in rows[0]]
    if len(set(header)) != len(header):
        dup = next(name for name in header if header.count(name) > 1)
        raise UserError(f"{where}: column '{dup}' appears twice in the header; rename one")
    if len(rows) == 1:
        raise UserError(f"{where} has a header but no rows")
    ragged = [(line, len(row)) for line, row in zip(lines[1:], rows[1:]) if len(row) != len(header)]
    if ragged:
        line, count = ragged[0]
        raise UserError(
            f"{where} is not a well-formed CSV: line {line} has {count} fields but the header has "
            f"{len(header)} ({len(ragged)} such rows); quote fields that contain commas"
        )
    frame = pd.DataFrame(rows[1:], columns=header, dtype=str)
    frame.attrs["lines"] = lines[1:]  # file line of each row, for messages
    return frame


def require_columns(frame: pd.DataFrame, where: str, needed: dict[str, str]) -> None:
    """`needed` maps config key (data.columns.X) -> column name."""
    missing = [(k, c) for k, c in needed.items() if c not in frame.columns]
    if missing:
        names = ", ".join(f"'{c}'" for _, c in missing)
        keys = ", ".join(f"data.columns.{k}" for k, _ in missing)
        raise UserError(
            f"{where} lacks column{'s' if len(missing) > 1 else ''} {names} "
            f"(found: {', '.join(map(str, frame.columns))}); rename the header or set {keys}"
        )


def read_pairs(
    path: str,
    key: str,
    columns: dict,
    encoding: str = "utf-8",
    labelled: Optional[bool] = True,
    label_range: Optional[Sequence[float]] = None,
    unique_ids: bool = False,
) -> PairTable:
    """Read and check a pair CSV. `key` is the config key that named it (for messages).

    `labelled` None: labels are read when the file has a label column whose every value is a
    number (a predict file that happens to be labelled); otherwise the table has none."""
    frame = read_csv_checked(path, key, encoding)
    where = f"{key}: '{path}'"
    needed = {"id": columns["id"], "sentence_1": columns["sentence_1"], "sentence_2": columns["sentence_2"]}
    if labelled:
        needed["label"] = columns["label"]
    require_columns(frame, where, needed)
    lines = np.asarray(frame.attrs["lines"])

    for col_key in ("sentence_1", "sentence_2"):
        col = columns[col_key]
        text = frame[col].str.strip()
        bad = text.str.lower().isin(MISSING_TEXT).to_numpy()
        if bad.any():
            raise UserError(
                f"{where}: empty sentence in column '{col}' at {_rows_text(lines[bad])}; fill or drop those rows"
            )

    ids = frame[columns["id"]].tolist()
    if unique_ids:
        dup = frame[columns["id"]].duplicated(keep="first").to_numpy()
        if dup.any():
            first = frame[columns["id"]][dup].iloc[0]
            raise UserError(
                f"{where}: duplicate id '{first}' in column '{columns['id']}' at "
                f"{_rows_text(lines[dup])}; ids must be unique"
            )

    if labelled is None:
        label_column = columns["label"]
        numbers = (
            pd.to_numeric(frame[label_column].str.strip(), errors="coerce") if label_column in frame.columns else None
        )
        labelled = numbers is not None and bool(np.isfinite(numbers.to_numpy(dtype=np.float64)).all())
    labels = None
    if labelled:
        col = columns["label"]
        numbers = pd.to_numeric(frame[col].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(numbers)
        if bad.any():
            first = frame[col][bad].iloc[0]
            raise UserError(
                f"{where}: label {first!r} in column '{col}' at {_rows_text(lines[bad])} is not a "
                "number; fix those rows"
            )
        if label_range is not None:
            low, high = label_range
            bad = (numbers < low) | (numbers > high)
            if bad.any():
                raise UserError(
                    f"{where}: label {numbers[bad][0]:g} in column '{col}' at {_rows_text(lines[bad])} "
                    f"is outside data.label_range [{low:g}, {high:g}]; fix the rows or set "
                    "data.label_range"
                )
        labels = numbers.astype(np.float32)
    # the binary column scores regression models; a classifier trained on it has it as its label
    binary, binary_problem = (
        _binary_column(frame, columns.get("binary_label"), lines)
        if labelled and columns.get("binary_label") != columns["label"]
        else (None, None)
    )
    sources = frame["source"].tolist() if "source" in frame.columns else None

    return PairTable(
        path=path,
        ids=[str(i) for i in ids],
        sentence_1=frame[columns["sentence_1"]].tolist(),
        sentence_2=frame[columns["sentence_2"]].tolist(),
        labels=labels,
        binary=binary,
        binary_problem=binary_problem,
        sources=sources,
    )


def _binary_column(frame: pd.DataFrame, column: Optional[str], lines: np.ndarray) -> tuple:
    """(the file's 0/1 column as int64, None), or (None, why it is unusable); (None, None) when the
    file has no such column. Only F1/accuracy read it, so a bad one never stops training or inference
    by itself (training.metric: f1 then reports why)."""
    if not column or column not in frame.columns:
        return None, None
    values = pd.to_numeric(frame[column].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        return None, (
            f"has {frame[column][bad].iloc[0]!r} in column '{column}' at {_rows_text(lines[bad])}, not 0 or 1"
        )
    return values.astype(np.int64), None


def check_class_labels(table: PairTable, key: str, num_labels: int, column: str) -> None:
    """For classification the labels must be the integers 0..num_labels-1."""
    labels = table.labels
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= num_labels)
    if bad.any():
        lines = np.flatnonzero(bad) + 2
        raise UserError(
            f"{key}: '{table.path}': label {labels[bad][0]:g} in column '{column}' at "
            f"{_rows_text(lines)} is not a class id 0..{num_labels - 1} "
            f"(model.num_labels={num_labels})"
        )


def with_swapped_pairs(table: PairTable) -> PairTable:
    """The table followed by every pair reversed (similarity is symmetric, the encoder input is not)."""
    return PairTable(
        path=table.path,
        ids=table.ids + [f"{i}~swapped" for i in table.ids],
        sentence_1=table.sentence_1 + table.sentence_2,
        sentence_2=table.sentence_2 + table.sentence_1,
        labels=None if table.labels is None else np.concatenate([table.labels, table.labels]),
    )


def read_tables(cfg: Box) -> dict:
    """Read and check every labelled CSV the run needs, before any model loads."""
    columns, enc = cfg.data.columns, cfg.data.encoding
    label_range = cfg.data.label_range if cfg.model.num_labels == 1 else None
    tables = {}
    for role in ("train", "dev", "test"):
        path = cfg.data.get(f"{role}_path")
        if not path:
            continue
        key = f"data.{role}_path"
        tables[role] = read_pairs(path, key, columns, enc, labelled=True, label_range=label_range)
        if cfg.model.num_labels > 1:
            check_class_labels(tables[role], key, cfg.model.num_labels, columns.label)
    return tables


def describe_files(cfg: Box, tables: dict) -> list[str]:
    """One line per data file the run reads, with its rows, so a run never trains on the demo set (or
    last month's export) without saying so. The predict file is counted too: inference will read it."""
    lines = [f"data: {role:<7} {table.path}  ({len(table):,} rows)" for role, table in tables.items()]
    predict = cfg.data.predict_path
    try:
        rows = f"{len(read_csv_checked(predict, 'data.predict_path', cfg.data.encoding)):,} rows"
    except UserError:
        rows = "not readable yet; inference needs it"
    lines.append(f"data: {'predict':<7} {predict}  ({rows})")
    return lines


__all__ = [
    "PairTable",
    "read_pairs",
    "describe_files",
    "read_csv_checked",
    "require_columns",
    "check_class_labels",
    "with_swapped_pairs",
    "read_tables",
]
