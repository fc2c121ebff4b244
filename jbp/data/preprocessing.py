"""What a run learns from its data before training, kept so that it answers raw inputs.

A :class:`Preprocessing` holds the divisor fixed by the format (255 for byte
images, 16 for the digits' 0…16 pixels), the standardization
statistics learned on the training part (or none), and the classes: the
label values as they appear in the data (numbers or strings), class ``k``
being ``classes[k]``; for a CSV file with a header, the names of the
feature columns in the network's order and of the label column, so that a
file read later is matched by name (:func:`jbp.data.tabular.read_columns`).
:meth:`Preprocessing.inputs` maps raw inputs to what the network saw,
:meth:`Preprocessing.encode` labels to class indices and
:meth:`Preprocessing.decode` back; ``jbp train`` writes it into the run as
``preprocessing.json``, and ``jbp evaluate``, ``jbp predict`` and
:func:`jbp.load_run` read it back (checked as any file read from disk is).
"""

import json
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jbp.files import FileFormatError

FORMAT = "jbp-preprocessing/1"
DIVISOR_RANGE = (1e-12, 1e12)
"""The divisors :meth:`Preprocessing.from_json` accepts (jbp writes 1, 16 and 255)."""


def _shown(value: Any) -> str:
    """A value from an untrusted file, short enough for one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Preprocessing(NamedTuple):
    """Input divisor, standardization and classes (see the module docstring).

    Attributes:
      divisor: raw inputs are divided by this first.
      mean, std: per-feature statistics (float64) of the divided training
        inputs, subtracted and divided by; ``None`` when not standardized.
      classes: the label of each class, in class order.
      features: the feature columns' names, in the order of the network's
        inputs, or ``None`` (no header, npz, images): matched by position.
      target: the label column's name, or ``None``.
    """

    divisor: float = 1.0
    mean: "np.ndarray | None" = None
    std: "np.ndarray | None" = None
    classes: tuple = ()
    features: "tuple[str, ...] | None" = None
    target: "str | None" = None

    def inputs(self, raw: Any, where: str = "inputs") -> np.ndarray:
        """Raw inputs ``(m, n_features)`` (or images, flattened) as the network saw them, float32."""
        X = np.asarray(raw)
        if X.ndim < 1 or X.dtype.kind not in "biuf":
            raise TypeError(f"{where} must be numbers, got {X.dtype}")
        width = math.prod(X.shape[1:])
        trained = len(self.mean) if self.mean is not None else len(self.features) if self.features is not None else None
        if trained is not None and width != trained:
            raise ValueError(f"{where} have {width} features; the run was trained on {trained}")
        X = np.array(X.reshape(len(X), width), np.float64)  # one copy, worked on in place
        if self.divisor != 1:
            X /= self.divisor
        if self.mean is not None:
            X -= self.mean
            X /= self.std
        if not np.all(np.isfinite(X)):
            rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise ValueError(f"{where} hold NaN or infinity in {len(rows)} row(s); the first is row {rows[0]}")
        top = float(np.finfo(np.float32).max)
        if X.size and np.max(np.abs(X)) > top:  # the network sees float32: refused, not cast to infinity
            rows = np.flatnonzero(np.max(np.abs(X), axis=1) > top)
            raise ValueError(f"{where} hold values beyond float32's range (±{top:.3g}) after preprocessing in "
                             f"{len(rows)} row(s); the first is row {rows[0]}")
        return X.astype(np.float32)

    def encode(self, labels: Sequence, where: str = "labels") -> np.ndarray:
        """Labels as they appear in the data → class indices; a label the run never saw is refused."""
        values = [_plain(v) for v in np.asarray(labels).tolist()]
        distinct = list(dict.fromkeys(values))
        position = {v: k for k, v in enumerate(distinct)}
        return self.encode_codes(np.array([position[v] for v in values], np.int64), distinct, where)

    def encode_codes(self, codes: np.ndarray, values: Sequence, where: str = "labels") -> np.ndarray:
        """:meth:`encode` of labels held compactly: row ``i``'s label is ``values[codes[i]]``."""
        index = {label: k for k, label in enumerate(self.classes)}
        lookup = np.array([index.get(_plain(v), -1) for v in values] + [-1], np.int64)
        indices = lookup[np.asarray(codes, np.int64)]
        unknown = np.flatnonzero(indices < 0)
        if unknown.size:
            raise ValueError(
                f"{where}: {unknown.size} label(s) the run does not know, the first is "
                f"{_plain(values[codes[unknown[0]]])!r}; its classes are "
                f"{', '.join(map(repr, self.classes[:12]))}{' …' if len(self.classes) > 12 else ''}"
            )
        return indices

    def decode(self, indices: np.ndarray) -> list:
        """Class indices → the labels as they appeared in the data."""
        return [self.classes[int(k)] for k in np.asarray(indices)]

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "divisor": self.divisor,
            "mean": None if self.mean is None else self.mean.astype(float).tolist(),
            "std": None if self.std is None else self.std.astype(float).tolist(),
            "classes": list(self.classes),
            "features": None if self.features is None else list(self.features),
            "target": self.target,
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Preprocessing":
        """Reads :meth:`to_json`'s form back, field by field; a wrong file is named with the key that is
        wrong. ``features`` and ``target`` may be absent (files written before they were kept).

        Refused: a divisor outside ``[1e-12, 1e12]``; mean or std that are not finite, of
        different lengths, or a std ≤ 0; fewer than two classes, or classes that are one label
        twice; feature names that are not distinct strings, or not as many as the statistics.
        """
        keys, optional = {"format", "divisor", "mean", "std", "classes"}, {"features", "target"}
        if not isinstance(value, dict) or not keys <= set(value) or set(value) - keys - optional:
            extra = sorted(set(value) - keys - optional) if isinstance(value, dict) else []
            unknown = f"; it has {', '.join(map(repr, extra[:5]))}" if extra else ""
            raise FileFormatError(f"{where} must be an object with format, divisor, mean, std and classes "
                                  f"(and features, target){unknown}")
        if value["format"] != FORMAT:
            raise FileFormatError(f"{where}: format {_shown(value['format'])}, expected {FORMAT!r}")
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        divisor = value["divisor"]
        if not (number(divisor) and DIVISOR_RANGE[0] <= divisor <= DIVISOR_RANGE[1]):
            raise FileFormatError(f"{where}: 'divisor' must be a finite number in [{DIVISOR_RANGE[0]:g}, "
                                  f"{DIVISOR_RANGE[1]:g}], got {_shown(divisor)}")
        stats = []
        for name in ("mean", "std"):
            v = value[name]
            if v is not None and not (isinstance(v, list) and v and all(number(x) for x in v)):
                raise FileFormatError(f"{where}: {name!r} must be null or a non-empty list of finite numbers")
            stats.append(None if v is None else np.asarray(v, np.float64))
        mean, std = stats
        if (mean is None) != (std is None):
            raise FileFormatError(f"{where}: 'mean' and 'std' must both be null or both be lists")
        if mean is not None and len(mean) != len(std):
            raise FileFormatError(f"{where}: 'mean' has {len(mean)} numbers and 'std' {len(std)}; one per feature")
        if std is not None and np.any(std <= 0):
            raise FileFormatError(f"{where}: 'std' must be > 0, got {std[np.flatnonzero(std <= 0)[0]]:g}")
        classes = value["classes"]
        if not (isinstance(classes, list)
                and all(isinstance(c, str) or (number(c) and float(c).is_integer()) for c in classes)):
            raise FileFormatError(f"{where}: 'classes' must be a list of strings or whole numbers")
        if len(classes) < 2:
            raise FileFormatError(f"{where}: 'classes' holds {len(classes)} class(es); a classifier has two or more")
        plain = [_plain(c) for c in classes]
        if len(set(map(repr, plain))) != len(plain):
            twice = next(c for k, c in enumerate(plain) if repr(c) in set(map(repr, plain[:k])))
            raise FileFormatError(f"{where}: 'classes' names the class {twice!r} twice")
        features, target = value.get("features"), value.get("target")
        if features is not None:
            if not (isinstance(features, list) and features and all(isinstance(f, str) for f in features)):
                raise FileFormatError(f"{where}: 'features' must be null or a non-empty list of column names")
            if len(set(features)) != len(features):
                raise FileFormatError(f"{where}: 'features' names a column twice")
            if mean is not None and len(features) != len(mean):
                raise FileFormatError(f"{where}: 'features' names {len(features)} columns and 'mean' has "
                                      f"{len(mean)} numbers; one per feature")
            features = tuple(features)
        if target is not None and not isinstance(target, str):
            raise FileFormatError(f"{where}: 'target' must be null or the label column's name")
        if target is not None and features is not None and target in features:
            raise FileFormatError(f"{where}: 'target' {target!r} is also one of the features")
        return cls(float(divisor), mean, std, tuple(classes), features, target)

    def save(self, path) -> None:
        from jbp.files import atomic_write

        atomic_write(path, lambda f: f.write((json.dumps(self.to_json(), indent=1, allow_nan=False) + "\n").encode()))


def _plain(value: Any) -> Any:
    """A label as JSON keeps it: whole floats as ints, NumPy scalars as Python ones."""
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def learn(X_train: np.ndarray, labels: Sequence, *, divisor: float = 1.0, standardize: bool = False,
          where: str = "labels") -> Preprocessing:
    """Learns the preprocessing from the training part: classes sorted, statistics of the divided inputs.

    A feature constant over the training part is only centred (its std is taken as 1).

    Raises:
      ValueError: for fewer than two classes, or numeric labels that are not whole numbers.
    """
    values = [_plain(v) for v in np.asarray(labels).tolist()]
    bad = [v for v in values if not isinstance(v, (str, int))]
    if bad:
        raise ValueError(f"{where}: labels must be whole numbers or strings; {len(bad)} are not, the first is {bad[0]!r}")
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise ValueError(f"{where}: labels mix numbers and strings")
    classes = tuple(sorted(set(values)))
    if len(classes) < 2:
        raise ValueError(f"{where}: one class only ({classes[0]!r} for every row); a classifier needs two or more")
    mean, std = statistics(X_train, divisor) if standardize else (None, None)
    return Preprocessing(float(divisor), mean, std, classes)


def statistics(X_train: np.ndarray, divisor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float64) of the divided training inputs; a
    feature constant there gets std 1, so it is only centred."""
    divided = np.asarray(X_train, np.float64).reshape(len(X_train), -1) / divisor
    mean, std = divided.mean(axis=0), divided.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)
