"""Sensor data from a CSV file: numeric feature columns and one integer class label per row.

``load_csv(path)`` (dataset name ``csv:PATH``, or ``csv:PATH#COLUMN`` to name the label column by
header or 0-based index; the default is the last column) reads comma-, semicolon- or tab-separated
values. The first row is a header when none of its cells is a number. Every other cell must be a
finite number and every label a non-negative integer; anything else is a ``DataError`` that names the
line and column (by header name when there is one), so a bad export is fixed where it is.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from koala_async.errors import DataError
from koala_async.learning.models import InputSpec

if TYPE_CHECKING:
    from koala_async.learning.data import Dataset


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _delimiter(first_line: str) -> str:
    for candidate in (",", ";", "\t"):
        if candidate in first_line:
            return candidate
    return ","


def _label_index(label: int | str, header: list[str] | None, width: int, path: Path) -> int:
    if isinstance(label, str) and not label.lstrip("-").isdigit():
        if header is None or label not in header:
            raise DataError(f"{path}: no column named {label!r}"
                            + (f" (header: {header})" if header else " (the file has no header row)"))
        return header.index(label)
    index = int(label)
    if not -width <= index < width:
        raise DataError(f"{path}: label column {index} is outside the {width} columns")
    return index % width


def load_csv(path: str | Path, label: int | str = -1, num_classes: int | None = None) -> Dataset:
    """A labelled vector :class:`~koala_async.learning.data.Dataset` from a CSV file (module doc)."""
    from koala_async.learning.data import Dataset

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets write a byte-order mark
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as text: {exc}") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: empty file")
    reader = csv.reader(lines, delimiter=_delimiter(next(line for line in lines if line.strip())))
    header: list[str] | None = None
    rows: list[list[float]] = []
    width = col = 0
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row]
        if not width:
            width = len(cells)
            if all(_number(c) is None for c in cells):
                header = cells
                col = _label_index(label, header, width, path)
                continue
            col = _label_index(label, header, width, path)
        if len(cells) != width:
            raise DataError(f"{path}:{reader.line_num}: {len(cells)} columns, the first row has {width}")
        values = []
        for j, cell in enumerate(cells):
            value = _number(cell)
            if value is None or not math.isfinite(value):
                name = f" ({header[j]!r})" if header else ""
                what = "not a number" if value is None else "not finite"
                raise DataError(f"{path}:{reader.line_num}: column {j + 1}{name}: {cell!r} is {what}")
            if j == col and (value < 0 or value != int(value)):
                raise DataError(f"{path}:{reader.line_num}: column {j + 1} (the label): {cell!r} is not a "
                                "non-negative integer class id")
            values.append(value)
        rows.append(values)
    if not rows:
        raise DataError(f"{path}: a header and no data rows")
    if width < 2:
        raise DataError(f"{path}: needs at least one feature column and a label column")
    table = np.asarray(rows, dtype=np.float64)
    y = table[:, col].astype(np.int64)
    x = np.delete(table, col, axis=1).astype(np.float32)
    classes = num_classes or int(y.max()) + 1
    if y.max() >= classes:
        raise DataError(f"{path}: label {int(y.max())} >= num_classes {classes}")
    return Dataset(x, y, InputSpec("vector", (x.shape[1],), classes))
