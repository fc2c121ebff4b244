"""Data sets: XOR, scikit-learn's bundled digits, and MNIST from local files.

Nothing is downloaded, and every file is read as untrusted bytes within a
size limit (:mod:`jbp.files`, :mod:`jbp.data.idx`). ``digits`` needs scikit-learn (``pip install
'jbp[datasets]'``), which ships the 1,797 8×8 images inside the package;
``mnist`` reads the standard IDX files (gzipped or not) or a ``mnist.npz``
from a folder the user names.

Every loader returns a :class:`Dataset` of three :class:`Split` s with inputs
scaled to ``[0, 1]`` as float32 and targets one-hot (``jax.nn.one_hot``).
"""

import pathlib
from typing import NamedTuple

import jax
import numpy as np

from jbp.data.idx import read_idx
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
    """A named data set in train, validation and test parts."""

    name: str
    train: Split
    validation: Split
    test: Split
    n_classes: int

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
    return Dataset("xor", part, part, part, 2)


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
    X = X / 16.0
    X_rest, X_test, l_rest, l_test = train_test_split(
        X, labels, test_size=test, stratify=labels, random_state=seed
    )
    X_train, X_val, l_train, l_val = train_test_split(
        X_rest, l_rest, test_size=validation / (1 - test), stratify=l_rest, random_state=seed
    )
    if standardize:
        mean, std = X_train.mean(axis=0), X_train.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        X_train, X_val, X_test = ((part - mean) / std for part in (X_train, X_val, X_test))
    return Dataset(
        "digits", _split(X_train, l_train, 10), _split(X_val, l_val, 10), _split(X_test, l_test, 10), 10
    )


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


def mnist(folder: "str | pathlib.Path", validation: "int | None" = None, limit: "int | str | None" = None) -> Dataset:
    """MNIST (or any set in its format) from a folder holding the four IDX files or ``mnist.npz``.

    The IDX files may be gzipped; ``mnist.npz`` holds ``x_train``,
    ``y_train``, ``x_test`` and ``y_test`` (other members are not read).
    Every file is read as untrusted bytes within ``limit``
    (:mod:`jbp.files`). Images are flattened, and scaled to ``[0, 1]`` when
    they are bytes; labels must be whole numbers below 10. The last
    ``validation`` training images are the validation part, by default a
    sixth of them (Nielsen's 50,000 / 10,000).

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
        if images.ndim < 2:
            raise FileFormatError(f"{names[f'{part}_images']}: images must have a sample axis and pixels, got shape {images.shape}")
        if len(images) != len(labels):
            raise FileFormatError(f"MNIST {part}: {len(images)} images but {len(labels)} labels")
        if len(images) == 0:
            raise FileFormatError(f"{names[f'{part}_images']}: no images")
        X = images.reshape(len(images), -1).astype(np.float32)
        if images.dtype == np.uint8:
            X /= 255.0
        elif not np.all(np.isfinite(X)):
            raise FileFormatError(f"{names[f'{part}_images']}: holds NaN or infinity")
        parts[part] = (X, labels)
    (X, labels), (X_test, l_test) = parts["train"], parts["test"]
    if X.shape[1] != X_test.shape[1]:
        raise FileFormatError(f"MNIST: training images have {X.shape[1]} pixels, test images {X_test.shape[1]}")
    validation = len(X) // 6 if validation is None else validation
    if not 0 <= validation < len(X):
        raise ValueError(f"validation must be in [0, {len(X)}), got {validation}")
    cut = len(X) - validation
    return Dataset(
        "mnist",
        _split(X[:cut], labels[:cut], 10),
        _split(X[cut:], labels[cut:], 10),
        _split(X_test, l_test, 10),
        10,
    )


DATASETS = ("digits", "xor", "mnist:FOLDER")


def load(spec: str, limit: "int | str | None" = None) -> Dataset:
    """A data set by name: ``digits``, ``xor`` or ``mnist:FOLDER``; splits are fixed.

    ``limit`` bounds every file read (:func:`jbp.files.max_bytes`).

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if spec == "digits":
        return digits()
    if spec == "xor":
        return xor()
    if spec.startswith("mnist:") and len(spec) > len("mnist:"):
        return mnist(spec[len("mnist:") :], limit=limit)
    raise ValueError(f"unknown data set {spec!r}; expected one of {', '.join(DATASETS)}")
