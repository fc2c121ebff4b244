"""Batches: the per-sample passes under ``jax.vmap``, reduced as Coursera does.

For ``m`` samples, Coursera's ex4 accumulates ``Δ^l += δ^l (a^{l-1})^T`` over
the samples and then forms

.. math::

    J = \\frac{1}{m} \\sum_i C(x_i, y_i) + \\frac{\\lambda}{2m} \\sum_l \\|W^l\\|^2,
    \\qquad
    D^l = \\frac{1}{m} \\Delta^l + \\frac{\\lambda}{m} W^l

(biases are not penalized). Here the per-sample deltas come from
``jax.vmap`` of :func:`jbp.network.deltas`, stacked as a matrix of shape
``(m, n_l)``, and each layer reduces them with its own contraction
(:mod:`jbp.layers`): for a dense layer the sum ``Σ_i δ_i a_i^T`` is ``δ^T A``, a
single matrix product, never a stack of ``m`` outer products summed afterwards
(which XLA does not turn into a matmul). The L2 term touches the parameters
each layer marks as decayed (a dense layer's ``W``, never ``b``).

Per-example gradients and their norms come from the same vmapped deltas: for
dense layers the norm of sample ``i``'s whole gradient is
``sqrt(Σ_l ‖δ_i^l‖² (‖a_i^{l-1}‖² + 1))``, because ``‖δ a^T‖_F = ‖δ‖ ‖a‖``;
no outer product is formed.

Every function here checks the shapes of its arguments before anything is
compiled, then runs one compiled program per network, loss and shape.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.checks import check_finite, check_targets, dtype_of, finite_result, labels_to_targets
from jbp.feedback import Feedback, check_feedback
from jbp.losses import Loss, check_pair, get_loss, output_cost
from jbp.network import Dense, Network, Trace, _deltas, _forward, _shape_text, check_params, params_dtype

Array = jax.Array


def forward_costs(
    net: Network, params: Sequence[Any], X: Array, Y: Array, loss: Loss
) -> tuple[Trace, Array]:
    """The forward pass and the cost ``C(x_i, y_i)`` of every sample, batch axis first.

    Uncompiled and unchecked: a building block of the compiled functions."""
    traces = jax.vmap(partial(_forward, net, params))(X)
    costs = jax.vmap(partial(output_cost, net.activations[-1], loss))(
        traces.zs[-1], traces.activations[-1], Y
    )
    return traces, costs


def batch_passes(
    net: Network, params: Sequence[Any], X: Array, Y: Array, loss: Loss, feedback: "Feedback | None" = None
) -> tuple[Trace, tuple[Array, ...], Array]:
    """Forward and BP1/BP2 for every sample: traces, deltas and costs, each with a leading batch axis."""
    traces, costs = forward_costs(net, params, X, Y, loss)
    errors = jax.vmap(partial(_deltas, net, params, loss=loss, feedback=feedback))(traces, Y)
    return traces, errors, costs


def decayed_leaves(net: Network, params: Sequence[Any]) -> list:
    """The parameters the L2 penalty and weight decay touch, layer by layer (a dense layer's ``W``)."""
    return [leaf for layer, p in zip(net.layers, params)
            for leaf, decayed in zip(jax.tree.leaves(p), jax.tree.leaves(layer.decayed(p))) if decayed]


def penalty(net: Network, params: Sequence[Any], l2: Array, m: int, regularized: bool) -> Array:
    """The Coursera regularization term ``(λ / 2m) Σ_l ‖W^l‖²`` (over every layer's decayed parameters).

    ``regularized`` is static: with ``λ = 0`` known before compiling, the
    program does not read every weight to multiply the sum by zero."""
    if not regularized:
        return jnp.zeros((), l2.dtype)
    return l2 / (2 * m) * sum(jnp.sum(w**2) for w in decayed_leaves(net, params))


def with_l2(net: Network, params: Sequence[Any], sums: Sequence[Any], divisor: Any, rate: Any) -> tuple:
    """``sum / divisor + rate · θ`` for the decayed parameters ``θ``, ``sum / divisor`` for the rest:
    Coursera's ``D = Δ/m + (λ/m) W`` with ``divisor = m``, ``rate = λ/m``."""
    return tuple(
        jax.tree.map(lambda g, w, decayed: g / divisor + rate * w if decayed else g / divisor, s, p, layer.decayed(p))
        for layer, s, p in zip(net.layers, sums, params)
    )


def layer_sums(net: Network, params: Sequence[Any], inputs: Sequence[Array], errors: Sequence[Array]) -> tuple:
    """``Σ_i grads(θ^l, a_i^{l-1}, δ_i^l)`` for every layer, by each layer's own contraction."""
    return tuple(layer.batch_grads(p, a, d) for layer, p, a, d in zip(net.layers, params, inputs, errors))


def sq_norms(net: Network, params: Sequence[Any], inputs: Sequence[Array], errors: Sequence[Array]) -> Array:
    """``‖g_i‖²`` over every layer's parameters, shape ``(m,)`` (layers without parameters add nothing)."""
    return sum(layer.per_example_sq_norms(p, a, d)
               for layer, p, a, d in zip(net.layers, params, inputs, errors) if jax.tree.leaves(p))


@partial(jax.jit, static_argnames=("net", "loss", "regularized"))
def _loss_and_grads(net, params, X, Y, loss, l2, regularized, feedback=None):
    m = X.shape[0]
    traces, errors, costs = batch_passes(net, params, X, Y, loss, feedback)
    J = jnp.mean(costs) + penalty(net, params, l2, m, regularized)
    sums = layer_sums(net, params, traces.activations[:-1], errors)  # Δ = δᵀ A for a dense layer
    return J, with_l2(net, params, sums, m, l2 / m)  # D = Δ/m + (λ/m) W


@partial(jax.jit, static_argnames=("net", "loss", "regularized"))
def _cost(net, params, X, Y, loss, l2, regularized):
    _, costs = forward_costs(net, params, X, Y, loss)
    return jnp.mean(costs) + penalty(net, params, l2, X.shape[0], regularized)


@partial(jax.jit, static_argnames=("net", "loss"))
def _per_example_grads(net, params, X, Y, loss):
    traces, errors, _ = batch_passes(net, params, X, Y, loss)
    return tuple(layer.per_example_grads(p, a, d)
                 for layer, p, a, d in zip(net.layers, params, traces.activations[:-1], errors))


@partial(jax.jit, static_argnames=("net", "loss"))
def _per_example_grad_norms(net, params, X, Y, loss):
    traces, errors, _ = batch_passes(net, params, X, Y, loss)
    return jnp.sqrt(sq_norms(net, params, traces.activations[:-1], errors))


@partial(jax.jit, static_argnames=("net",))
def _predict(net, params, X):
    return jax.vmap(partial(_forward, net, params))(X).activations[-1]


def loss_and_grads(
    net: Network,
    params: Sequence[Any],
    X: Array,
    Y: Array,
    loss: "Loss | str",
    l2: float = 0.0,
    feedback: "Feedback | None" = None,
) -> tuple[Array, tuple[Dense, ...]]:
    """The regularized batch cost ``J`` and its gradient ``D``, by backpropagation.

    .. math::

        J = \\frac{1}{m} \\sum_{i=1}^m C(x_i, y_i)
            + \\frac{\\lambda}{2m} \\sum_l \\|W^l\\|^2, \\qquad
        \\frac{\\partial J}{\\partial W^l}
            = \\frac{1}{m} \\sum_i \\delta_i^l (a_i^{l-1})^T + \\frac{\\lambda}{m} W^l,
        \\qquad
        \\frac{\\partial J}{\\partial b^l} = \\frac{1}{m} \\sum_i \\delta_i^l

    Args:
      net: the network description.
      params: its parameters, one :class:`~jbp.Dense` per layer.
      X: inputs, shape ``(m, n_0)``, one sample per row.
      Y: targets, shape ``(m, n_L)``, or integer class labels, shape
        ``(m,)`` (one-hot over the outputs; 0/1 for a single output).
      loss: the per-sample cost, a :class:`~jbp.Loss` or its name.
      l2: ``λ ≥ 0``, the L2 penalty on the weights (not the biases).
      feedback: the rule that carries the errors back in BP2
        (:mod:`jbp.feedback`); with any rule but backprop, ``grads`` is the
        rule's update direction (BP1, BP3, BP4 and the L2 term unchanged).

    ``X`` and ``Y`` are cast to the parameters' dtype (integers and booleans
    included).

    Returns:
      ``(J, grads)``: a scalar, and a tuple of :class:`~jbp.Dense` shaped like
      ``params``, ready for ``optax``.

    Raises:
      ValueError: when a shape does not fit the network (naming what was
        expected and what came), for NaN or infinity in the inputs (how many
        rows, the first), targets the loss cannot take, labels outside the
        classes, a negative ``l2``, or an output activation on whose range
        the loss is undefined.
      TypeError: for values that are not real numbers.
      FloatingPointError: when the result overflows to NaN or infinity.

    Every check runs before anything is compiled, and only on concrete
    arrays: called inside ``jax.jit`` it checks shapes alone.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 5, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> X, Y = jnp.ones((4, 3)), jnp.tile(jnp.array([1.0, 0.0]), (4, 1))
      >>> J, grads = jbp.loss_and_grads(net, params, X, Y, jbp.softmax_cross_entropy, l2=0.1)
      >>> J.shape, grads[1].W.shape
      ((), (2, 5))
    """
    loss = get_loss(loss)
    X, Y = check_batch(net, params, X, Y, loss)
    feedback = check_feedback(net, params, feedback)
    result = _loss_and_grads(net, params, X, Y, loss, *as_l2(l2, params), feedback)
    return finite_result(result, "loss_and_grads", params, X, Y, l2)


def cost(
    net: Network,
    params: Sequence[Any],
    X: Array,
    Y: Array,
    loss: "Loss | str",
    l2: float = 0.0,
) -> Array:
    """The regularized batch cost ``J`` alone (the forward pass only).

    Arguments as in :func:`loss_and_grads`; returns the same ``J``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([2, 2], hidden=(), output=jbp.identity)
      >>> params = (jbp.Dense(W=jnp.eye(2), b=jnp.zeros(2)),)
      >>> float(jbp.cost(net, params, jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]),
      ...                jbp.squared_error))
      2.5
    """
    loss = get_loss(loss)
    X, Y = check_batch(net, params, X, Y, loss)
    return finite_result(_cost(net, params, X, Y, loss, *as_l2(l2, params)),
                         "cost", params, X, Y, l2)


def per_example_grads(
    net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str"
) -> tuple[Dense, ...]:
    """The gradient of every sample's own cost ``C(x_i, y_i)``.

    .. math:: \\frac{\\partial C_i}{\\partial W^l} = \\delta_i^l (a_i^{l-1})^T, \\qquad
              \\frac{\\partial C_i}{\\partial b^l} = \\delta_i^l

    No ``1/m`` and no L2 term: their mean over the batch is the gradient of
    :func:`loss_and_grads` with ``l2=0``. Memory grows as ``m`` times the
    parameters; for norms alone use :func:`per_example_grad_norms`.

    Args:
      net, params, X, Y, loss: as in :func:`loss_and_grads`.

    Returns:
      A tuple of :class:`~jbp.Dense` with a leading batch axis: ``W`` of shape
      ``(m, n_l, n_{l-1})``, ``b`` of shape ``(m, n_l)``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 5, 2])
      >>> params = jbp.init(net, jax.random.key(0))
      >>> g = jbp.per_example_grads(net, params, jnp.ones((4, 3)), jnp.zeros((4, 2)),
      ...                           jbp.binary_cross_entropy)
      >>> g[0].W.shape, g[0].b.shape
      ((4, 5, 3), (4, 5))
    """
    loss = get_loss(loss)
    X, Y = check_batch(net, params, X, Y, loss)
    result = _per_example_grads(net, params, X, Y, loss)
    return finite_result(result, "per_example_grads", params, X, Y)


def per_example_grad_norms(
    net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str"
) -> Array:
    """The L2 norm of every sample's whole gradient, without forming it.

    .. math:: \\|\\nabla C_i\\| = \\Big(\\sum_l \\|\\delta_i^l\\|^2
              \\big(\\|a_i^{l-1}\\|^2 + 1\\big)\\Big)^{1/2}

    since ``‖δ a^T‖_F = ‖δ‖ ‖a‖`` and the bias gradient is ``δ`` itself: the
    cost is that of the deltas alone, with no ``m × n_l × n_{l-1}`` array.

    Args:
      net, params, X, Y, loss: as in :func:`loss_and_grads`.

    Returns:
      Shape ``(m,)``: the norms of the gradients :func:`per_example_grads`
      returns, each over all layers' ``W`` and ``b``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 5, 2])
      >>> params = jbp.init(net, jax.random.key(0))
      >>> jbp.per_example_grad_norms(net, params, jnp.ones((4, 3)), jnp.zeros((4, 2)),
      ...                            jbp.binary_cross_entropy).shape
      (4,)
    """
    loss = get_loss(loss)
    X, Y = check_batch(net, params, X, Y, loss)
    result = _per_example_grad_norms(net, params, X, Y, loss)
    return finite_result(result, "per_example_grad_norms", params, X, Y)


def predict(net: Network, params: Sequence[Any], X: Array) -> Array:
    """The network's outputs ``a^L`` for a batch, shape ``(m, n_L)``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 5, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> jbp.predict(net, params, jnp.ones((4, 3))).sum(axis=1).round(6).tolist()
      [1.0, 1.0, 1.0, 1.0]
    """
    check_params(net, params)
    X = _as_matrix(net, params, X, "X", net.input_shape)
    return finite_result(_predict(net, params, X), "predict", params, X)


# --- checks: shapes only, before anything is compiled.


def _as_matrix(net: Network, params: Sequence[Any], value: Any, name: str, sample: tuple) -> Array:
    dtype = dtype_of(value, name)
    shape = jnp.shape(value)
    if name == "Y" and len(shape) == 1 and len(sample) == 1 and jnp.issubdtype(dtype, jnp.integer) and shape[0] > 0:
        return labels_to_targets(value, sample[0], params_dtype(params))
    if shape[1:] != sample or not shape:
        hint = " (one sample? add a batch axis, or use jbp.forward)" if shape == sample else ""
        raise ValueError(
            f"{name} must have shape {_shape_text(('m', *sample))} for the network {net.name}, "
            f"got shape {shape}{hint}"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: shape {shape}; expected m ≥ 1 rows")
    check_finite(value, name)
    return jnp.asarray(value, dtype=params_dtype(params))


def check_batch(
    net: Network, params: Sequence[Any], X: Any, Y: Any, loss: "Loss | None" = None
) -> tuple[Array, Array]:
    """Checks ``params``, ``X`` of shape ``(m, *input_shape)`` and ``Y`` of ``(m, *output_shape)``.

    ``Y`` may also be integer class labels of shape ``(m,)``. Concrete values
    are checked too: no NaN or infinity, targets the ``loss`` can take, an
    output activation on whose range the ``loss`` is defined.

    Returns ``X`` and ``Y`` as arrays of the parameters' dtype.
    """
    check_params(net, params)
    X = _as_matrix(net, params, X, "X", net.input_shape)
    Y = _as_matrix(net, params, Y, "Y", net.output_shape)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows, got X {X.shape} and Y {Y.shape}"
        )
    if loss is not None:
        check_pair(net.activations[-1], loss)
        check_targets(Y, loss)
    return X, Y


def as_l2(l2: Any, params: Sequence[Any]) -> tuple[Array, bool]:
    """``λ`` as an array, and whether it may be nonzero (a traced ``λ`` may)."""
    dtype_of(l2, "l2")
    if jnp.ndim(l2) != 0:
        raise ValueError(f"l2 must be a scalar, got shape {jnp.shape(l2)}")
    traced = isinstance(l2, jax.core.Tracer)
    if not traced and not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number ≥ 0, got {l2}")
    regularized = traced or bool(l2 != 0)
    return jnp.asarray(l2, dtype=params_dtype(params)), regularized
