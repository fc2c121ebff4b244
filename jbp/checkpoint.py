"""Checkpoints: parameters, optimizer state, epoch, key, configuration, history.

A checkpoint is one file: a 48-byte header (the magic ``JBPCKPT1``, the
payload's length as a little-endian 64-bit integer, and the payload's SHA-256
digest) followed by the payload, an ``.npz`` archive holding arrays only: the
leaves of the parameters and of the optimizer state (a PRNG key among them,
as ``optax.noisy_sgd`` keeps one, is stored as its key data and its
implementation's name), the run's key and a JSON description stored as bytes.

Loading treats the file as untrusted (:mod:`jbp.files`): its size is checked
against the limit and its header's length against the file before the
payload is read; the digest over every byte before anything is parsed; then
the description's schema (every field, its type and range), and only the
members that description names are read, with ``allow_pickle`` never
involved. A member the description does not name, a shape or dtype that
differs from the description or from the run being resumed, a history entry
that is not a finite number: each is refused with :class:`CheckpointError`
naming the file and the field. A truncated, corrupted or edited file is
refused whole, never half-loaded.

Writes are atomic (:func:`jbp.files.atomic_write`): a run killed at any moment
leaves either the old checkpoint or the new one.
"""

import hashlib
import io
import json
import math
import os
import pathlib
import struct
from collections.abc import Sequence
from itertools import zip_longest
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbp.files import (
    FileFormatError,
    atomic_write,
    max_bytes,
    npz_names,
    parse_json,
    read_exact,
    read_npz,
    regular_file,
    too_large,
    write_npz,
)
from jbp.layers import Dense

__all__ = ["Checkpoint", "CheckpointError", "atomic_write", "load", "load_params", "save", "save_params"]

FORMAT = "jbp-checkpoint/1"
MAGIC = b"JBPCKPT1"
HEADER = struct.Struct("<8sQ32s")  # magic, payload length, SHA-256 of the payload
KEY_IMPLS = {"threefry2x32": (2,), "rbg": (4,), "unsafe_rbg": (4,)}  # jax's PRNG implementations, key data shape
KEY_DTYPE = "key:"  # a leaf stored as key data: its dtype in the description is "key:IMPL"
TREES = ("params", "opt_state")


class CheckpointError(FileFormatError):
    """A checkpoint that cannot be used: unreadable, altered, or for another network."""


class Checkpoint(NamedTuple):
    """What :func:`load` returns; ``extras`` holds the extra trees asked for by name."""

    params: tuple[Dense, ...]
    opt_state: Any
    epoch: int
    key: jax.Array
    config: dict
    history: list[dict]
    extras: dict = {}


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(getattr(leaf, "dtype", None) or np.float32, jax.dtypes.prng_key)


def _stored(leaf: Any) -> tuple[np.ndarray, list]:
    """A leaf as an array to store, and its description ``[shape, dtype]``."""
    if _is_key(leaf):
        data = np.asarray(jax.random.key_data(leaf))
        return data, [list(np.shape(leaf)), KEY_DTYPE + str(jax.random.key_impl(leaf))]
    array = np.asarray(leaf)
    return array, [list(array.shape), array.dtype.str]


def save(
    path: "str | os.PathLike",
    *,
    params: Sequence[Dense],
    opt_state: Any,
    epoch: int,
    key: jax.Array,
    config: dict,
    history: Sequence[dict] = (),
    extras: "dict[str, Any] | None" = None,
) -> None:
    """Saves a training state atomically (see the module docstring).

    Args:
      path: the file to write (its folder must exist).
      params, opt_state: the parameters and the optimizer's state.
      epoch: epochs completed.
      key: the run's ``jax.random.key``.
      config: a JSON-serializable description of the run.
      history: the per-epoch records so far (numbers, or lists of numbers).
      extras: more state by name, each any pytree of arrays (the parameters
        of the best epoch, feedback matrices that learn, …).

    Raises:
      ValueError: for a history or configuration that JSON cannot hold
        exactly (NaN, infinity): a checkpoint never stores what it would
        refuse to load.
    """
    arrays, meta = {}, {
        "format": FORMAT,
        "epoch": int(epoch),
        "key_impl": str(jax.random.key_impl(key)),
        "config": config,
        "history": list(history),
    }
    extras = dict(extras or {})
    for name in extras:
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"an extra's name must be an identifier, got {name!r}")
    trees = [("params", tuple(params)), ("opt_state", opt_state)] + [(f"extra/{n}", t) for n, t in sorted(extras.items())]
    for tree_name, tree in trees:
        described = []
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{tree_name}/{i}"], description = _stored(leaf)
            described.append(description)
        if tree_name.startswith("extra/"):
            meta.setdefault("extras", {})[tree_name[len("extra/"):]] = described
        else:
            meta[tree_name] = described
    arrays["key"] = np.asarray(jax.random.key_data(key))
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True, allow_nan=False).encode(), np.uint8)
    payload = io.BytesIO()
    write_npz(payload, arrays)
    payload = payload.getvalue()
    header = HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())
    atomic_write(path, lambda f: f.write(header + payload))


def _payload(path: pathlib.Path, limit: int) -> bytes:
    """The payload, after the size, header, length and digest checks."""
    try:
        path = regular_file(path, "checkpoint")
    except FileFormatError as err:
        raise CheckpointError(str(err)) from None
    size = path.stat().st_size
    if size > limit:
        raise CheckpointError(str(too_large(path, "the checkpoint", size, limit)))
    with open(path, "rb") as f:
        if size < HEADER.size:
            raise CheckpointError(f"{path} is truncated: {size} bytes, shorter than a checkpoint's header")
        magic, length, digest = HEADER.unpack(read_exact(f, HEADER.size, path, "the header"))
        if magic != MAGIC:
            raise CheckpointError(f"{path} is not a jbp checkpoint (it starts with {magic!r})")
        if length != size - HEADER.size:
            raise CheckpointError(
                f"{path} is truncated or extended: {size - HEADER.size} bytes of payload, its header says {length}"
            )
        payload = f.read(length)
    if len(payload) != length:
        raise CheckpointError(f"{path} changed while it was read")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} does not match its SHA-256 digest: it was altered or corrupted")
    return payload


def _members(path: pathlib.Path, payload: bytes, names: Sequence[str], limit: int, unknown: str) -> dict:
    try:
        return read_npz(io.BytesIO(payload), names, limit=limit, unknown=unknown, label=path)
    except FileFormatError as err:
        raise CheckpointError(f"not a readable checkpoint: {err}") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_history(history: Any, where: str) -> list[dict]:
    """Refuses a history that is not a list of records ``{name: number or list of numbers}``
    with whole, increasing epochs from 1; names ``where`` and the first bad entry."""
    if not isinstance(history, list):
        raise CheckpointError(f"{where}: the history must be a list of records, got {type(history).__name__}")
    previous = 0
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            raise CheckpointError(f"{where}: history record {i} must be a dict, got {type(record).__name__}")
        epoch = record.get("epoch")
        if not (_is_count(epoch) and epoch > previous):
            raise CheckpointError(
                f"{where}: history record {i} has epoch {epoch!r}; expected a whole number above {previous}"
            )
        previous = epoch
        for name, value in record.items():
            ok = _is_number(value) or (isinstance(value, list) and all(_is_number(v) for v in value))
            if not isinstance(name, str) or not ok:
                raise CheckpointError(
                    f"{where}: history record {i}, {name!r}: expected a finite number or a list of them, got {value!r}"
                )
    return history


def _check_meta(meta: Any, path: pathlib.Path) -> dict:
    """The description's schema: every field there, of its type and range."""
    where = f"{path}: the checkpoint's description"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(meta).__name__}")
    expected = {"format", "epoch", "key_impl", "config", "history", *TREES}
    if set(meta) - {"extras"} != expected:
        missing, extra = sorted(expected - set(meta)), sorted(set(meta) - expected - {"extras"})
        raise CheckpointError(
            f"{where} has the wrong fields" + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(extra)}" if extra else "")
        )
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{where}: format {meta['format']!r}, expected {FORMAT!r}")
    if not _is_count(meta["epoch"]):
        raise CheckpointError(f"{where}: epoch must be a whole number ≥ 0, got {meta['epoch']!r}")
    if meta["key_impl"] not in KEY_IMPLS:
        raise CheckpointError(f"{where}: key_impl {meta['key_impl']!r} is not one of {', '.join(KEY_IMPLS)}")
    if not isinstance(meta["config"], dict):
        raise CheckpointError(f"{where}: config must be a JSON object, got {type(meta['config']).__name__}")
    check_history(meta["history"], where)
    if meta["history"] and meta["history"][-1]["epoch"] > meta["epoch"]:
        raise CheckpointError(f"{where}: the history reaches epoch {meta['history'][-1]['epoch']}, "
                              f"beyond the checkpoint's epoch {meta['epoch']}")
    extras = meta.get("extras", {})
    if not (isinstance(extras, dict) and all(isinstance(k, str) and k.isidentifier() for k in extras)):
        raise CheckpointError(f"{where}: extras must map names to lists of [shape, dtype]")
    for tree in list(TREES) + [f"extra/{name}" for name in extras]:
        leaves = meta[tree] if tree in TREES else extras[tree[len("extra/"):]]
        if not isinstance(leaves, list):
            raise CheckpointError(f"{where}: {tree} must be a list of [shape, dtype], got {leaves!r:.80}")
        for i, leaf in enumerate(leaves):
            ok = isinstance(leaf, list) and len(leaf) == 2 and isinstance(leaf[0], list) \
                and all(_is_count(d) for d in leaf[0]) and isinstance(leaf[1], str)
            if ok and leaf[1].startswith(KEY_DTYPE):
                ok = leaf[1][len(KEY_DTYPE):] in KEY_IMPLS
            elif ok:
                try:
                    ok = np.dtype(leaf[1]).kind in "biuf"
                except TypeError:
                    ok = False
            if not ok:
                raise CheckpointError(f"{where}: {tree} entry {i} must be [shape, numeric dtype], got {leaf!r:.80}")
    return meta


def _leaf(stored: np.ndarray, description: list, name: str, path: pathlib.Path) -> Any:
    """A stored array, checked against its description; key data wrapped back into a key."""
    shape, dtype = tuple(description[0]), description[1]
    if dtype.startswith(KEY_DTYPE):
        impl = dtype[len(KEY_DTYPE):]
        if stored.dtype != np.uint32 or stored.shape != shape + KEY_IMPLS[impl]:
            raise CheckpointError(f"{path}: {name} is not the data of {impl} keys of shape {shape}")
        return jax.random.wrap_key_data(stored, impl=impl)
    if stored.shape != shape or stored.dtype != np.dtype(dtype):
        raise CheckpointError(
            f"{path}: {name} is {stored.shape} {stored.dtype}, its description says {shape} {np.dtype(dtype)}"
        )
    return stored


def _dtype_of(leaf: Any) -> str:
    if _is_key(leaf):
        return KEY_DTYPE + str(jax.random.key_impl(leaf))
    return str(jnp.result_type(leaf))


def _restore(kind: str, stored: list, like: Any, path: pathlib.Path) -> Any:
    """Puts stored leaves into the structure of ``like``, refusing any difference of count, shape or dtype."""
    expected, treedef = jax.tree.flatten(like)
    if len(stored) != len(expected):
        raise CheckpointError(
            f"{path}: the checkpoint's {kind} has {len(stored)} arrays, {len(expected)} expected"
            + (" (another optimizer?)" if kind == "optimizer state" else "")
        )
    differences = [
        f"{kind} array {i}: {tuple(np.shape(got))} {_dtype_of(got)} in the checkpoint, "
        f"{tuple(np.shape(want))} {_dtype_of(want)} expected"
        for i, (got, want) in enumerate(zip(stored, expected))
        if tuple(np.shape(got)) != tuple(np.shape(want)) or _dtype_of(got) != _dtype_of(want)
    ]
    if differences:
        raise CheckpointError(f"{path} does not fit this run:\n  " + "\n  ".join(differences))
    return jax.tree.unflatten(treedef, [got if _is_key(got) else jnp.asarray(got) for got in stored])


def load(
    path: "str | os.PathLike",
    *,
    params_like: Sequence[Dense],
    opt_state_like: Any,
    limit: "int | str | None" = None,
    extras_like: "dict[str, Any] | None" = None,
) -> Checkpoint:
    """Loads a checkpoint into the structure of a template run.

    Args:
      path: the checkpoint file.
      params_like: parameters of the network the checkpoint must fit (their
        values are not used, only their structure, shapes and dtypes).
      opt_state_like: the optimizer's state for ``params_like``, likewise.
      limit: the largest file accepted (:func:`jbp.files.max_bytes`).
      extras_like: the extra trees wanted, by name, each as a template like
        ``params_like`` (an extra the checkpoint lacks is refused).

    Returns:
      A :class:`Checkpoint`.

    Raises:
      FileNotFoundError: when there is no file.
      CheckpointError: (a ``ValueError``) for a file that is too large,
        truncated, corrupted or edited, whose description breaks the schema,
        which holds members it does not describe, or whose layers differ from
        ``params_like`` (naming the layer and both shapes) or whose optimizer
        state differs.
    """
    path, limit = pathlib.Path(path), max_bytes(limit)
    payload = _payload(path, limit)
    described = _members(path, payload, ["meta"], limit, "ignore")
    if "meta" not in described:
        raise CheckpointError(f"{path} is not a jbp checkpoint: it has no description")
    try:
        meta = parse_json(described["meta"].tobytes(), f"{path}: the description")
    except FileFormatError as err:
        raise CheckpointError(str(err)) from None
    meta = _check_meta(meta, path)
    described = {tree: meta[tree] for tree in TREES}
    described.update({f"extra/{name}": leaves for name, leaves in meta.get("extras", {}).items()})
    names = ["meta", "key"] + [f"{tree}/{i}" for tree, leaves in described.items() for i in range(len(leaves))]
    arrays = _members(path, payload, names, limit, "refuse")
    missing = [name for name in names if name not in arrays]
    if missing:
        raise CheckpointError(f"{path} lacks members its description names: {', '.join(missing[:5])}")
    leaves = {
        tree: [_leaf(arrays[f"{tree}/{i}"], d, f"{tree} array {i}", path) for i, d in enumerate(descriptions)]
        for tree, descriptions in described.items()
    }
    stored_params = leaves["params"]
    _check_architecture(path, [tuple(leaf.shape) for leaf in stored_params], tuple(params_like))
    params = _restore("params", stored_params, tuple(params_like), path)
    if not all(np.all(np.isfinite(np.asarray(leaf))) for leaf in stored_params):
        raise CheckpointError(f"{path}: the parameters hold NaN or infinity")
    opt_state = _restore("optimizer state", leaves["opt_state"], opt_state_like, path)
    key_data = arrays["key"]
    if key_data.dtype != np.uint32 or key_data.shape != KEY_IMPLS[meta["key_impl"]]:
        raise CheckpointError(f"{path}: the run's key is {key_data.shape} {key_data.dtype}, not {meta['key_impl']} key data")
    key = jax.random.wrap_key_data(key_data, impl=meta["key_impl"])
    extras = {}
    for name, like in (extras_like or {}).items():
        if f"extra/{name}" not in leaves:
            raise CheckpointError(f"{path} holds no {name!r} (a run started with other options?)")
        extras[name] = _restore(name, leaves[f"extra/{name}"], like, path)
    return Checkpoint(params, opt_state, meta["epoch"], key, meta["config"], meta["history"], extras)


def _check_architecture(path: pathlib.Path, stored: list, params_like: tuple) -> None:
    """Refuses stored parameter shapes (in ``jax.tree.leaves`` order, as :func:`save` wrote them) that
    are not those of ``params_like``, naming each layer and array that differs."""
    if all(isinstance(layer, Dense) for layer in params_like):  # a dense network's file, named as W and b pairs
        expected_layers = [(tuple(layer.W.shape), tuple(layer.b.shape)) for layer in params_like]
        stored_layers = [(stored[i], stored[i + 1]) for i in range(0, len(stored) - 1, 2)]
        if stored_layers == expected_layers and not len(stored) % 2:
            return
        lines = [
            f"layer {l}: W {got[0] if got else '-'}, b {got[1] if got else '-'} in the checkpoint; "
            f"W {want[0] if want else '-'}, b {want[1] if want else '-'} expected"
            for l, (got, want) in enumerate(zip_longest(stored_layers, expected_layers), 1)
            if got != want
        ]
        raise CheckpointError(f"{path} is for another architecture:\n  " + "\n  ".join(lines or ["odd number of arrays"]))
    expected = [(f"layer {l} {jax.tree_util.keystr(where).lstrip('.') or 'params'}", tuple(np.shape(leaf)))
                for l, layer in enumerate(params_like, 1) for where, leaf in jax.tree_util.tree_flatten_with_path(layer)[0]]
    if [shape for _, shape in expected] != stored:
        lines = [f"{want[0] if want else 'beyond the network'}: {got if got is not None else '-'} in the checkpoint; "
                 f"{want[1] if want else '-'} expected"
                 for got, want in zip_longest(stored, expected) if want is None or got != want[1]]
        raise CheckpointError(f"{path} is for another architecture:\n  " + "\n  ".join(lines[:8]))


def save_params(path: "str | os.PathLike", params: Sequence[Dense]) -> None:
    """Saves a dense network's parameters alone as ``W1, b1, W2, b2, …`` in an ``.npz`` (atomically);
    for any other layers, :func:`save` keeps the whole pytree."""
    if not all(isinstance(layer, Dense) for layer in params):
        raise TypeError("save_params writes dense layers' W and b; save a network with other layers by checkpoint.save")
    arrays = {}
    for l, layer in enumerate(params, 1):
        arrays[f"W{l}"], arrays[f"b{l}"] = np.asarray(layer.W), np.asarray(layer.b)
    atomic_write(path, lambda f: write_npz(f, arrays))


def load_params(path: "str | os.PathLike", limit: "int | str | None" = None) -> tuple[Dense, ...]:
    """Reads what :func:`save_params` wrote, as untrusted bytes.

    The archive must hold exactly ``W1, b1, …, WL, bL`` and nothing else,
    floating point, finite, each ``W`` of shape ``(n_l, n_{l-1})`` chaining
    onto the one before and each ``b`` of shape ``(n_l,)``.

    Raises:
      FileNotFoundError: when there is no file.
      FileFormatError: (a ``ValueError``) for anything else in the archive,
        a missing array, a shape that does not chain, a non-finite value.
    """
    names = npz_names(path)
    depth = len(names) // 2
    expected = [f"{kind}{l}" for l in range(1, depth + 1) for kind in "Wb"]
    if sorted(names) != sorted(expected) or not names:
        strangers = sorted(set(names) - set(expected))
        raise FileFormatError(
            f"{path} must hold exactly W1, b1, …, WL, bL; "
            + (f"it also holds {', '.join(strangers[:5])}" if strangers else f"it holds {', '.join(sorted(names)) or 'nothing'}")
        )
    arrays = read_npz(path, expected, limit=limit, unknown="refuse")
    params = []
    for l in range(1, depth + 1):
        W, b = arrays[f"W{l}"], arrays[f"b{l}"]
        if W.ndim != 2 or b.shape != (W.shape[0],) or (params and W.shape[1] != params[-1].W.shape[0]):
            raise FileFormatError(
                f"{path}: layer {l} has W {W.shape} and b {b.shape}; expected W (n_{l}, n_{l - 1}) chaining onto the "
                f"layer before and b (n_{l},)"
            )
        if W.dtype.kind != "f" or b.dtype != W.dtype:
            raise FileFormatError(f"{path}: layer {l} must be floating point of one dtype, got {W.dtype} and {b.dtype}")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise FileFormatError(f"{path}: layer {l} holds NaN or infinity")
        params.append(Dense(jnp.asarray(W), jnp.asarray(b)))
    return tuple(params)
