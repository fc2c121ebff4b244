"""Data loaders: XOR, the bundled digits, MNIST from IDX files and mnist.npz
written by the tests themselves."""

import gzip
import struct
import sys

import numpy as np
import pytest

import jbp


def write_idx(path, array, compress=False):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def tiny_mnist(folder, compress, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for k, n in (("train", n_train), ("t10k", n_test))}
    labels = {k: rng.integers(0, 10, len(v), dtype=np.uint8) for k, v in images.items()}
    suffix = ".gz" if compress else ""
    for part in ("train", "t10k"):
        write_idx(folder / f"{part}-images-idx3-ubyte{suffix}", images[part], compress)
        write_idx(folder / f"{part}-labels-idx1-ubyte{suffix}", labels[part], compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    images, labels = tiny_mnist(tmp_path, compress)
    data = jbp.data.mnist(tmp_path, validation=4)
    assert data.train.X.shape == (8, 784) and data.validation.X.shape == (4, 784) and data.test.X.shape == (5, 784)
    np.testing.assert_allclose(data.train.X[0], images["train"][0].ravel() / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.validation.labels, labels["train"][8:])
    np.testing.assert_array_equal(data.test.Y.argmax(1), labels["t10k"])
    assert data.train.X.dtype == np.float32 and data.train.X.max() <= 1.0


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    arrays = dict(x_train=rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), y_train=np.arange(6) % 10,
                  x_test=rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), y_test=np.array([9, 0, 1]))
    np.savez(tmp_path / "mnist.npz", **arrays)
    data = jbp.data.load(f"mnist:{tmp_path}")
    assert len(data.train.X) + len(data.validation.X) == 6 and data.test.X.shape == (3, 784)
    np.testing.assert_array_equal(data.test.labels, [9, 0, 1])


def test_mnist_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        jbp.data.mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="no MNIST folder"):
        jbp.data.mnist(tmp_path / "absent")


def test_a_truncated_idx_file_is_refused(tmp_path):
    tiny_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="bytes, but its header"):
        jbp.data.mnist(tmp_path)
    path.write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="not an IDX file"):
        jbp.data.read_idx(path)


def test_digits_split_is_fixed_stratified_and_standardized():
    a, b = jbp.data.digits(), jbp.data.digits()
    assert (len(a.train.X), len(a.validation.X), len(a.test.X)) == (1257, 270, 270)
    np.testing.assert_array_equal(a.test.X, b.test.X)
    assert np.all(np.bincount(a.test.labels, minlength=10) >= 26)  # every class, in proportion
    np.testing.assert_allclose(a.train.X.mean(0), 0, atol=1e-5)
    raw = jbp.data.digits(standardize=False)
    assert raw.train.X.min() == 0 and raw.train.X.max() == 1
    assert a.train.Y.shape == (1257, 10) and np.all(a.train.Y.sum(1) == 1)


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"jbp\[datasets\]"):
        jbp.data.digits()


def test_xor():
    data = jbp.data.xor()
    assert data.train.X.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert data.train.Y.ravel().tolist() == [0, 1, 1, 0]


def test_one_hot_uses_jax_and_refuses_labels_out_of_range():
    np.testing.assert_array_equal(jbp.data.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); 2 do not, the first is 3 at row 1"):
        jbp.data.one_hot(np.array([0, 3, -1]), 3)


def test_unknown_data_set_lists_the_known_ones():
    with pytest.raises(ValueError, match="expected one of digits, xor, mnist:FOLDER"):
        jbp.data.load("cifar")
