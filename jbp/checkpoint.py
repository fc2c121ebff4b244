"""Checkpoints: parameters, optimizer state, epoch, key, configuration, history.

A checkpoint is one file: a 48-byte header (the magic ``JBPCKPT1``, the
payload's length as a little-endian 64-bit integer, and the payload's SHA-256
digest) followed by the payload, an ``.npz`` archive holding arrays only: the
leaves of the parameters and of the optimizer state, the key's data and a
JSON description stored as bytes. Loading checks the magic, the length and the
digest over every byte before anything is parsed, then reads the arrays with
``allow_pickle=False``, so loading one never runs code; a truncated,
corrupted or edited file is refused whole, never half-loaded.

Writes are atomic: the file is written beside its destination under a
temporary name, flushed to disk, then renamed over the old one, so a run
killed at any moment leaves either the old checkpoint or the new one.
"""

import hashlib
import io
import json
import os
import pathlib
import struct
import tempfile
import zipfile
from itertools import zip_longest
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbp.network import Dense

FORMAT = "jbp-checkpoint/1"
MAGIC = b"JBPCKPT1"
HEADER = struct.Struct("<8sQ32s")  # magic, payload length, SHA-256 of the payload


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, altered, or for another network."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns."""

    params: tuple[Dense, ...]
    opt_state: Any
    epoch: int
    key: jax.Array
    config: dict
    history: list[dict]


def atomic_write(path: "str | os.PathLike", write: Callable[[io.BufferedWriter], None]) -> None:
    """Writes a file through ``write(f)`` to a temporary name, fsyncs it, and renames it over ``path``."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _describe(leaves: Sequence[np.ndarray]) -> list:
    return [[list(a.shape), a.dtype.str] for a in leaves]


def save(
    path: "str | os.PathLike",
    *,
    params: Sequence[Dense],
    opt_state: Any,
    epoch: int,
    key: jax.Array,
    config: dict,
    history: Sequence[dict] = (),
) -> None:
    """Saves a training state atomically (see the module docstring).

    Args:
      path: the file to write (its folder must exist).
      params, opt_state: the parameters and the optimizer's state.
      epoch: epochs completed.
      key: the run's ``jax.random.key``.
      config: a JSON-serializable description of the run.
      history: the per-epoch records so far.
    """
    param_leaves = [np.asarray(a) for a in jax.tree.leaves(tuple(params))]
    state_leaves = [np.asarray(a) for a in jax.tree.leaves(opt_state)]
    meta = {
        "format": FORMAT,
        "epoch": int(epoch),
        "key_impl": str(jax.random.key_impl(key)),
        "config": config,
        "history": list(history),
        "params": _describe(param_leaves),
        "opt_state": _describe(state_leaves),
    }
    arrays = {f"params/{i}": a for i, a in enumerate(param_leaves)}
    arrays.update({f"opt_state/{i}": a for i, a in enumerate(state_leaves)})
    arrays["key"] = np.asarray(jax.random.key_data(key))
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    payload = io.BytesIO()
    np.savez(payload, **arrays)
    payload = payload.getvalue()
    header = HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    atomic_write(path, lambda f: f.write(header + payload))


def _read(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    if len(raw) < HEADER.size:
        raise CheckpointError(f"{path} is truncated: {len(raw)} bytes, shorter than a checkpoint's header")
    magic, length, digest = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CheckpointError(f"{path} is not a jbp checkpoint (it starts with {raw[:8]!r})")
    payload = raw[HEADER.size :]
    if len(payload) != length:
        raise CheckpointError(
            f"{path} is truncated or extended: {len(payload)} bytes of payload, its header says {length}"
        )
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} does not match its SHA-256 digest: it was altered or corrupted")
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint: {err}") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path} is not a jbp checkpoint: it has no description")
    return arrays


def _restore(kind: str, stored: list[np.ndarray], like: Any, path: pathlib.Path) -> Any:
    """Puts stored leaves into the structure of ``like``, refusing any difference of count or shape."""
    expected, treedef = jax.tree.flatten(like)
    if len(stored) != len(expected):
        raise CheckpointError(
            f"{path}: the checkpoint's {kind} has {len(stored)} arrays, {len(expected)} expected"
            + (" (another optimizer?)" if kind == "optimizer state" else "")
        )
    differences = [
        f"{kind} array {i}: {tuple(got.shape)} {got.dtype} in the checkpoint, "
        f"{tuple(np.shape(want))} {jnp.result_type(want)} expected"
        for i, (got, want) in enumerate(zip(stored, expected))
        if tuple(got.shape) != tuple(np.shape(want)) or got.dtype != jnp.result_type(want)
    ]
    if differences:
        raise CheckpointError(f"{path} does not fit this run:\n  " + "\n  ".join(differences))
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in stored])


def load(path: "str | os.PathLike", *, params_like: Sequence[Dense], opt_state_like: Any) -> Checkpoint:
    """Loads a checkpoint into the structure of a template run.

    Args:
      path: the checkpoint file.
      params_like: parameters of the network the checkpoint must fit (their
        values are not used, only their structure, shapes and dtypes).
      opt_state_like: the optimizer's state for ``params_like``, likewise.

    Returns:
      A :class:`Checkpoint`.

    Raises:
      FileNotFoundError: when there is no file.
      CheckpointError: for a truncated, corrupted or edited file, or one
        whose layers differ from ``params_like`` (naming the layer and both
        shapes) or whose optimizer state differs.
    """
    path = pathlib.Path(path)
    arrays = _read(path)
    try:
        meta = json.loads(arrays["meta"].tobytes().decode())
    except ValueError as err:
        raise CheckpointError(f"{path}: unreadable description: {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    n_params, n_state = len(meta["params"]), len(meta["opt_state"])
    stored_params = [arrays[f"params/{i}"] for i in range(n_params)]
    expected_layers = [(tuple(layer.W.shape), tuple(layer.b.shape)) for layer in params_like]
    stored_layers = [(tuple(stored_params[i].shape), tuple(stored_params[i + 1].shape)) for i in range(0, n_params - 1, 2)]
    if stored_layers != expected_layers:
        lines = [
            f"layer {l}: W {got[0] if got else '-'}, b {got[1] if got else '-'} in the checkpoint; "
            f"W {want[0] if want else '-'}, b {want[1] if want else '-'} expected"
            for l, (got, want) in enumerate(zip_longest(stored_layers, expected_layers), 1)
            if got != want
        ]
        raise CheckpointError(f"{path} is for another architecture:\n  " + "\n  ".join(lines))
    params = _restore("params", stored_params, tuple(params_like), path)
    opt_state = _restore("optimizer state", [arrays[f"opt_state/{i}"] for i in range(n_state)], opt_state_like, path)
    key = jax.random.wrap_key_data(arrays["key"], impl=meta["key_impl"])
    return Checkpoint(params, opt_state, meta["epoch"], key, meta["config"], meta["history"])


def save_params(path: "str | os.PathLike", params: Sequence[Dense]) -> None:
    """Saves parameters alone as ``W1, b1, W2, b2, …`` in an ``.npz`` (atomically)."""
    arrays = {}
    for l, layer in enumerate(params, 1):
        arrays[f"W{l}"], arrays[f"b{l}"] = np.asarray(layer.W), np.asarray(layer.b)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_params(path: "str | os.PathLike") -> tuple[Dense, ...]:
    """Reads what :func:`save_params` wrote (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as npz:
        depth = len(npz.files) // 2
        return tuple(Dense(jnp.asarray(npz[f"W{l}"]), jnp.asarray(npz[f"b{l}"])) for l in range(1, depth + 1))
