"""Data sets: XOR, scikit-learn's digits, MNIST and Fashion-MNIST, and one's own CSV or npz.

Nothing is downloaded, and every file is read as untrusted bytes within a
size limit (:mod:`jbp.files`, :mod:`jbp.data.idx`, :mod:`jbp.data.tabular`).
``digits`` needs scikit-learn (``pip install 'jbp[datasets]'``), which ships
the 1,797 8×8 images inside the package; ``mnist`` reads the standard IDX
files (gzipped or not) or a ``mnist.npz`` from a folder the user names;
``fashion_mnist`` finds the files Debian's ``dataset-fashion-mnist`` package
installs; :func:`table` reads a CSV or npz file of one's own.

Every loader returns a :class:`Dataset` of three :class:`Split` s, inputs as
float32 and targets one-hot (``jax.nn.one_hot``), with the
:class:`~jbp.data.preprocessing.Preprocessing` that turned the raw data into
them (divisor, standardization learned on the training part, classes), so
that a trained network can be given raw inputs later.
"""

import math
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jbp.checks import available_memory
from jbp.data.idx import read_idx
from jbp.data.preprocessing import Preprocessing, learn, statistics
from jbp.data.tabular import (is_table, label_codes, read_columns, read_csv, read_table, read_table_npz, rows_needed,
                              split_rows, stratified_split, table_path)
from jbp.files import FileFormatError, read_npz


class Split(NamedTuple):
    """One part of a data set.

    Attributes:
      X: inputs, ``(m, n_features)``, float32.
      Y: targets, ``(m, n_outputs)``, float32 (one-hot for classes).
      labels: integer class labels, ``(m,)``.
    """

    X: np.ndarray
    Y: np.ndarray
    labels: np.ndarray


class Dataset(NamedTuple):
    """A named data set in train, validation and test parts, and how raw inputs become ``X``."""

    name: str
    train: Split
    validation: Split
    test: Split
    n_classes: int
    preprocessing: Preprocessing = Preprocessing()

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: train {len(self.train.X)}, validation "
            f"{len(self.validation.X)}, test {len(self.test.X)}, "
            f"{self.train.X.shape[1]} features, {self.n_classes} classes)"
        )


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Integer labels in ``[0, n_classes)`` to one-hot float32 rows (``jax.nn.one_hot``).

    Raises:
      ValueError: for labels outside ``[0, n_classes)``, naming how many and the first.
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if bad.size:
        raise ValueError(
            f"labels must lie in [0, {n_classes}); {bad.size} do not, the first "
            f"is {labels[bad[0]]} at row {bad[0]}"
        )
    return np.asarray(jax.nn.one_hot(labels, n_classes, dtype=np.float32))


def _split(X: np.ndarray, labels: np.ndarray, n_classes: int, Y: "np.ndarray | None" = None) -> Split:
    Y = one_hot(labels, n_classes) if Y is None else Y
    return Split(np.ascontiguousarray(X, np.float32), Y, labels)


def check_size(name: str, rows: int, n_features: int, n_classes: int) -> None:
    """Refuses a data set whose arrays cannot be held: the float32 inputs and one-hot targets of
    ``rows`` rows, counted twice (the arrays here, and the copies training or evaluation places on a
    device), against the memory available; nothing is allocated first.

    Raises:
      ValueError: naming the classes, the rows, the bytes needed and the bytes available.
    """
    targets, inputs = 4 * rows * n_classes, 4 * rows * n_features
    needed, available = 2 * (targets + inputs), available_memory()
    if needed > available:
        raise ValueError(
            f"{name}: {n_classes:,} classes over {rows:,} rows of {n_features:,} features: the one-hot targets "
            f"need {targets / 1e9:.3g} GB and the inputs {inputs / 1e9:.3g} GB, {needed / 1e9:.3g} GB with their "
            f"copies on the device, and this machine has {available / 1e9:.3g} GB available"
        )


def _parts(name: str, prep: Preprocessing, parts: "list[tuple[np.ndarray, np.ndarray]]") -> Dataset:
    """A data set from raw (inputs, class indices) parts: train, validation, test; its size is
    checked (:func:`check_size`) before any target is built."""
    n = len(prep.classes)
    check_size(name, sum(len(X) for X, _ in parts), math.prod(parts[0][0].shape[1:]), n)
    splits = [_split(prep.inputs(X, f"{name} inputs"), labels, n) for X, labels in parts]
    return Dataset(name, *splits, n, prep)


def xor() -> Dataset:
    """The four points of XOR, one sigmoid output; every part is the same four.

    Example:
      >>> import jbp
      >>> jbp.data.xor().train.Y.ravel().tolist()
      [0.0, 1.0, 1.0, 0.0]
    """
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    labels = np.array([0, 1, 1, 0])
    part = _split(X, labels, 2, Y=labels[:, None].astype(np.float32))
    return Dataset("xor", part, part, part, 2, Preprocessing(classes=(0, 1)))


def digits(seed: int = 0, validation: float = 0.15, test: float = 0.15, standardize: bool = True) -> Dataset:
    """scikit-learn's bundled 8×8 digits, split by class proportions.

    1,797 images of 64 pixels in 0…16, divided by 16; the split is stratified
    and fixed by ``seed`` (by default 1,257 train, 270 validation, 270 test).
    With ``standardize``, every pixel is then centred and scaled by the mean
    and standard deviation of the training part alone (a pixel that is
    constant there is only centred), as LeCun's "Efficient BackProp" advises.

    Raises:
      ImportError: when scikit-learn is missing, naming the extra to install.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(
            "the digits data set ships with scikit-learn: pip install 'jbp[datasets]'"
        ) from None
    X, labels = load_digits(return_X_y=True)
    X_rest, X_test, l_rest, l_test = train_test_split(
        X, labels, test_size=test, stratify=labels, random_state=seed
    )
    X_train, X_val, l_train, l_val = train_test_split(
        X_rest, l_rest, test_size=validation / (1 - test), stratify=l_rest, random_state=seed
    )
    prep = learn(X_train, l_train, divisor=16.0, standardize=standardize)
    return _parts("digits", prep, [(X_train, l_train), (X_val, l_val), (X_test, l_test)])


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NPZ_MEMBERS = {"train_images": "x_train", "train_labels": "y_train", "test_images": "x_test", "test_labels": "y_test"}


def as_labels(values: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int64, refusing any that are not whole numbers.

    Integer and boolean arrays pass; a float array passes only if every value
    is a whole number (``3.0``), since truncating ``3.7`` to class 3 would
    silently train on wrong labels.

    Raises:
      ValueError: naming ``where``, how many labels are not whole numbers and
        the first of them; TypeError for values that are not numbers.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{where}: labels must be one number per sample (shape (m,)), got shape {values.shape}")
    if values.dtype == np.bool_ or np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"{where}: labels must be integers, got {values.dtype}")
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))
    if bad.size:
        raise ValueError(
            f"{where}: labels must be whole numbers (class indices); {bad.size} are not, the first is "
            f"{values[bad[0]].item()!r} at row {bad[0]}"
        )
    return values.astype(np.int64)


def _find(folder: pathlib.Path, stem: str) -> "pathlib.Path | None":
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).exists():
            return folder / name
    return None


def mnist(folder: "str | pathlib.Path", validation: "int | None" = None, limit: "int | str | None" = None,
          standardize: bool = False, name: str = "mnist") -> Dataset:
    """MNIST (or any set in its format) from a folder holding the four IDX files or ``mnist.npz``.

    The IDX files may be gzipped; ``mnist.npz`` holds ``x_train``,
    ``y_train``, ``x_test`` and ``y_test`` (other members are not read).
    Every file is read as untrusted bytes within ``limit``
    (:mod:`jbp.files`). Images are flattened, and divided by 255 when they
    are bytes; with ``standardize`` every pixel is then centred and scaled by
    the training part's statistics. Labels must be whole numbers below 10.
    The last ``validation`` training images are the validation part, by
    default a sixth of them (Nielsen's 50,000 / 10,000).

    Raises:
      FileNotFoundError: when the folder or the files are not there, naming
        what was looked for (nothing is downloaded).
      ValueError: for files that are malformed, too large, disagree in
        length or hold labels that are not classes.
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"no MNIST folder at {folder}")
    if not folder.is_dir():
        raise FileFormatError(f"{folder} is a file; expected a folder holding the MNIST files")
    found = {key: _find(folder, stem) for key, stem in IDX_FILES.items()}
    if all(found.values()):
        arrays = {key: read_idx(path, limit) for key, path in found.items()}
        names = {key: str(path) for key, path in found.items()}
    elif (folder / "mnist.npz").exists():
        path = folder / "mnist.npz"
        stored = read_npz(path, NPZ_MEMBERS.values(), limit=limit)
        missing = [name for name in NPZ_MEMBERS.values() if name not in stored]
        if missing:
            raise FileFormatError(f"{path} lacks {', '.join(missing)}")
        arrays = {key: stored[name] for key, name in NPZ_MEMBERS.items()}
        names = {key: f"{path}: {name}" for key, name in NPZ_MEMBERS.items()}
    else:
        wanted = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
        raise FileNotFoundError(f"{folder} holds neither the MNIST IDX files ({wanted}) nor mnist.npz")

    parts = {}
    for part in ("train", "test"):
        images = arrays[f"{part}_images"]
        labels = as_labels(arrays[f"{part}_labels"], names[f"{part}_labels"])
        if images.ndim < 2 or images.dtype.kind not in "biuf":
            raise FileFormatError(f"{names[f'{part}_images']}: images must be numbers with a sample axis and "
                                  f"pixels, got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise FileFormatError(f"{name} {part}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise FileFormatError(f"{names[f'{part}_images']}: no images")
        parts[part] = (images.reshape(len(images), -1), labels)
    (X, labels), (X_test, l_test) = parts["train"], parts["test"]
    if X.shape[1] != X_test.shape[1]:
        raise FileFormatError(f"{name}: training images have {X.shape[1]} pixels, test images {X_test.shape[1]}")
    if X.dtype != X_test.dtype:
        raise FileFormatError(f"{name}: training images are {X.dtype}, test images {X_test.dtype}")
    validation = len(X) // 6 if validation is None else validation
    if not 0 <= validation < len(X):
        raise ValueError(f"validation must be in [0, {len(X)}), got {validation}")
    cut = len(X) - validation
    divisor = 255.0 if X.dtype == np.uint8 else 1.0
    mean, std = statistics(X[:cut], divisor) if standardize else (None, None)
    prep = Preprocessing(divisor, mean, std, tuple(range(10)))  # the ten classes, whichever the files hold
    return _parts(name, prep, [(X[:cut], labels[:cut]), (X[cut:], labels[cut:]), (X_test, l_test)])


FASHION_MNIST_FOLDERS = ("/usr/share/datasets/fashion-mnist",)
"""Where Debian's ``dataset-fashion-mnist`` package installs the four IDX files."""


def fashion_mnist(folder: "str | pathlib.Path | None" = None, validation: "int | None" = None,
                  limit: "int | str | None" = None, standardize: bool = False) -> Dataset:
    """Fashion-MNIST: 60,000 + 10,000 grey 28×28 images of ten kinds of clothing, in MNIST's format.

    Read from ``folder``, or from where Debian's ``dataset-fashion-mnist``
    package installs it (``apt-get install dataset-fashion-mnist``); the
    split and the scaling are :func:`mnist`'s (50,000 train, 10,000
    validation, 10,000 test).

    Raises:
      FileNotFoundError: when no folder is given and the package is not installed, saying how to install it.
    """
    if folder is None:
        found = [f for f in FASHION_MNIST_FOLDERS if pathlib.Path(f).is_dir()]
        if not found:
            raise FileNotFoundError(
                "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist (Debian, Ubuntu), "
                "or give the folder of its four IDX files as --data fashion-mnist:FOLDER"
            )
        folder = found[0]
    return mnist(folder, validation=validation, limit=limit, standardize=standardize, name="fashion-mnist")


def table(spec: str, *, target: "str | int | None" = None, header: "bool | None" = None, standardize: bool = False,
          validation: float = 0.15, test: float = 0.15, seed: int = 0, limit: "int | str | None" = None) -> Dataset:
    """One's own data: ``csv:FILE`` or ``npz:FILE`` (see :mod:`jbp.data.tabular`).

    Rows are split by class proportions, fixed by ``seed``: ``test`` and
    ``validation`` fractions (an npz with ``x_test``/``y_test`` keeps its
    own test part, and its training part gives the validation). Labels may
    be whole numbers or strings; classes are the distinct labels of the
    training part, sorted. With ``standardize``, features are centred and
    scaled by the training part's statistics. A CSV file's column names are
    kept in the preprocessing (``features``, ``target``).

    Raises:
      ValueError: for one class only, labels in the validation or test part
        that the training part lacks, fractions outside ``[0, 1)``, classes
        too small to give the validation or test part a row (naming the
        largest class and its rows), data that cannot fit in memory
        (:func:`check_size`), and everything the readers refuse.
    """
    path = table_path(spec)
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(f"validation and test fractions must be in [0, 1) with a sum below 1, got {validation} and {test}")
    names = {}
    if spec.startswith("csv:"):
        X, codes, values, features, label = read_table(path, target=target, header=header, limit=limit)
        given, names = None, {"features": features, "target": label}
    else:
        arrays = read_table_npz(path, limit=limit)
        if "X" in arrays:
            X, labels, given = arrays["X"], arrays["y"], None
        else:
            X, labels, given = arrays["x_train"], arrays["y_train"], (arrays["x_test"], arrays["y_test"])
        codes, values = label_codes(labels)
        del arrays, labels
    X = np.asarray(X).reshape(len(X), -1)
    if given is None:
        fractions = {"test": test, "validation": validation}
        test_rows, val_rows, train_rows = split_rows(codes, values, (test, validation), seed)
        rows = {"train": train_rows, "validation": val_rows, "test": test_rows}
    else:
        fractions = {"validation": validation}
        val_rows, train_rows = split_rows(codes, values, (validation,), seed)
        rows = {"train": train_rows, "validation": val_rows}
    for part, fraction in fractions.items():
        if fraction > 0 and len(rows[part]) == 0:
            counts = np.bincount(codes, minlength=len(values))
            largest = int(np.argmax(counts))
            raise ValueError(
                f"{path}: the {part} part ({fraction:.0%} of each class) would be empty: the largest class, "
                f"{values[largest]!r}, has {counts[largest]} row(s), and a class needs {rows_needed(fraction)} "
                f"for {fraction:.0%} of it to round to a row"
            )
    pieces = {part: (X[r], codes[r], values) for part, r in rows.items()}
    del X
    if given is not None:
        test_codes, test_values = label_codes(given[1])
        pieces["test"] = (np.asarray(given[0]).reshape(len(given[0]), -1), test_codes, test_values)
    if len(pieces["train"][0]) == 0:
        raise ValueError(f"{path}: no rows are left for training")
    train_codes = pieces["train"][1]
    present = [values[k] for k in np.unique(train_codes)]
    prep = learn(pieces["train"][0], present, standardize=standardize, where=str(path))._replace(**names)
    parts = [(x, prep.encode_codes(c, v, f"{path} ({part} part)")) for part, (x, c, v) in pieces.items()]
    return _parts(spec, prep, parts)


DATASETS = ("digits", "xor", "mnist:FOLDER", "fashion-mnist[:FOLDER]", "csv:FILE", "npz:FILE")


def load(spec: str, limit: "int | str | None" = None, *, standardize: "bool | None" = None,
         target: "str | int | None" = None, header: "bool | None" = None) -> Dataset:
    """A data set by name; its splits are fixed.

    ``digits``, ``xor``, ``mnist:FOLDER``, ``fashion-mnist`` (Debian's
    package) or ``fashion-mnist:FOLDER``, ``csv:FILE``, ``npz:FILE``.
    ``limit`` bounds every file read (:func:`jbp.files.max_bytes`);
    ``standardize`` overrides the set's default (on for digits, off for the
    others); ``target`` and ``header`` are for CSV files.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if spec == "digits":
        return digits(standardize=True if standardize is None else standardize)
    if spec == "xor":
        return xor()
    standardize = bool(standardize)
    if spec.startswith("mnist:") and len(spec) > len("mnist:"):
        return mnist(spec[len("mnist:") :], limit=limit, standardize=standardize)
    if spec == "fashion-mnist":
        return fashion_mnist(limit=limit, standardize=standardize)
    if spec.startswith("fashion-mnist:") and len(spec) > len("fashion-mnist:"):
        return fashion_mnist(spec[len("fashion-mnist:") :], limit=limit, standardize=standardize)
    if is_table(spec) and len(spec) > 4:
        return table(spec, target=target, header=header, standardize=standardize, limit=limit)
    raise ValueError(f"unknown data set {spec!r}; expected one of {', '.join(DATASETS)}")


def read_inputs(path: "str | pathlib.Path", n_features: int, *, target: "str | int | None" = None,
                header: "bool | None" = None, limit: "int | str | None" = None,
                features: "Sequence[str] | None" = None) -> np.ndarray:
    """Raw inputs to predict from: an ``.npz`` (array ``X``, else ``x_test``, else its only array), a
    CSV file, or an IDX file (gzipped or not). Returned as read, ``(m, n_features)``; the run's
    preprocessing turns them into what its network saw.

    A CSV file is matched to the run's feature names (``features``) by name when both have names:
    its columns are put in the run's order, others (the label) passed over, a missing one refused.
    Otherwise (no header, a run without names; npz and IDX always) by position: ``n_features``
    columns, or for a CSV one more, the label (``target``, the last by default), dropped.

    Raises:
      FileNotFoundError, FileFormatError, ValueError: for a file that is none of these, a column
        missing, or rows that do not have ``n_features`` features.
    """
    from jbp.files import npz_names, regular_file

    path = regular_file(path, "input file")
    name = path.name.lower()
    if name.endswith(".npz"):
        members = npz_names(path, limit)
        chosen = next((m for m in ("X", "x_test") if m in members), members[0] if len(members) == 1 else None)
        if chosen is None:
            raise FileFormatError(f"{path}: which array to predict from? it holds {', '.join(members)}; "
                                  "name it X")
        X = read_npz(path, [chosen], limit=limit)[chosen]
    elif name.endswith(".csv"):
        X = read_columns(path, n_features, features=features, target=target, header=header, limit=limit).X
    else:
        X = read_idx(path, limit)
    if X.ndim < 2:
        raise FileFormatError(f"{path}: inputs need a sample axis and features, got shape {X.shape}")
    X = X.reshape(len(X), -1)
    if X.shape[1] != n_features:
        raise FileFormatError(f"{path}: rows of {X.shape[1]} features; the run's network takes {n_features}")
    if X.dtype.kind not in "biuf":
        raise FileFormatError(f"{path}: inputs must be numbers, got {X.dtype}")
    return X


def evaluation_data(spec: str, preprocessing: Preprocessing, *, target=None, header=None,
                    limit: "int | str | None" = None, n_features: "int | None" = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and class indices to evaluate a run on, from a data set other than its own.

    A CSV or npz file is read whole (an npz with a test part gives that part); a CSV file is matched
    to the run's columns by name (:func:`read_inputs`' rule; the labels from the run's label column);
    an MNIST-format set gives its test part; a named set (``digits``, ``xor``) its test part, its
    labels re-encoded as the run's classes. Raw inputs and labels go through the run's
    ``preprocessing``: labels it never saw are refused; inputs of another width than ``n_features``
    (the network's, or the preprocessing's) are refused before anything is computed.
    """
    n_features = n_features if n_features is not None else (
        len(preprocessing.mean) if preprocessing.mean is not None else
        len(preprocessing.features) if preprocessing.features is not None else None)

    def fits(X, where):
        width = math.prod(np.shape(X)[1:])
        if n_features is not None and width != n_features:
            raise FileFormatError(f"{where}: rows of {width} features; the run's network takes {n_features}")
        return X

    if is_table(spec):
        path = table_path(spec)
        if spec.startswith("csv:"):
            if n_features is None:
                read = read_table(path, target=target, header=header, limit=limit)
            else:
                read = read_columns(path, n_features, features=preprocessing.features, label=preprocessing.target,
                                    target=target, header=header, labels=True, limit=limit)
            X, labels = read.X, preprocessing.encode_codes(read.codes, read.values, str(path))
        else:
            arrays = read_table_npz(path, limit=limit)
            X, y = (arrays["x_test"], arrays["y_test"]) if "x_test" in arrays else (arrays["X"], arrays["y"])
            labels = preprocessing.encode_codes(*label_codes(y), str(path))
        return preprocessing.inputs(fits(X, str(path)), str(path)), labels
    if spec.startswith(("mnist:", "fashion-mnist")):
        folder = None if spec == "fashion-mnist" else spec.split(":", 1)[1]
        if folder is None:
            folder = next((f for f in FASHION_MNIST_FOLDERS if pathlib.Path(f).is_dir()), None)
            if folder is None:
                raise FileNotFoundError("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
        folder = pathlib.Path(folder).expanduser()
        images = _find(folder, IDX_FILES["test_images"]) if folder.is_dir() else None
        labels = _find(folder, IDX_FILES["test_labels"]) if folder.is_dir() else None
        if images is None or labels is None:
            raise FileNotFoundError(f"{folder} holds no t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte")
        X, y = read_idx(images, limit), as_labels(read_idx(labels, limit), str(labels))
        return preprocessing.inputs(fits(X, str(images)), str(images)), preprocessing.encode(y.tolist(), str(labels))
    dataset = load(spec, limit)
    X = fits(dataset.test.X, f"{spec} (test part)")
    return X, preprocessing.encode(dataset.preprocessing.decode(dataset.test.labels), f"{spec} (test part)")
