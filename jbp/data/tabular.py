"""One's own data: a CSV file or an ``.npz`` of arrays, read as untrusted bytes.

CSV: one sample per row, numbers in every feature column, the label in the
column ``target`` names (a header name, or an index counted from 0,
negative from the end; the last column by default). Blank lines are skipped;
a row of another length (ragged), a cell that is not a finite number, an
empty label cell, a cell holding a line break (a quoted cell that runs over
lines: a stray ``"`` merges rows), an empty file are refused with the row
(the line, counted from 1, as an editor shows it) and the column named.

The header: the first row names the columns when ``header`` says so, or,
left to guess, when it holds a cell that is not a number where a feature
belongs (or when ``target`` is a name). A first row of numbers only is data,
unless it looks like names written as numbers; then the guess is refused,
asking for ``--header`` or ``--no-header`` (``header=True`` or ``False``):
when its numbers are the column numbers (``0,1,2,…`` or ``1,2,3,…``, as
pandas writes unnamed columns), when its label cell is a word over a column
of numbers, or when its cells are whole numbers over columns that hold
fractions in every row below. Column names must be distinct.

The file is streamed: rows are parsed one at a time into one preallocated
float64 array (its rows counted first, from the file's line breaks), and the
labels are kept as one integer code per row and the list of distinct labels;
the peak memory is about the array's size, not the file's many times.

A file read for a trained run (:func:`read_columns`: ``jbp predict``,
``jbp evaluate --data``) is matched to the run's feature names by name when
both have names: columns in another order are put in the run's order, other
columns (the label among them) are passed over, and a missing one is
refused, naming it. A file without a header, or a run trained without names,
is matched by position, and only when the widths agree.

npz: arrays ``X`` (features, or images to flatten) and ``y`` (labels), or
``x_train``, ``y_train``, ``x_test``, ``y_test``. Labels may be whole
numbers or strings (NumPy's fixed-width ``U`` arrays, which need no pickle).
Every part's width and label count are checked when the file is read.

Both are read within the size limit of :mod:`jbp.files`.
"""

import csv
import io
import itertools
import math
import operator
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from jbp.files import CHUNK, FileFormatError, max_bytes, read_npz, regular_file, too_large

NPZ_NAMES = ("X", "y", "x_train", "y_train", "x_test", "y_test")
HEAD_ROWS = 100
"""Rows looked at, after the first, to tell a header from data."""


class Table(NamedTuple):
    """A CSV file's numbers and labels, held compactly.

    Attributes:
      X: the features, float64 ``(m, n_features)``.
      codes: int64 ``(m,)``: row ``i``'s label is ``values[codes[i]]`` (empty without a label column).
      values: the distinct labels in order of first appearance (numbers where every label is one,
        else strings).
      features: the feature columns' names in ``X``'s order, or ``None`` without a header.
      label: the label column's name, or ``None`` (no header, or no label column).
    """

    X: np.ndarray
    codes: np.ndarray
    values: list
    features: "tuple[str, ...] | None"
    label: "str | None"


def _number(text: str) -> "float | None":
    try:
        value = float(text)
    except ValueError:
        return None
    return value


def _is_index(target) -> bool:
    return isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit())


def _column(target, header: "list[str] | None", width: int, path) -> int:
    if target is None:
        return width - 1
    if _is_index(target):
        index = int(target)
        if not -width <= index < width:
            raise ValueError(f"{path}: --target {target} is outside the {width} columns")
        return index % width
    if header is None:
        raise ValueError(f"{path}: --target {target!r} names a column, but the file has no header row")
    if target not in header:
        raise ValueError(f"{path}: no column {target!r}; the header has {', '.join(map(repr, header[:20]))}")
    return header.index(target)


# --- streaming the rows


class _Bounded(io.RawIOBase):
    """A binary file read up to ``limit`` bytes: a file that grows while it is read is refused there."""

    def __init__(self, f, limit: int, path):
        self.f, self.limit, self.path, self.done = f, limit, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        got = self.f.readinto(buffer)
        self.done += got or 0
        if self.done > self.limit:
            raise too_large(self.path, "the file", self.done, self.limit)
        return got


def _line_breaks(path: pathlib.Path, limit: int) -> int:
    """How many lines the file has at most (its ``\\n`` or its ``\\r``, whichever are more), counted
    in chunks of a MiB: the number of rows to allocate for."""
    lf = cr = done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            lf, cr, done = lf + chunk.count(b"\n"), cr + chunk.count(b"\r"), done + len(chunk)
            if done > limit:
                raise too_large(path, "the file", done, limit)
    return max(lf, cr) + 1


def _rows(path: pathlib.Path, limit: int) -> Iterator[tuple[int, list[str]]]:
    """``(line, cells)`` for every row that is not blank, checked as it is read: UTF-8, readable CSV,
    no cell running over lines, every row as wide as the first. ``line`` is where the row starts."""
    raw = open(path, "rb")
    text = io.TextIOWrapper(io.BufferedReader(_Bounded(raw, limit, path), CHUNK), encoding="utf-8-sig", newline="")
    reader = csv.reader(text, strict=True)
    last, width = 0, None
    try:
        for cells in reader:
            line, ended = last + 1, reader.line_num
            if ended != line or (cells and ("\n" in cells[-1] or "\r" in cells[-1])):
                raise FileFormatError(
                    f"{path}: row {line}: a quoted cell runs over lines {line}–{max(ended, line + 1)} (a stray "
                    '" merges rows); cells may not hold line breaks')
            last = ended
            if width is not None and len(cells) == width and cells[0].strip():
                yield line, cells
                continue
            if not any(cell.strip() for cell in cells):
                continue
            if width is None:
                width = len(cells)
            elif len(cells) != width:
                raise FileFormatError(f"{path}: row {line} has {len(cells)} columns, the first row has {width} "
                                      "(ragged rows)")
            yield line, cells
    except UnicodeDecodeError as err:
        raise FileFormatError(f"{path} is not UTF-8 text: {err}") from None
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            raise FileFormatError(f'{path}: row {last + 1}: a quoted cell opened in this row never closes (a stray ")'
                                  ) from None
        raise FileFormatError(f"{path}: row {last + 1}: not a readable CSV row: {err}") from None
    finally:
        text.close()


class _Source:
    """A CSV file opened for streaming: its first rows in hand, the rest to come."""

    def __init__(self, path, limit):
        self.path = regular_file(path, "CSV file")
        limit = max_bytes(limit)
        size = self.path.stat().st_size
        if size > limit:
            raise too_large(self.path, "the file", size, limit)
        self.lines = _line_breaks(self.path, limit)
        self.rows = _rows(self.path, limit)
        self.head = list(itertools.islice(self.rows, HEAD_ROWS + 1))
        if not self.head:
            raise FileFormatError(f"{self.path} holds no rows")
        self.width = len(self.head[0][1])
        self.first = [cell.strip() for cell in self.head[0][1]]

    def body(self, header: bool) -> Iterator[tuple[int, list[str]]]:
        return itertools.chain(self.head[1:] if header else self.head, self.rows)

    def __enter__(self) -> "_Source":
        return self

    def __exit__(self, *exc) -> None:
        self.rows.close()


def _whole(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _looks_like_names(source: _Source, label_at: "int | None") -> "str | None":
    """Why a first row of numbers may be column names, or None when it reads as data."""
    first, below = source.first, [cells for _, cells in source.head[1:]]
    numbers = [float(c) for c in first if _number(c) is not None]
    if len(numbers) >= 3 and any(numbers == list(range(start, start + len(numbers))) for start in (0, 1)):
        return f"its numbers are the column numbers {', '.join(c for c in first if _number(c) is not None)}"
    if label_at is not None and below and _number(first[label_at]) is None \
            and all(_number(cells[label_at]) is not None for cells in below):
        return f"its label cell {first[label_at]!r} is a word and the labels below are numbers"
    features = [j for j in range(source.width) if j != label_at]
    if below and all(_whole(first[j]) for j in features) \
            and all(not _whole(cells[j].strip()) for j in features for cells in below):
        return "its cells are whole numbers and the rows below hold fractions in every column"
    return None


def _guess_header(source: _Source, label_at: "int | None") -> bool:
    """The first row is a header when a feature cell in it is not a number; a first row of numbers is
    data, unless it looks like names (:func:`_looks_like_names`): then refused, asking to say which."""
    if any(_number(c) is None for j, c in enumerate(source.first) if j != label_at):
        return True
    reason = _looks_like_names(source, label_at)
    if reason:
        shown = ",".join(source.first[:8]) + (",…" if source.width > 8 else "")
        raise FileFormatError(f"{source.path}: is the first row ({shown}) a header or data? {reason}; say which "
                              "with --header or --no-header (header=True or False)")
    return False


def _distinct_names(names: Sequence[str], path) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise FileFormatError(f"{path}: the header names column {name!r} twice; column names must be distinct")
        seen.add(name)


def _fill(source: _Source, header: bool, columns: Sequence[int], label_at: "int | None",
          names: "Sequence[str] | None") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parses the rows into one float64 array (allocated for the counted lines, grown by half if the
    file grew) and the labels into codes; ``columns`` are the features in the order wanted."""
    path, width = source.path, len(columns)
    capacity = max(1, min(source.lines, source.path.stat().st_size // max(1, 2 * source.width) + 1))
    X = np.empty((capacity, width), np.float64)
    codes = np.empty(capacity if label_at is not None else 0, np.int64)
    index: dict[str, int] = {}
    pick = operator.itemgetter(*columns) if width > 1 else (lambda cells, j=columns[0]: (cells[j],))
    isfinite = math.isfinite
    n = 0
    for line, cells in source.body(header):
        if n == capacity:
            capacity += capacity // 2 + 1
            X.resize((capacity, width), refcheck=False)
            if label_at is not None:
                codes.resize(capacity, refcheck=False)
        try:
            values = list(map(float, pick(cells)))
            finite = all(map(isfinite, values))
        except ValueError:
            finite = False
        if not finite:
            for j in columns:
                value = _number(cells[j])
                if value is None or not isfinite(value):
                    column = repr(names[j]) if names else f"{j}"
                    what = "not a number" if value is None else "not finite"
                    raise FileFormatError(f"{path}: row {line}, column {column}: {cells[j].strip()!r} is {what} "
                                          "(features must be numbers)")
        X[n] = values
        if label_at is not None:
            text = cells[label_at].strip()
            code = index.get(text)
            if code is None:
                if not text:
                    column = repr(names[label_at]) if names else f"{label_at}"
                    raise FileFormatError(f"{path}: row {line}, column {column}: the label cell is empty")
                code = index[text] = len(index)
            codes[n] = code
        n += 1
    if n == 0:
        raise FileFormatError(f"{path} has a header and no rows of data")
    X.resize((n, width), refcheck=False)
    if label_at is not None:
        codes.resize(n, refcheck=False)
    return X, codes, list(index)


def _label_values(codes: np.ndarray, texts: list[str]) -> tuple[np.ndarray, list]:
    """Label cells as numbers where every one is a number, else as strings; labels that are then one
    value (``1`` and ``1.0``) become one."""
    numbers = [_number(t) for t in texts]
    values = numbers if all(v is not None for v in numbers) else texts
    return merge_labels(codes, values)


def merge_labels(codes: np.ndarray, values: list) -> tuple[np.ndarray, list]:
    """Codes and distinct values, with values of one ``repr`` made one."""
    first: dict[str, int] = {}
    remap = np.array([first.setdefault(repr(v), len(first)) for v in values], np.int64)
    if len(first) == len(values):
        return codes, values
    kept = [None] * len(first)
    for v, k in zip(values, remap):
        kept[k] = v if kept[k] is None else kept[k]
    return remap[codes], kept


def _read(path, target, header, limit, features_only) -> tuple[Table, list[int], int]:
    with _Source(path, limit) as source:
        return _read_source(source, target, header, features_only)


def _read_source(source: _Source, target, header, features_only) -> tuple[Table, list[int], int]:
    path, width = source.path, source.width
    if width < 2 and not features_only:
        raise FileFormatError(f"{path}: one column only; a CSV needs features and a label")
    if header is None:  # a column named as the target means a header; else, guess
        if isinstance(target, str) and not _is_index(target):
            header = True
        else:
            header = _guess_header(source, None if features_only else _column(target, None, width, path))
    names = source.first if header else None
    if names:
        _distinct_names(names, path)
    label_at = None if features_only else _column(target, names, width, path)
    columns = [j for j in range(width) if j != label_at]
    X, codes, texts = _fill(source, header, columns, label_at, names)
    codes, values = _label_values(codes, texts)
    label = names[label_at] if names and label_at is not None else None
    return Table(X, codes, values, tuple(names[j] for j in columns) if names else None, label), columns, width


def read_table(path: "str | os.PathLike", target: "str | int | None" = None, header: "bool | None" = None,
               limit: "int | str | None" = None, features_only: bool = False) -> Table:
    """A CSV file as a :class:`Table` (see the module docstring): every column but the label a feature.

    Raises:
      FileNotFoundError, FileFormatError, ValueError: naming the row and the column.
    """
    return _read(path, target, header, limit, features_only)[0]


def read_csv(path: "str | os.PathLike", target: "str | int | None" = None, header: "bool | None" = None,
             limit: "int | str | None" = None, features_only: bool = False) -> tuple[np.ndarray, list, list[str]]:
    """Features, labels and feature names from a CSV file (see the module docstring).

    With ``features_only`` every column is a feature and ``labels`` is empty.

    Returns:
      ``(X, labels, names)``: ``X`` float64 ``(m, n_features)``, ``labels``
      a list of the label cells (numbers where every label is one, else
      strings), ``names`` the feature columns' names (``column N`` without a
      header). :func:`read_table` gives the labels compactly.

    Raises:
      FileNotFoundError, FileFormatError, ValueError: naming the row (counted
        from 1, as an editor shows it) and the column.
    """
    table, columns, _ = _read(path, target, header, limit, features_only)
    labels = [table.values[k] for k in table.codes.tolist()]
    names = list(table.features) if table.features is not None else [f"column {j}" for j in columns]
    return table.X, labels, names


def read_columns(path: "str | os.PathLike", n_features: int, *, features: "Sequence[str] | None" = None,
                 label: "str | None" = None, target: "str | int | None" = None, header: "bool | None" = None,
                 labels: bool = False, limit: "int | str | None" = None) -> Table:
    """A CSV file read for a trained run: its ``n_features`` features in the run's order, and with
    ``labels`` its label column.

    By name when the run has names (``features``, and ``label`` its label column's) and the file has
    a header: the columns are put in the run's order and the others passed over; a missing one is
    refused, naming it. By position otherwise, when the widths agree: ``n_features`` columns, or one
    more, the label (at ``target``, the last by default). ``header`` left to guess: the first row is
    a header when it holds every one of the run's names, else as :func:`read_table` guesses.

    Raises:
      FileNotFoundError, FileFormatError, ValueError: naming what is missing or does not fit.
    """
    with _Source(path, limit) as source:
        return _read_for_run(source, n_features, None if features is None else tuple(features), label, target,
                             header, labels)


def _read_for_run(source: _Source, n_features, features, label, target, header, labels) -> Table:
    path, width, first = source.path, source.width, source.first
    named_target = isinstance(target, str) and not _is_index(target)
    if header is None and features and set(features) <= set(first):
        header = True
    if header is None:
        if named_target and width == n_features + 1:
            header = True
        else:
            header = _guess_header(source, _column(None if named_target else target, None, width, path)
                                   if width == n_features + 1 else None)
    names = first if header else None
    if header and features:
        where: dict[str, list[int]] = {}
        for j, name in enumerate(first):
            where.setdefault(name, []).append(j)
        missing = [name for name in features if name not in where]
        if missing:
            raise FileFormatError(
                f"{path}: no column {missing[0]!r} ({len(missing)} of the run's {len(features)} features missing); "
                f"the run was trained on {', '.join(map(repr, features[:12]))}{' …' if len(features) > 12 else ''}")
        columns = [where[name][0] for name in features]
        label_at = None
        if labels:
            rest = [j for j in range(width) if j not in columns]
            if label is not None and label not in where:
                raise FileFormatError(f"{path}: no label column {label!r} (the run's labels were in column {label!r})")
            if label is None and len(rest) != 1:
                raise FileFormatError(f"{path}: which column holds the labels? the file has "
                                      f"{', '.join(repr(first[j]) for j in rest[:12]) or 'no other column'} "
                                      "besides the run's features")
            label_at = where[label][0] if label is not None else rest[0]
        wanted = features + ((names[label_at],) if label_at is not None else ())
        twice = [name for name in wanted if len(where[name]) > 1]
        if twice:
            raise FileFormatError(f"{path}: the header names column {twice[0]!r} twice; which one is it?")
    elif width == n_features and not labels:
        columns, label_at = list(range(width)), None
    elif width == n_features + 1:
        label_at = _column(target, names, width, path)
        columns = [j for j in range(width) if j != label_at]
        label_at = label_at if labels else None
    else:
        expected = f"{n_features + 1} (its {n_features} features and the label)" if labels else \
            f"{n_features}, or {n_features + 1} with the label"
        why = "the run has no feature names" if header else "the file has no header"
        raise FileFormatError(f"{path}: rows of {width} columns; the run's network takes {n_features} features, "
                              f"and columns are matched by position ({why}): {expected} columns are needed")
    X, codes, texts = _fill(source, header, columns, label_at, names)
    codes, values = _label_values(codes, texts) if labels else (codes, [])
    return Table(X, codes, values, tuple(names[j] for j in columns) if names else None,
                 names[label_at] if names and label_at is not None else None)


# --- npz


def read_table_npz(path: "str | os.PathLike", limit: "int | str | None" = None) -> dict[str, np.ndarray]:
    """``X`` and ``y``, or the four ``x_train`` … ``y_test`` arrays, from an ``.npz`` file.

    Every part is checked when read: features are numbers with a sample axis, one label per row,
    and the training and test parts have the same number of features.

    Raises:
      FileFormatError: for an archive holding neither set, or arrays of the wrong kind, length or width.
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
        if math.prod(X.shape[1:]) == 0:
            raise FileFormatError(f"{path}: {x} has no features (shape {X.shape})")
    if len(parts) == 2:
        train, test = arrays["x_train"], arrays["x_test"]
        if math.prod(train.shape[1:]) != math.prod(test.shape[1:]):
            raise FileFormatError(f"{path}: x_test has {math.prod(test.shape[1:])} features per row (shape "
                                  f"{test.shape}), x_train {math.prod(train.shape[1:])} (shape {train.shape})")
        if (arrays["y_train"].dtype.kind == "U") != (arrays["y_test"].dtype.kind == "U"):
            raise FileFormatError(f"{path}: y_train holds {arrays['y_train'].dtype}, y_test {arrays['y_test'].dtype}; "
                                  "labels must be strings in both or numbers in both")
    return {name: arrays[name] for pair in parts for name in pair}


# --- splits


def label_codes(labels) -> tuple[np.ndarray, list]:
    """Labels (a list, or an array) as int64 codes and the distinct values (one per ``repr``, in
    order of first appearance)."""
    array = labels if isinstance(labels, np.ndarray) else None
    if array is not None and array.ndim == 1 and array.dtype.kind in "biufU":
        values, first, codes = np.unique(array, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # first appearance, as for a list
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        distinct = values.tolist()
        return merge_labels(rank[codes.reshape(-1)], [distinct[k] for k in order])
    index: dict[str, int] = {}
    values = []
    codes = np.empty(len(labels), np.int64)
    for i, v in enumerate(labels):
        key = repr(v)
        if key not in index:
            index[key] = len(values)
            values.append(v)
        codes[i] = index[key]
    return codes, values


def split_rows(codes: np.ndarray, values: Sequence, fractions: "tuple[float, ...]", seed: int = 0) -> list[np.ndarray]:
    """:func:`stratified_split` of labels given as codes into ``values`` (one per ``repr``)."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in range(len(fractions) + 1)]
    by_class = np.argsort(codes, kind="stable")  # each class's rows in order
    bounds = np.searchsorted(codes[by_class], np.arange(len(values) + 1))
    for k in sorted(range(len(values)), key=lambda k: repr(values[k])):
        rows = rng.permutation(by_class[bounds[k] : bounds[k + 1]])
        start = 0
        for part, fraction in enumerate(fractions):
            count = int(round(fraction * len(rows)))
            parts[part].append(rows[start : start + count])
            start += count
        parts[-1].append(rows[start:])
    return [np.sort(np.concatenate(p)) if p else np.array([], int) for p in parts]


def stratified_split(labels: list, fractions: "tuple[float, ...]", seed: int = 0) -> list[np.ndarray]:
    """Row indices for parts of the given fractions (the last part takes the rest), class by class,
    each class shuffled with ``seed``; every part keeps the classes' proportions."""
    codes, values = label_codes(list(labels))
    return split_rows(codes, values, fractions, seed)


def rows_needed(fraction: float) -> int:
    """The fewest rows a class needs for ``round(fraction · rows)`` to be at least one."""
    n = max(1, math.ceil(0.5 / fraction) - 1)
    while int(round(fraction * n)) < 1:
        n += 1
    return n


def is_table(spec: str) -> bool:
    return spec.startswith(("csv:", "npz:"))


def table_path(spec: str) -> pathlib.Path:
    return pathlib.Path(spec.split(":", 1)[1]).expanduser()
