"""What a run learns from its data before training, kept so that it answers raw inputs.

A :class:`Preprocessing` holds the divisor fixed by the format (255 for byte
images, 16 for the digits' 0…16 pixels), the standardization
statistics learned on the training part (or none), and the classes: the
label values as they appear in the data (numbers or strings), class ``k``
being ``classes[k]``. :meth:`Preprocessing.inputs` maps raw inputs to what
the network saw, :meth:`Preprocessing.encode` labels to class indices and
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


class Preprocessing(NamedTuple):
    """Input divisor, standardization and classes (see the module docstring).

    Attributes:
      divisor: raw inputs are divided by this first.
      mean, std: per-feature statistics (float64) of the divided training
        inputs, subtracted and divided by; ``None`` when not standardized.
      classes: the label of each class, in class order.
    """

    divisor: float = 1.0
    mean: "np.ndarray | None" = None
    std: "np.ndarray | None" = None
    classes: tuple = ()

    def inputs(self, raw: Any, where: str = "inputs") -> np.ndarray:
        """Raw inputs ``(m, n_features)`` (or images, flattened) as the network saw them, float32."""
        X = np.asarray(raw)
        if X.ndim < 1 or X.dtype.kind not in "biuf":
            raise TypeError(f"{where} must be numbers, got {X.dtype}")
        X = X.reshape(len(X), math.prod(X.shape[1:])).astype(np.float64) / self.divisor
        if self.mean is not None:
            if X.shape[1] != len(self.mean):
                raise ValueError(f"{where} have {X.shape[1]} features; the run was trained on {len(self.mean)}")
            X = (X - self.mean) / self.std
        if not np.all(np.isfinite(X)):
            rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
            raise ValueError(f"{where} hold NaN or infinity in {len(rows)} row(s); the first is row {rows[0]}")
        return X.astype(np.float32)

    def encode(self, labels: Sequence, where: str = "labels") -> np.ndarray:
        """Labels as they appear in the data → class indices; a label the run never saw is refused."""
        index = {label: k for k, label in enumerate(self.classes)}
        values = [_plain(v) for v in np.asarray(labels).tolist()]
        unknown = [v for v in values if v not in index]
        if unknown:
            raise ValueError(
                f"{where}: {len(unknown)} label(s) the run does not know, the first is {unknown[0]!r}; "
                f"its classes are {', '.join(map(repr, self.classes[:12]))}{' …' if len(self.classes) > 12 else ''}"
            )
        return np.array([index[v] for v in values], np.int64)

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
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Preprocessing":
        """Reads :meth:`to_json`'s form back, field by field; a wrong file is named with what is wrong."""
        if not isinstance(value, dict) or set(value) != {"format", "divisor", "mean", "std", "classes"}:
            raise FileFormatError(f"{where} must be an object with format, divisor, mean, std and classes")
        if value["format"] != FORMAT:
            raise FileFormatError(f"{where}: format {value['format']!r}, expected {FORMAT!r}")
        number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        if not (number(value["divisor"]) and value["divisor"] > 0):
            raise FileFormatError(f"{where}: divisor must be a finite number > 0, got {value['divisor']!r}")
        stats = []
        for name in ("mean", "std"):
            v = value[name]
            if v is not None and not (isinstance(v, list) and v and all(number(x) for x in v)):
                raise FileFormatError(f"{where}: {name} must be null or a list of finite numbers")
            stats.append(None if v is None else np.asarray(v, np.float64))
        mean, std = stats
        if (mean is None) != (std is None) or (mean is not None and (len(mean) != len(std) or np.any(std <= 0))):
            raise FileFormatError(f"{where}: mean and std must both be null, or lists of one length with std > 0")
        classes = value["classes"]
        if not (isinstance(classes, list) and len(classes) >= 1
                and all(isinstance(c, str) or (number(c) and float(c).is_integer()) for c in classes)
                and len(set(map(repr, classes))) == len(classes)):
            raise FileFormatError(f"{where}: classes must be distinct strings or whole numbers")
        return cls(float(value["divisor"]), mean, std, tuple(classes))

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
