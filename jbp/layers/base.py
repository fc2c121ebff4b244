"""The layer protocol: four one-sample functions, and every batch reduction built from them.

A layer is a hashable description (a static argument of ``jax.jit``, no arrays) of one step
``a ↦ σ(z)``, ``z = transform(params, a)``:

==============================  ===============================================  ===========
function                        what it returns, one sample                      equation
==============================  ===============================================  ===========
``init(key, in_shape, dtype)``  ``(params, out_shape)``
``transform(params, x)``        ``z``                                            forward
``carry(params, x, delta)``     ``∂C/∂x`` from ``δ = ∂C/∂z``: the error's        BP2
                                transport to the layer below
``grads(params, x, delta)``     ``∂C/∂params`` from ``δ``, shaped like params    BP3/BP4
``activation``                  ``σ`` with its backward step (identity by
                                default), applied to ``z``
==============================  ===============================================  ===========

The network applies ``σ``'s backward step to what ``carry`` returns (BP2's ``⊙ σ'(z)``), so a
layer never differentiates its activation itself.

Every reduction over a batch has a default built from ``grads`` (its ``jax.vmap``): the summed
gradient, per-sample gradients, their squared norms, the sum of their squares, their Gram matrix,
a weighted sum (clipping), and the curvature quantities from columns carried back by BP2. A layer
overrides any of them with a faster exact contraction of its own (Dense: ``Dᵀ A``,
``‖δ‖²(‖a‖²+1)``, ``(D⊙D)ᵀ(A⊙A)``); the defaults hold for any layer whose ``grads`` is right, so
a new layer is correct first and fast where it chooses. ``grads`` is linear in ``delta``
(``∂C/∂θ = Jᵀδ``), which is what makes the weighted sum the gradient of the reweighted deltas.

Shapes: ``x`` is one sample of the layer's input shape, ``delta`` one of its output shape; in the
batch functions ``X`` and ``D`` carry a leading batch axis ``m``, and the carried-back columns
``Dc`` of the curvature quantities a trailing axis ``c``: ``(m, *out_shape, c)``.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.activations import Activation, get_activation, identity

Array = jax.Array


def _flat(tree: Any) -> Array:
    """A pytree's leaves as one vector (an empty one for no leaves)."""
    leaves = [jnp.ravel(leaf) for leaf in jax.tree.leaves(tree)]
    return jnp.concatenate(leaves) if leaves else jnp.zeros((0,))


def _total(trees: Any) -> Array:
    """The sum over the leading axis of every leaf."""
    return jax.tree.map(lambda leaf: jnp.sum(leaf, axis=0), trees)


class Layer:
    """A layer type: subclass it and write ``init``, ``transform``, ``carry`` and ``grads``.

    Instances are values: two layers are equal (and hash alike) when they are of the same class
    with equal attributes, so keep the attributes hashable (numbers, strings, tuples,
    activations). The base ``__init__`` takes the activation; a subclass with options of its own
    stores them as attributes.

    Example (the issue's ``Scale``, ``z = γ ⊙ x + β``)::

        class Scale(jbp.Layer):
            def init(self, key, in_shape, dtype):
                return (jnp.ones(in_shape, dtype), jnp.zeros(in_shape, dtype)), in_shape
            def transform(self, params, x):
                gamma, beta = params
                return gamma * x + beta
            def carry(self, params, x, delta):
                return params[0] * delta
            def grads(self, params, x, delta):
                return (delta * x, delta)
    """

    def __init__(self, activation: "Activation | str | None" = None):
        self.activation = identity if activation is None else get_activation(activation)

    # --- the protocol: one sample

    def init(self, key: Array, in_shape: tuple, dtype: Any) -> tuple[Any, tuple]:
        """``(params, out_shape)`` for one sample of ``in_shape``; ``()`` params for none."""
        raise NotImplementedError(f"{type(self).__name__} must define init(key, in_shape, dtype)")

    def transform(self, params: Any, x: Array) -> Array:
        """``z`` for one sample ``x``."""
        raise NotImplementedError(f"{type(self).__name__} must define transform(params, x)")

    def carry(self, params: Any, x: Array, delta: Array) -> Array:
        """BP2's transport: ``∂C/∂x`` from ``δ = ∂C/∂z``, one sample."""
        raise NotImplementedError(f"{type(self).__name__} must define carry(params, x, delta)")

    def grads(self, params: Any, x: Array, delta: Array) -> Any:
        """BP3/BP4: ``∂C/∂params`` from ``δ``, one sample, shaped like ``params``."""
        raise NotImplementedError(f"{type(self).__name__} must define grads(params, x, delta)")

    # --- what the network asks of a layer besides the protocol

    def shapes(self, in_shape: tuple, dtype: Any) -> tuple[Any, tuple]:
        """``(params' shapes, out_shape)`` without computing anything: ``init`` under
        ``jax.eval_shape``. A layer may answer directly (Dense does)."""
        return _shapes(self, tuple(in_shape), str(jnp.dtype(dtype)))

    def decayed(self, params: Any) -> Any:
        """A pytree of booleans shaped like ``params``: the leaves the L2 penalty (``l2=``) touches.
        By default every array of two axes or more (weight matrices and kernels, never biases or
        per-feature scales): the rule the optimizers' weight decay masks by (:mod:`jbp.optimizers`),
        so that the two agree; Dense's ``W``, never ``b``."""
        return jax.tree.map(lambda leaf: jnp.ndim(leaf) >= 2, params)

    def transport(self, params: Any) -> Any:
        """What BP2 carries the error through, which a feedback rule replaces (:mod:`jbp.feedback`):
        all of ``params`` by default, Dense's ``W``."""
        return params

    def with_transport(self, params: Any, transport: Any) -> Any:
        """``params`` with their transport replaced (the inverse of :meth:`transport`)."""
        del params
        return transport

    # --- reductions over a batch: defaults from vmap(grads); override with a faster contraction

    def per_example_grads(self, params: Any, X: Array, D: Array) -> Any:
        """Every sample's own gradient, a leading batch axis on every leaf."""
        return jax.vmap(self.grads, in_axes=(None, 0, 0))(params, X, D)

    def batch_grads(self, params: Any, X: Array, D: Array) -> Any:
        """``Σ_i grads(params, x_i, δ_i)``."""
        return _total(self.per_example_grads(params, X, D))

    def weighted_grads(self, params: Any, X: Array, D: Array, weights: Array) -> Any:
        """``Σ_i w_i grads(params, x_i, δ_i)``: the batch gradient of the reweighted deltas, since
        ``grads`` is linear in ``δ`` (clipping)."""
        return self.batch_grads(params, X, weights.reshape((-1,) + (1,) * (D.ndim - 1)) * D)

    def per_example_sq_norms(self, params: Any, X: Array, D: Array) -> Array:
        """``‖grads(params, x_i, δ_i)‖²`` over all of the layer's parameters, shape ``(m,)``."""
        per_sample = self.per_example_grads(params, X, D)
        return sum((jnp.sum(leaf.reshape(leaf.shape[0], -1) ** 2, axis=1) for leaf in jax.tree.leaves(per_sample)),
                   jnp.zeros(X.shape[0], D.dtype))

    def sum_grad_squared(self, params: Any, X: Array, D: Array) -> Any:
        """``Σ_i g_i ⊙ g_i``, shaped like ``params``."""
        return _total(jax.tree.map(jnp.square, self.per_example_grads(params, X, D)))

    def gram(self, params: Any, X: Array, D: Array) -> Array:
        """``⟨g_i, g_j⟩`` over this layer's parameters, shape ``(m, m)``."""
        flat = jax.vmap(_flat)(self.per_example_grads(params, X, D))
        return flat @ flat.T

    def _column_grads(self, params: Any, X: Array, Dc: Array) -> Any:
        """``grads`` of every sample and every carried-back column: leaves ``(m, c, *leaf)``."""
        per_column = jax.vmap(self.grads, in_axes=(None, None, -1))
        return jax.vmap(per_column, in_axes=(None, 0, 0))(params, X, Dc)

    def diag_ggn(self, params: Any, X: Array, Dc: Array) -> Any:
        """``Σ_i Σ_c grads(x_i, Δ_ic)²``, shaped like ``params`` (the caller divides by ``m·c``)."""
        return jax.tree.map(lambda leaf: jnp.sum(leaf**2, axis=(0, 1)), self._column_grads(params, X, Dc))

    def kron_factors(self, params: Any, X: Array, Dc: Array) -> tuple[Array, Array]:
        """``(A, G)`` summed over the batch (the caller divides ``A`` by ``m``, ``G`` by ``m·c``).

        A layer without Kronecker structure gets its whole curvature block: ``A = [[m]]`` and
        ``G = Σ_i Σ_c g_ic g_icᵀ`` over its parameters flattened in ``jax.tree.leaves`` order,
        so that ``kron(G, A)`` is the block itself, exactly (memory: the parameter count
        squared). A layer with no parameters has empty factors."""
        columns = self._column_grads(params, X, Dc)
        flat = jax.vmap(jax.vmap(_flat))(columns)  # (m, c, P)
        flat = flat.reshape(-1, flat.shape[-1]).astype(Dc.dtype)
        return jnp.full((1, 1), X.shape[0], Dc.dtype), flat.T @ flat

    # --- value semantics

    def _fields(self) -> tuple:
        return tuple(sorted(vars(self).items()))

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        fields = [f"{name}={value.name if isinstance(value, Activation) else repr(value)}"
                  for name, value in self._fields() if not (name == "activation" and value == identity)]
        return f"{type(self).__name__}({', '.join(fields)})"


@functools.lru_cache(maxsize=4096)
def _shapes(layer: Layer, in_shape: tuple, dtype: str) -> tuple[Any, tuple]:
    box = []

    def params_of(key):
        params, out_shape = layer.init(key, in_shape, jnp.dtype(dtype))
        box.append(out_shape)
        return params

    params = jax.eval_shape(params_of, jax.random.key(0))
    out_shape = box[0]
    if isinstance(out_shape, (int, np.integer)):
        out_shape = (out_shape,)
    if not isinstance(out_shape, (tuple, list)) or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in out_shape
    ):
        raise ValueError(f"{layer!r}: init must return (params, out_shape) with out_shape a tuple of positive "
                         f"integers, got out_shape {out_shape!r}")
    return params, tuple(int(n) for n in out_shape)
