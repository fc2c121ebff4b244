"""The contractions over the batch axis that every layer's reductions use, sharding-aware.

On one device, or a mesh whose axes are Auto, each is a plain matmul (XLA adds the all-reduce when
the batch is split). On a mesh whose ``"batch"`` axis is Explicit (``jax.make_mesh``'s default),
the sharding of a contraction over a split axis must be named: the result is replicated, which is
what every device needs for its update. Kept apart from :mod:`jbp.parallel` (meshes, placement,
processes), so that the mathematics imports no socket or thread code.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

Array = jax.Array


def contract(d: Array, a: Array) -> Array:
    """``Σ_i d_i a_iᵀ = dᵀ a``, one contraction over the leading (batch) axis.

    On one device, or a mesh whose axes are Auto, a plain matmul (XLA adds the
    all-reduce when the batch is split). On a mesh whose ``"batch"`` axis is
    Explicit (``jax.make_mesh``'s default), the sharding of a contraction over
    a split axis must be named: the sum is replicated, which is what every
    device needs for its update.
    """
    sharding = _split_rows(d)
    if sharding is None:
        return d.T @ a
    return jnp.matmul(d.T, a, out_sharding=NamedSharding(sharding.mesh, P()))


def _split_rows(x: Array):
    """The Explicit sharding of ``x``'s leading axis, or None."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if spec is None or len(spec) == 0 or spec[0] is None:
        return None
    return sharding


def gram(d: Array, e: Array) -> Array:
    """``d eᵀ``, the ``(m, m)`` products of every pair of rows; replicated when the rows are split
    over an Explicit mesh (a product of two split axes has no sharding of its own)."""
    sharding = _split_rows(d)
    if sharding is None:
        return d @ e.T
    return jnp.matmul(d, e.T, out_sharding=NamedSharding(sharding.mesh, P()))


def rows_like(x: Array, reference: Array) -> Array:
    """``x`` (say, one key per sample) laid out along its leading axis as ``reference``'s rows are."""
    sharding = _split_rows(reference)
    if sharding is None:
        return x
    return jax.sharding.reshard(x, NamedSharding(sharding.mesh, P(sharding.spec[0])))
