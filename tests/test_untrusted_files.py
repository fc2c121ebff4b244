"""Files read from disk are untrusted: bombs, lies about sizes, tampering, fuzzing.

Every bomb is built here, small, on the fly. The memory tests run the loader
in a subprocess and read its peak resident memory (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the call), so a loader that inflated
or allocated what a file declares would show it in gigabytes.
"""

import gzip
import hashlib
import io
import json
import math
import struct
import subprocess
import sys
import zipfile
import zlib

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jbp
from jbp.checkpoint import HEADER, MAGIC, CheckpointError
from jbp.data.idx import read_idx
from jbp.files import FileFormatError, read_npz

GB = 1024**3
MEMORY_BOUND = 64 * 1024**2  # what a refused bomb may cost, at most, above the process's size before it

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# --- building files, independently of the code under test


def idx_bytes(array: np.ndarray, code: int = 0x08, shape=None) -> bytes:
    shape = array.shape if shape is None else shape
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + array.tobytes()


def gzip_of_zeros(prefix: bytes, total: int, chunk: int = 16 * 1024**2) -> bytes:
    """A gzip file that inflates to ``prefix`` then ``total`` zero bytes, in a few MB at most:
    one member compressed once, repeated (a gzip file may hold many members)."""
    one = gzip.compress(bytes(chunk), compresslevel=9)
    members, rest = total // chunk, total % chunk
    return gzip.compress(prefix) + one * members + (gzip.compress(bytes(rest)) if rest else b"")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def zip_bytes(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def declare_size(archive: bytes, name: str, size: int) -> bytes:
    """The same zip, with member ``name``'s uncompressed size rewritten in both of its headers."""
    data, name_bytes = bytearray(archive), name.encode()
    local = data.find(b"PK\x03\x04")
    while local != -1:  # local file header: size at 22, name at 30
        if data[local + 30 : local + 30 + len(name_bytes)] == name_bytes:
            struct.pack_into("<I", data, local + 22, size)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central != -1:  # central directory header: size at 24, name at 46
        if data[central + 46 : central + 46 + len(name_bytes)] == name_bytes:
            struct.pack_into("<I", data, central + 24, size)
        central = data.find(b"PK\x01\x02", central + 4)
    return bytes(data)


def mnist_arrays(n_train=6, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8), y_train=rng.integers(0, 10, n_train),
        x_test=rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8), y_test=rng.integers(0, 10, n_test),
    )


def write_mnist_idx(folder, arrays, gz=False):
    names = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
    for key, stem in names.items():
        raw = idx_bytes(arrays[key].astype(np.uint8))
        (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(raw) if gz else raw)


def rehash(raw: bytes) -> bytes:
    """A checkpoint with its payload kept and its header's length and digest made right again."""
    payload = raw[HEADER.size:]
    return HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


NET = jbp.mlp([3, 4, 2], hidden="tanh", output="softmax")


def small_checkpoint(path):
    params = jbp.init(NET, jax.random.key(0))
    opt = optax.adam(0.01)
    state = opt.init(params)
    jbp.checkpoint.save(path, params=params, opt_state=state, epoch=2, key=jax.random.key(3),
                        config={"sizes": [3, 4, 2]}, history=[{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}])
    return params, opt


def load_small(path, **kwargs):
    params = jbp.init(NET, jax.random.key(0))
    return jbp.checkpoint.load(path, params_like=params, opt_state_like=optax.adam(0.01).init(params), **kwargs)


# --- memory: each bomb in a subprocess, refused, and what it cost

PROBE = r"""
import json, sys, traceback
import numpy as np
import jbp, jbp.data.idx, jbp.files

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

results = []
for call in json.loads(sys.argv[1]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current size
    before = rss("VmRSS")
    try:
        value = eval(call)
        outcome, message = "returned", repr(getattr(value, "shape", value))[:200]
    except Exception as err:
        outcome, message = type(err).__name__, str(err)
    results.append({"call": call, "outcome": outcome, "message": message, "peak_above": rss("VmHWM") - before})
print(json.dumps(results))
"""


def probe(calls):
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(calls)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bombs_are_refused_within_a_bounded_memory(tmp_path):
    # a gzipped IDX file of a few MB whose header declares 10 images but which inflates to 3 GB
    header_small = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    (tmp_path / "inflates.gz").write_bytes(gzip_of_zeros(header_small, 3 * GB))
    # a gzipped IDX file whose header declares 4 GB (above the 2 GiB limit)
    (tmp_path / "declares.gz").write_bytes(gzip_of_zeros(idx_bytes(np.zeros(0, np.uint8), shape=(4, 1024, 1024, 1024)), 1024))
    # a plain IDX file of 116 bytes whose header declares 60,000 images
    (tmp_path / "short-header").write_bytes(idx_bytes(np.zeros(100, np.uint8), shape=(60000, 28, 28)))
    # a gzip of 3 MB whose header declares 1.5 GB: more than such a small file can inflate to
    (tmp_path / "ratio.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(0, np.uint8), shape=(1536, 1024, 1024))))
    # mnist.npz whose x_train declares 3 GB in the zip's headers
    arrays = mnist_arrays()
    members = {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()}
    huge = declare_size(zip_bytes(members), "x_train.npy", 3 * GB)
    (tmp_path / "declared").mkdir()
    (tmp_path / "declared" / "mnist.npz").write_bytes(huge)
    # mnist.npz with an extra member of 512 MB of zeros (0.5 MB deflated): left unread, the data load
    extra = dict(members)
    extra["evil.npy"] = npy_bytes(np.zeros(512 * 1024**2, np.uint8))
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "mnist.npz").write_bytes(zip_bytes(extra, zipfile.ZIP_DEFLATED))
    # a checkpoint, digest recomputed, with an extra member of 512 MB of zeros
    small_checkpoint(tmp_path / "c.ckpt")
    raw = (tmp_path / "c.ckpt").read_bytes()
    buffer = io.BytesIO(raw[HEADER.size:])
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("evil.npy", npy_bytes(np.zeros(512 * 1024**2, np.uint8)))
    (tmp_path / "evil.ckpt").write_bytes(rehash(raw[: HEADER.size] + buffer.getvalue()))
    assert max(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file()) < 20 * 1024**2  # small bombs

    calls = [
        f"jbp.data.idx.read_idx({str(tmp_path / 'inflates.gz')!r})",
        f"jbp.data.idx.read_idx({str(tmp_path / 'declares.gz')!r})",
        f"jbp.data.idx.read_idx({str(tmp_path / 'short-header')!r})",
        f"jbp.data.idx.read_idx({str(tmp_path / 'ratio.gz')!r})",
        f"jbp.data.mnist({str(tmp_path / 'declared')!r})",
        f"jbp.data.mnist({str(tmp_path / 'extra')!r}, validation=2)",
        f"jbp.checkpoint.load({str(tmp_path / 'evil.ckpt')!r}, params_like=jbp.init(jbp.mlp([3, 4, 2], 'tanh', "
        f"'softmax'), __import__('jax').random.key(0)), opt_state_like=__import__('optax').adam(0.01).init("
        f"jbp.init(jbp.mlp([3, 4, 2], 'tanh', 'softmax'), __import__('jax').random.key(0))))",
    ]
    results = probe(calls + ["np.ones(50_000_000).sum()"])  # the last: 400 MB, to show that the probe sees memory
    assert results.pop()["peak_above"] > 350 * 1024**2
    expected = [
        ("FileFormatError", "holds more bytes than its header declares (7840)"),
        ("FileFormatError", "above the limit of 2 GiB"),
        ("FileFormatError", "116 bytes, but its header (shape (60000, 28, 28), uint8) needs 47040016"),
        ("FileFormatError", "cannot inflate to the 1610612736 bytes its header declares"),
        ("FileFormatError", "member 'x_train' is 3 GiB (3221225472 bytes), above the limit of 2 GiB"),
        ("returned", "Dataset('mnist'"),
        ("CheckpointError", "holds members jbp did not write: 'evil'"),
    ]
    for result, (outcome, message) in zip(results, expected):
        assert result["outcome"] == outcome and message in result["message"], result
        assert result["peak_above"] < MEMORY_BOUND, result


# --- refusals with names, and the limit a user can raise


def test_the_limit_can_be_raised_and_lowered(tmp_path, monkeypatch):
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.arange(64, dtype=np.uint8).reshape(4, 4, 4)))
    with pytest.raises(FileFormatError, match=r"above the limit of 32 bytes; raise it with --max-bytes or \$JBP_MAX_BYTES"):
        read_idx(path, limit=32)
    monkeypatch.setenv("JBP_MAX_BYTES", "32")
    with pytest.raises(FileFormatError, match="above the limit of 32 bytes"):
        read_idx(path)
    monkeypatch.setenv("JBP_MAX_BYTES", "1K")
    np.testing.assert_array_equal(read_idx(path), np.arange(64).reshape(4, 4, 4))
    monkeypatch.setenv("JBP_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match=r"\$JBP_MAX_BYTES: a size must be a number of bytes"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_and_truncated_files_are_refused_by_name(tmp_path, gz):
    arrays = mnist_arrays()
    write_mnist_idx(tmp_path, arrays, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(FileFormatError, match=name):
        jbp.data.mnist(tmp_path)
    if gz:
        corrupt = bytearray(good)
        corrupt[len(corrupt) // 2] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        with pytest.raises(FileFormatError, match=f"{name}.*(gzip|truncated|more bytes)"):
            jbp.data.mnist(tmp_path)
    path.unlink()
    path.mkdir()  # a folder where a file is expected
    with pytest.raises(ValueError):
        jbp.data.mnist(tmp_path)


def test_a_corrupt_zip_is_refused_by_name(tmp_path):
    np.savez(tmp_path / "mnist.npz", **mnist_arrays())
    raw = bytearray((tmp_path / "mnist.npz").read_bytes())
    (tmp_path / "mnist.npz").write_bytes(bytes(raw[:-30]))  # the central directory cut off
    with pytest.raises(FileFormatError, match=r"mnist.npz is not a readable .npz \(zip\) archive"):
        jbp.data.mnist(tmp_path)
    raw[200] ^= 0xFF  # inside the first member's data: its CRC no longer matches
    (tmp_path / "mnist.npz").write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="mnist.npz: member 'x_train' is (corrupt|not a readable .npy array): Bad CRC-32"):
        jbp.data.mnist(tmp_path)


@pytest.mark.parametrize("source", ["idx", "npz"])
def test_labels_that_are_not_whole_numbers_are_refused(tmp_path, source):
    arrays = mnist_arrays()
    labels = arrays["y_train"].astype(np.float64)
    labels[3] = 3.7
    if source == "idx":
        write_mnist_idx(tmp_path, arrays)
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels.astype(">f8"), code=0x0E))
    else:
        np.savez(tmp_path / "mnist.npz", **{**arrays, "y_train": labels})
    with pytest.raises(ValueError, match=r"labels must be whole numbers \(class indices\); 1 are not, the first is 3.7 at row 3"):
        jbp.data.mnist(tmp_path)
    labels[3] = 3.0  # whole numbers stored as floats are classes
    if source == "idx":
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels.astype(">f8"), code=0x0E))
    else:
        np.savez(tmp_path / "mnist.npz", **{**arrays, "y_train": labels})
    data = jbp.data.mnist(tmp_path, validation=0)
    np.testing.assert_array_equal(data.train.labels, labels.astype(int))


def test_load_params_refuses_what_it_does_not_expect(tmp_path):
    params = jbp.init(NET, jax.random.key(0))
    path = tmp_path / "p.npz"
    jbp.checkpoint.save_params(path, params)
    arrays = {f"{kind}{l}": np.asarray(getattr(layer, kind)) for l, layer in enumerate(params, 1) for kind in "Wb"}
    np.savez(path, **arrays, extra=np.zeros(3))
    with pytest.raises(FileFormatError, match="must hold exactly W1, b1, …, WL, bL; it also holds extra"):
        jbp.checkpoint.load_params(path)
    np.savez(path, **{**arrays, "W2": np.zeros((2, 5))})
    with pytest.raises(FileFormatError, match="layer 2 has W"):
        jbp.checkpoint.load_params(path)
    np.savez(path, **{k: v for k, v in arrays.items() if k != "b2"})
    with pytest.raises(FileFormatError, match="must hold exactly"):
        jbp.checkpoint.load_params(path)
    np.savez(path, **{**arrays, "W1": np.full((4, 3), np.nan)})
    with pytest.raises(FileFormatError, match="layer 1 holds NaN"):
        jbp.checkpoint.load_params(path)


def _edit_meta(path, change):
    """Rewrites the checkpoint's description and recomputes the digest: a deliberate tampering."""
    raw = path.read_bytes()
    with np.load(io.BytesIO(raw[HEADER.size:]), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(arrays["meta"].tobytes())
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    payload = io.BytesIO()
    np.savez(payload, **arrays)
    path.write_bytes(rehash(raw[: HEADER.size] + payload.getvalue()))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.__setitem__("history", {"epoch": 1}), "the history must be a list of records, got dict"),
        (lambda m: m.__setitem__("history", [{"epoch": 1, "loss": "low"}, {"epoch": 2}]), "history record 0, 'loss': expected a finite number"),
        (lambda m: m.__setitem__("history", [{"epoch": 2}, {"epoch": 1}]), "history record 1 has epoch 1"),
        (lambda m: m.__setitem__("epoch", -1), "epoch must be a whole number ≥ 0, got -1"),
        (lambda m: m.__setitem__("epoch", "2"), "epoch must be a whole number ≥ 0, got '2'"),
        (lambda m: m.__setitem__("key_impl", "os.system"), "key_impl 'os.system' is not one of"),
        (lambda m: m.pop("config"), "has the wrong fields; missing: config"),
        (lambda m: m.__setitem__("extra", 1), "has the wrong fields; unknown: extra"),
        (lambda m: m["params"].__setitem__(0, [[4, 3], "|O"]), "params entry 0 must be \\[shape, numeric dtype\\]"),
        (lambda m: m["params"].__setitem__(0, [[5, 3], "<f8"]), "params array 0 is \\(4, 3\\) float64, its description says \\(5, 3\\) float64"),
        (lambda m: m["opt_state"].append([[1], "<f4"]), "lacks members its description names: opt_state/"),
    ],
)
def test_a_tampered_checkpoint_with_a_recomputed_digest_is_refused_by_field(tmp_path, change, message):
    path = tmp_path / "c.ckpt"
    small_checkpoint(path)
    load_small(path)  # whole, it loads
    _edit_meta(path, change)
    with pytest.raises(CheckpointError, match=message):
        load_small(path)


def test_a_checkpoint_above_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "c.ckpt"
    small_checkpoint(path)
    with pytest.raises(CheckpointError, match="the checkpoint is .* above the limit of 1 KiB"):
        load_small(path, limit="1K")


# --- fuzzing: every outcome is the right data or a clean refusal

REFUSALS = (ValueError, FileNotFoundError)  # FileFormatError and CheckpointError are ValueErrors


def reference_idx(raw: bytes):
    """An independent reading of IDX bytes by the format's definition, or None if they are not IDX."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            return None
    types = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in types or not 1 <= raw[3] <= 16:
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(types[raw[2]])
    if len(raw) != 4 + 4 * ndim + math.prod(shape) * dtype.itemsize:
        return None
    return np.frombuffer(raw[4 + 4 * ndim :], dtype).reshape(shape)


def mutations(length):
    """Truncations, bit flips, and edits of the header's bytes."""
    return st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, length - 1), st.just(0)),
        st.tuples(st.just("flip"), st.integers(0, length - 1), st.integers(0, 7)),
        st.tuples(st.just("set"), st.integers(0, min(15, length - 1)), st.integers(0, 255)),
    )


def mutate(raw: bytes, mutation) -> bytes:
    kind, at, value = mutation
    if kind == "truncate":
        return raw[:at]
    data = bytearray(raw)
    data[at] = data[at] ^ (1 << value) if kind == "flip" else value
    return bytes(data)


IDX_PLAIN = idx_bytes(np.arange(3 * 4 * 2, dtype=np.uint8).reshape(3, 4, 2))
IDX_GZIP = gzip.compress(IDX_PLAIN, mtime=0)


@FUZZ
@given(st.sampled_from([IDX_PLAIN, IDX_GZIP]).flatmap(lambda raw: st.tuples(st.just(raw), mutations(len(raw)))))
def test_fuzzed_idx_files_give_the_right_array_or_a_refusal(tmp_path, case):
    raw, mutation = case
    data = mutate(raw, mutation)
    path = tmp_path / "fuzzed"
    path.write_bytes(data)
    expected = reference_idx(data)
    try:
        got = read_idx(path)
    except REFUSALS:
        assert expected is None, f"a valid file was refused: {mutation}"
        return
    assert expected is not None, f"an invalid file was accepted: {mutation}"
    assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)


NPZ_RAW = zip_bytes({f"{k}.npy": npy_bytes(v) for k, v in mnist_arrays().items()})


@FUZZ
@given(mutations(len(NPZ_RAW)))
def test_fuzzed_npz_files_give_the_right_arrays_or_a_refusal(tmp_path, mutation):
    data = mutate(NPZ_RAW, mutation)
    (tmp_path / "mnist.npz").write_bytes(data)
    try:
        got = read_npz(tmp_path / "mnist.npz", ["x_train", "y_train", "x_test", "y_test"])
    except REFUSALS:
        return
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # what the bytes say, read by NumPy
        for name, array in got.items():
            expected = npz[name]
            assert array.dtype == expected.dtype and np.array_equal(array, expected), name


@FUZZ
@given(st.data())
def test_fuzzed_checkpoints_are_refused_unless_unchanged(tmp_path, data):
    path = tmp_path / "c.ckpt"
    if not path.exists():
        small_checkpoint(path)
    original = path.read_bytes()
    changed = mutate(original, data.draw(mutations(len(original))))
    (tmp_path / "m.ckpt").write_bytes(changed)
    if changed == original:
        load_small(tmp_path / "m.ckpt")
        return
    with pytest.raises(CheckpointError):
        load_small(tmp_path / "m.ckpt")
    if len(changed) < HEADER.size:
        return
    # the same bytes with the digest made right again (a deliberate edit): a refusal, or what the bytes say
    (tmp_path / "m.ckpt").write_bytes(rehash(changed))
    try:
        loaded = load_small(tmp_path / "m.ckpt")
    except REFUSALS:
        return
    with np.load(io.BytesIO(changed[HEADER.size:]), allow_pickle=False) as npz:
        stored = {name: npz[name] for name in npz.files}
    meta = json.loads(stored["meta"].tobytes())
    assert (loaded.epoch, loaded.config, loaded.history) == (meta["epoch"], meta["config"], meta["history"])
    leaves = jax.tree.leaves((loaded.params, loaded.opt_state))
    names = [f"params/{i}" for i in range(len(meta["params"]))] + [f"opt_state/{i}" for i in range(len(meta["opt_state"]))]
    assert len(leaves) == len(names)
    for leaf, name in zip(leaves, names):
        assert np.array_equal(np.asarray(leaf), stored[name], equal_nan=True), name
