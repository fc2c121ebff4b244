"""Data sets: XOR, scikit-learn's bundled digits, and MNIST from local files.

Nothing is downloaded. ``digits`` needs scikit-learn (``pip install
'jbp[datasets]'``), which ships the 1,797 8×8 images inside the package;
``mnist`` reads the standard IDX files (gzipped or not) or a ``mnist.npz``
from a folder the user names.

Every loader returns a :class:`Dataset` of three :class:`Split` s with inputs
scaled to ``[0, 1]`` as float32 and targets one-hot (``jax.nn.one_hot``).
"""

import gzip
import pathlib
from typing import NamedTuple

import jax
import numpy as np


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
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: "str | pathlib.Path") -> np.ndarray:
    """Reads one IDX file (the MNIST format), gzipped or not.

    The header is two zero bytes, a type code, the number of dimensions, then
    each dimension as a big-endian 32-bit integer; the data follow.

    Raises:
      ValueError: for a file that is not IDX or whose size does not match its header.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, but its header {shape} needs {expected}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _find(folder: pathlib.Path, stem: str) -> "pathlib.Path | None":
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def mnist(folder: "str | pathlib.Path", validation: "int | None" = None) -> Dataset:
    """MNIST from a folder holding the four IDX files or ``mnist.npz``.

    The IDX files may be gzipped; ``mnist.npz`` holds ``x_train``,
    ``y_train``, ``x_test`` and ``y_test`` and is read with
    ``allow_pickle=False``. Images are flattened to 784 features scaled to
    ``[0, 1]``; the last ``validation`` training images are the validation
    part, by default a sixth of them (Nielsen's 50,000 / 10,000).

    Raises:
      FileNotFoundError: when the folder or the files are not there, naming
        what was looked for (nothing is downloaded).
      ValueError: for files that are malformed or disagree in length.
    """
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no MNIST folder at {folder}")
    found = {key: _find(folder, stem) for key, stem in IDX_FILES.items()}
    if all(found.values()):
        arrays = {key: read_idx(path) for key, path in found.items()}
    elif (folder / "mnist.npz").is_file():
        with np.load(folder / "mnist.npz", allow_pickle=False) as npz:
            keys = {"train_images": "x_train", "train_labels": "y_train", "test_images": "x_test", "test_labels": "y_test"}
            missing = [k for k in keys.values() if k not in npz.files]
            if missing:
                raise ValueError(f"{folder / 'mnist.npz'} lacks {', '.join(missing)}")
            arrays = {key: npz[name] for key, name in keys.items()}
    else:
        wanted = ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())
        raise FileNotFoundError(f"{folder} holds neither the MNIST IDX files ({wanted}) nor mnist.npz")

    parts = {}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"].astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"MNIST {part}: {len(images)} images but {len(labels)} labels")
        parts[part] = (images.reshape(len(images), -1).astype(np.float32) / 255.0, labels)
    (X, labels), (X_test, l_test) = parts["train"], parts["test"]
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


def load(spec: str) -> Dataset:
    """A data set by name: ``digits``, ``xor`` or ``mnist:FOLDER``; splits are fixed.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if spec == "digits":
        return digits()
    if spec == "xor":
        return xor()
    if spec.startswith("mnist:") and len(spec) > len("mnist:"):
        return mnist(spec[len("mnist:") :])
    raise ValueError(f"unknown data set {spec!r}; expected one of {', '.join(DATASETS)}")
