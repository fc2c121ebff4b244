"""One's own data: a CSV file or an ``.npz`` of arrays, read as untrusted bytes.

CSV: one sample per row, numbers in every feature column, the label in the
column ``target`` names (a header name, or an index counted from 0,
negative from the end; the last column by default). The first row is a
header when ``header`` says so, or, left to guess, when it holds a cell that
is not a number where the rows below hold numbers. Blank lines are skipped;
a row of another length (ragged), a cell that is not a finite number, an
empty file are refused with the row and column named.

npz: arrays ``X`` (features, or images to flatten) and ``y`` (labels), or
``x_train``, ``y_train``, ``x_test``, ``y_test``. Labels may be whole
numbers or strings (NumPy's fixed-width ``U`` arrays, which need no pickle).

Both are read within the size limit of :mod:`jbp.files`.
"""

import csv
import io
import math
import os
import pathlib

import numpy as np

from jbp.files import FileFormatError, max_bytes, read_into, read_npz, regular_file, too_large

NPZ_NAMES = ("X", "y", "x_train", "y_train", "x_test", "y_test")


def _number(text: str) -> "float | None":
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _is_index(target: str) -> bool:
    return target.lstrip("-").isdigit()


def _column(target, header: "list[str] | None", width: int, path) -> int:
    if target is None:
        return width - 1
    if isinstance(target, int) or _is_index(target):
        index = int(target)
        if not -width <= index < width:
            raise ValueError(f"{path}: --target {target} is outside the {width} columns")
        return index % width
    if header is None:
        raise ValueError(f"{path}: --target {target!r} names a column, but the file has no header row")
    if target not in header:
        raise ValueError(f"{path}: no column {target!r}; the header has {', '.join(map(repr, header[:20]))}")
    return header.index(target)


def read_csv(path: "str | os.PathLike", target: "str | int | None" = None, header: "bool | None" = None,
             limit: "int | str | None" = None, features_only: bool = False) -> tuple[np.ndarray, list, list[str]]:
    """Features, labels and feature names from a CSV file (see the module docstring).

    With ``features_only`` every column is a feature and ``labels`` is empty.

    Returns:
      ``(X, labels, names)``: ``X`` float64 ``(m, n_features)``, ``labels``
      a list of the label cells (numbers where every label is one, else
      strings), ``names`` the feature columns' names (``column N`` without a
      header).

    Raises:
      FileNotFoundError, FileFormatError, ValueError: naming the row (counted
        from 1, as an editor shows it) and the column.
    """
    path = regular_file(path, "CSV file")
    limit = max_bytes(limit)
    size = path.stat().st_size
    if size > limit:
        raise too_large(path, "the file", size, limit)
    with open(path, "rb") as f:
        raw = read_into(f, size, path, "the file").tobytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FileFormatError(f"{path} is not UTF-8 text: {err}") from None
    try:
        rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), 1) if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise FileFormatError(f"{path}: not a readable CSV file: {err}") from None
    if not rows:
        raise FileFormatError(f"{path} holds no rows")
    width = len(rows[0][1])
    for n, row in rows:
        if len(row) != width:
            raise FileFormatError(f"{path}: row {n} has {len(row)} columns, the first row has {width} (ragged rows)")
    if width < 2 and not features_only:
        raise FileFormatError(f"{path}: one column only; a CSV needs features and a label")
    first = rows[0][1]
    if header is None:  # a column named as the target means a header; else, a word among the features
        if isinstance(target, str) and not _is_index(target):
            header = True
        else:
            label_guess = -1 if features_only else _column(target, None, width, path)
            header = any(_number(c) is None for j, c in enumerate(first) if j != label_guess)
    names = [c.strip() for c in first] if header else None
    body = rows[1:] if header else rows
    if not body:
        raise FileFormatError(f"{path} has a header and no rows of data")
    label_at = -1 if features_only else _column(target, names, width, path)
    X = np.empty((len(body), width - (0 if features_only else 1)), np.float64)
    labels = []
    for i, (n, row) in enumerate(body):
        j_out = 0
        for j, cell in enumerate(row):
            if j == label_at:
                labels.append(cell.strip())
                continue
            value = _number(cell)
            if value is None or not math.isfinite(value):
                column = repr(names[j]) if names else f"{j}"
                what = "not a number" if value is None else "not finite"
                raise FileFormatError(f"{path}: row {n}, column {column}: {cell.strip()!r} is {what} "
                                      "(features must be numbers)")
            X[i, j_out] = value
            j_out += 1
    numeric = [_number(v) for v in labels]
    if all(v is not None for v in numeric):
        labels = numeric
    feature_names = [c for j, c in enumerate(names) if j != label_at] if names else \
        [f"column {j}" for j in range(width) if j != label_at]
    return X, labels, feature_names


def read_table_npz(path: "str | os.PathLike", limit: "int | str | None" = None) -> dict[str, np.ndarray]:
    """``X`` and ``y``, or the four ``x_train`` … ``y_test`` arrays, from an ``.npz`` file.

    Raises:
      FileFormatError: for an archive holding neither set, or arrays of the wrong kind or length.
    """
    arrays = read_npz(path, NPZ_NAMES, limit=limit, kinds="biufU")
    if {"x_train", "y_train", "x_test", "y_test"} <= set(arrays):
        parts = [("x_train", "y_train"), ("x_test", "y_test")]
    elif {"X", "y"} <= set(arrays):
        parts = [("X", "y")]
    else:
        raise FileFormatError(f"{path} must hold arrays X and y, or x_train, y_train, x_test and y_test; "
                              f"it holds {', '.join(sorted(arrays)) or 'none of them'}")
    for x, y in parts:
        X, labels = arrays[x], arrays[y]
        if X.dtype.kind not in "biuf" or X.ndim < 2:
            raise FileFormatError(f"{path}: {x} must be numbers with a sample axis and features, got {X.dtype} {X.shape}")
        if labels.ndim != 1 or len(labels) != len(X):
            raise FileFormatError(f"{path}: {y} must hold one label per row of {x} ({len(X)}), got shape {labels.shape}")
        if len(X) == 0:
            raise FileFormatError(f"{path}: {x} has no rows")
    return {name: arrays[name] for pair in parts for name in pair}


def stratified_split(labels: list, fractions: "tuple[float, ...]", seed: int = 0) -> list[np.ndarray]:
    """Row indices for parts of the given fractions (the last part takes the rest), class by class,
    each class shuffled with ``seed``; every part keeps the classes' proportions."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(len(fractions) + 1)]
    values = np.array([repr(v) for v in labels])
    for value in sorted(set(values)):
        rows = rng.permutation(np.flatnonzero(values == value))
        start = 0
        for k, fraction in enumerate(fractions):
            count = int(round(fraction * len(rows)))
            parts[k].append(rows[start : start + count])
            start += count
        parts[-1].append(rows[start:])
    return [np.sort(np.concatenate(p)) if p else np.array([], int) for p in parts]


def is_table(spec: str) -> bool:
    return spec.startswith(("csv:", "npz:"))


def table_path(spec: str) -> pathlib.Path:
    return pathlib.Path(spec.split(":", 1)[1]).expanduser()
