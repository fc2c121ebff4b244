"""Checks on values, shared by every public entry point.

Shapes are checked where they are used (``network``, ``batch``); what is here
looks at values: the dtype, NaN and infinity, targets a loss cannot take,
class labels, and results that overflowed. Value checks run only on concrete
arrays, once per call and outside any compiled code; under ``jax.jit`` or
``jax.vmap`` (tracers) they are skipped and cost nothing.

Decisions, for the record: integer and boolean inputs are converted to the
parameters' floating dtype (pixel counts and 0/1 features are common);
complex, string and object arrays are refused with ``TypeError``.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.losses import Loss

Array = jax.Array


def is_traced(*values: Any) -> bool:
    """Whether any leaf is a tracer (inside jit, vmap, scan …)."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(values))


def params_dtype(params: Any) -> Any:
    """The parameters' dtype: that of their first leaf (the default float for none)."""
    leaves = jax.tree.leaves(params)
    return jnp.result_type(leaves[0]) if leaves else jnp.result_type(float)


def dtype_of(value: Any, name: str) -> np.dtype:
    """The dtype ``value`` would have as an array; refuses what is not real numbers."""
    try:
        dtype = np.dtype(value.dtype) if hasattr(value, "dtype") else np.asarray(value).dtype
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of real numbers, got {type(value).__name__}: {err}") from None
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer) or dtype == np.bool_):
        raise TypeError(f"{name} must hold real numbers (float, int or bool), got dtype {dtype}")
    return dtype


def check_key(key: Any, name: str = "key") -> None:
    """Refuses anything but one PRNG key: ``jax.random.key(seed)`` (or a legacy
    ``PRNGKey``, a uint32 pair)."""
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key) and shape == ()
    legacy = dtype == jnp.uint32 and shape == (2,)
    if not (typed or legacy):
        raise TypeError(
            f"{name} must be one jax.random.key(seed), got {type(key).__name__}"
            + (f" of shape {shape} and dtype {dtype}" if shape is not None else f": {key!r}")
        )


def available_memory() -> int:
    """Bytes this process may still take: ``MemAvailable`` (Linux), else the physical memory.

    What the memory checks compare their counts with (:func:`jbp.quantities.one_pass`, the data
    loaders, ``jbp train``), before anything is allocated.
    """
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 2**63


def _rows_that(bad: np.ndarray) -> tuple[int, int]:
    """How many rows of a boolean matrix have a True, and the first of them."""
    rows = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
    return len(rows), int(rows[0]) if len(rows) else -1


CHUNK_ROWS = 8192  # rows looked at at once: the checks' own memory stays small


def check_finite(value: Any, name: str) -> None:
    """Refuses NaN or infinity in a concrete array, naming how many rows and the first."""
    if is_traced(value):
        return
    array = np.atleast_2d(np.asarray(value))
    if not jnp.issubdtype(array.dtype, jnp.floating):
        return
    bad_rows = np.zeros(len(array), bool)
    for start in range(0, len(array), CHUNK_ROWS):
        chunk = array[start : start + CHUNK_ROWS]
        bad_rows[start : start + len(chunk)] = ~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
    count, first = _rows_that(bad_rows[:, None])
    if count:
        raise ValueError(f"{name} holds NaN or infinity in {count} row(s); the first is row {first}")


def check_targets(Y: Any, loss: Loss) -> None:
    """Refuses targets the loss cannot take: outside [0, 1] for binary
    cross-entropy, rows that are not probability vectors for softmax
    cross-entropy."""
    if loss.targets is None or is_traced(Y):
        return
    Y = np.atleast_2d(np.asarray(Y))
    if loss.targets == "unit":
        count, first = _rows_that((Y < 0) | (Y > 1))
        if count:
            raise ValueError(
                f"{loss.name} needs targets in [0, 1]; {count} row(s) are not, the first is row "
                f"{first}: {Y[first].tolist()}"
            )
    elif loss.targets == "distribution":
        tolerance = np.sqrt(np.finfo(Y.dtype if Y.dtype.kind == "f" else np.float32).eps)
        bad = (Y < 0).any(axis=1) | (np.abs(Y.sum(axis=1) - 1) > tolerance)
        count, first = _rows_that(bad[:, None])
        if count:
            raise ValueError(
                f"{loss.name} needs each target row to be ≥ 0 and sum to 1 (one-hot or a "
                f"probability vector); {count} row(s) are not, the first is row {first}, which "
                f"sums to {Y[first].sum():g}"
            )


def labels_to_targets(labels: Any, n_outputs: int, dtype: Any) -> Array:
    """Integer class labels of shape ``(m,)`` as targets ``(m, n_outputs)``.

    With two or more outputs a label ``k`` in ``[0, n_outputs)`` becomes a
    one-hot row (``jax.nn.one_hot``); with one output the label (0 or 1) is
    the target itself.

    Raises:
      ValueError: for labels outside the classes, naming how many and the first.
    """
    n_classes = max(n_outputs, 2)
    if not is_traced(labels):
        array = np.asarray(labels)
        outside = np.flatnonzero((array < 0) | (array >= n_classes))
        if outside.size:
            raise ValueError(
                f"class labels must lie in [0, {n_classes}) for {n_outputs} output(s); "
                f"{outside.size} do not, the first is {array[outside[0]]} at row {outside[0]}"
            )
    labels = jnp.asarray(labels)
    if n_outputs == 1:
        return labels[:, None].astype(dtype)
    return jax.nn.one_hot(labels, n_outputs, dtype=dtype)


@jax.jit
def all_finite(tree: Any) -> Array:
    """True when no floating leaf of ``tree`` holds NaN or infinity (one compiled
    reduction); integer leaves and PRNG keys (an optimizer's step count, a noise
    key) are not numbers that can overflow and are passed over."""
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves] + [jnp.array(True)]))


def finite_result(result: Any, what: str, *inputs: Any) -> Any:
    """Returns ``result``, or raises ``FloatingPointError`` if it holds NaN or
    infinity (an overflow: the inputs were checked finite). Skipped when any
    input is a tracer."""
    if is_traced(*inputs) or bool(all_finite(result)):
        return result
    raise FloatingPointError(
        f"{what} overflowed: the result holds NaN or infinity although every input is finite "
        "(inputs or weights too large for the dtype?)"
    )
