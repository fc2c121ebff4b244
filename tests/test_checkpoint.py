"""Checkpoints: a round trip, refusal of other architectures and of altered
files, no pickle, atomic replacement."""

import hashlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbp
from jbp.checkpoint import CheckpointError

NET = jbp.mlp([4, 6, 3], hidden="relu", output="softmax")


def state(net=NET, seed=0):
    params = jbp.init(net, jax.random.key(seed))
    opt = optax.adam(0.01)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # a state with nonzero moments
    return params, opt, opt_state


def save(path, params, opt_state, key=None, epoch=7):
    jbp.checkpoint.save(path, params=params, opt_state=opt_state, epoch=epoch,
                        key=jax.random.key(42) if key is None else key,
                        config={"sizes": [4, 6, 3]}, history=[{"epoch": 1, "loss": 0.5}])


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))) and \
        jax.tree.structure(a) == jax.tree.structure(b)


def test_round_trip(tmp_path):
    params, opt, opt_state = state()
    save(tmp_path / "c.ckpt", params, opt_state)
    loaded = jbp.checkpoint.load(tmp_path / "c.ckpt", params_like=params, opt_state_like=opt.init(params))
    assert same(loaded.params, params) and same(loaded.opt_state, opt_state)
    assert loaded.epoch == 7 and loaded.config == {"sizes": [4, 6, 3]} and loaded.history[0]["loss"] == 0.5
    np.testing.assert_array_equal(jax.random.key_data(loaded.key), jax.random.key_data(jax.random.key(42)))
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]  # no temporary file left


def test_another_architecture_is_refused_naming_the_shapes(tmp_path):
    params, _, opt_state = state()
    save(tmp_path / "c.ckpt", params, opt_state)
    other = jbp.mlp([4, 5, 3], hidden="relu", output="softmax")
    other_params, other_opt, _ = state(other)
    with pytest.raises(CheckpointError, match=r"another architecture:\n  layer 1: W \(6, 4\), b \(6,\) in the checkpoint; W \(5, 4\), b \(5,\) expected"):
        jbp.checkpoint.load(tmp_path / "c.ckpt", params_like=other_params, opt_state_like=other_opt.init(other_params))


def test_another_optimizer_is_refused(tmp_path):
    params, _, opt_state = state()
    save(tmp_path / "c.ckpt", params, opt_state)
    with pytest.raises(CheckpointError, match="optimizer state has .* arrays"):
        jbp.checkpoint.load(tmp_path / "c.ckpt", params_like=params, opt_state_like=optax.sgd(0.1, momentum=0.9).init(params))


def test_a_flipped_byte_anywhere_is_refused(tmp_path):
    params, opt, opt_state = state()
    save(tmp_path / "c.ckpt", params, opt_state)
    raw = bytearray((tmp_path / "c.ckpt").read_bytes())
    for offset in list(range(0, 48, 5)) + list(range(48, len(raw), 97)) + [len(raw) - 1]:
        corrupted = raw.copy()
        corrupted[offset] ^= 0xFF
        (tmp_path / "bad.ckpt").write_bytes(bytes(corrupted))
        with pytest.raises(CheckpointError):
            jbp.checkpoint.load(tmp_path / "bad.ckpt", params_like=params, opt_state_like=opt.init(params))


@pytest.mark.parametrize("keep", [0, 10, 0.3, 0.7, -1])
def test_a_truncated_file_is_refused(tmp_path, keep):
    params, opt, opt_state = state()
    save(tmp_path / "c.ckpt", params, opt_state)
    raw = (tmp_path / "c.ckpt").read_bytes()
    cut = keep if isinstance(keep, int) and keep >= 0 else (len(raw) - 1 if keep == -1 else int(keep * len(raw)))
    (tmp_path / "bad.ckpt").write_bytes(raw[:cut])
    with pytest.raises(CheckpointError):
        jbp.checkpoint.load(tmp_path / "bad.ckpt", params_like=params, opt_state_like=opt.init(params))


def _rewrite(path, change, header=None):
    """Changes one array of the payload and writes it back as a valid npz
    behind the old header (or the one given): what a hand edit does."""
    raw = path.read_bytes()
    with np.load(io.BytesIO(raw[48:]), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    payload = io.BytesIO()
    np.savez(payload, **arrays)
    payload = payload.getvalue()
    header = header(payload) if header else raw[:48]
    path.write_bytes(header + payload)


def test_a_hand_edited_checkpoint_fails_its_digest(tmp_path):
    params, opt, opt_state = state()
    path = tmp_path / "c.ckpt"
    save(path, params, opt_state)

    def later_epoch(arrays):
        meta = json.loads(arrays["meta"].tobytes())
        meta["epoch"] = 99
        arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)

    _rewrite(path, later_epoch)
    with pytest.raises(CheckpointError, match="SHA-256|header says"):
        jbp.checkpoint.load(path, params_like=params, opt_state_like=opt.init(params))

    save(path, params, opt_state)
    _rewrite(path, lambda arrays: arrays.__setitem__("params/0", arrays["params/0"] * 2))
    with pytest.raises(CheckpointError, match="SHA-256"):
        jbp.checkpoint.load(path, params_like=params, opt_state_like=opt.init(params))


def test_pickled_content_is_never_loaded(tmp_path):
    """A checkpoint whose header and digest are right but whose payload holds a
    pickled object array is refused, not unpickled."""
    params, opt, opt_state = state()
    path = tmp_path / "evil.ckpt"
    save(path, params, opt_state)

    def pickled(arrays):
        arrays["params/0"] = np.array([{"run": "code"}], dtype=object)

    def honest_header(payload):
        return jbp.checkpoint.HEADER.pack(jbp.checkpoint.MAGIC, len(payload), hashlib.sha256(payload).digest())

    _rewrite(path, pickled, honest_header)  # np.savez pickles the object array
    with pytest.raises(CheckpointError, match="holds object values; only numbers are read \\(nothing is unpickled\\)"):
        jbp.checkpoint.load(path, params_like=params, opt_state_like=opt.init(params))


def test_a_missing_checkpoint(tmp_path):
    params, opt, _ = state()
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        jbp.checkpoint.load(tmp_path / "none.ckpt", params_like=params, opt_state_like=opt.init(params))


def test_saving_replaces_the_old_file_whole(tmp_path):
    params, opt, opt_state = state()
    path = tmp_path / "c.ckpt"
    save(path, params, opt_state, epoch=1)
    save(path, params, opt_state, epoch=2)
    assert jbp.checkpoint.load(path, params_like=params, opt_state_like=opt.init(params)).epoch == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_params_file_round_trip(tmp_path):
    params, _, _ = state()
    jbp.checkpoint.save_params(tmp_path / "p.npz", params)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as npz:
        assert npz.files == ["W1", "b1", "W2", "b2"]
    assert same(jbp.checkpoint.load_params(tmp_path / "p.npz"), params)
