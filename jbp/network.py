"""The network, and the forward and backward passes for one sample.

Column-vector convention, as in the notes: layer ``l`` has weights ``W^l`` of
shape ``(n_l, n_{l-1})`` and biases ``b^l`` of shape ``(n_l,)``, and

.. math::

    z^l = W^l a^{l-1} + b^l, \\qquad a^l = \\sigma_l(z^l), \\qquad a^0 = x.

:func:`forward` keeps every ``z^l`` and ``a^l``; :func:`backward` runs BP1,
BP2, BP3 and BP4 on them. Both work on one unbatched sample, the readable
truth; ``jbp.batch`` maps them over a batch with ``jax.vmap``. Both are
compiled with ``jax.jit`` (the network description and the loss are static
arguments), once per network and shape.
"""

import functools
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbp.activations import Activation, get_activation, sigmoid
from jbp.checks import check_finite, check_key, check_targets, dtype_of, finite_result
from jbp.feedback import Feedback, carry, check_feedback
from jbp.losses import Loss, check_pair, get_loss, output_delta

Array = jax.Array


class Dense(NamedTuple):
    """The parameters of one dense layer, ``z = W a + b``.

    A ``NamedTuple``, hence a pytree: a tuple of ``Dense`` is what optax
    updates and what ``jax.tree.map`` walks, and gradients have the same type.

    Attributes:
      W: weights, shape ``(n_out, n_in)``; row ``j`` feeds neuron ``j``.
      b: biases, shape ``(n_out,)``.
    """

    W: Array
    b: Array


class MLP(NamedTuple):
    """A static description of a multi-layer perceptron (no arrays).

    Hashable, so it is passed to compiled functions as a static argument.

    Attributes:
      sizes: the width of every layer, input first: ``(n_0, n_1, …, n_L)``.
      activations: one :class:`~jbp.Activation` per layer ``1 … L``.
    """

    sizes: tuple[int, ...]
    activations: tuple[Activation, ...]

    @property
    def depth(self) -> int:
        """The number of layers with parameters, ``L``."""
        return len(self.activations)

    def __repr__(self) -> str:
        names = ", ".join(act.name for act in self.activations)
        return f"MLP(sizes={list(self.sizes)}, activations=[{names}])"


def mlp(
    sizes: Sequence[int],
    hidden: "Activation | str | Sequence[Activation | str]" = sigmoid,
    output: "Activation | str" = sigmoid,
) -> MLP:
    """Describes a multi-layer perceptron.

    Args:
      sizes: layer widths, input first, at least two: ``[784, 30, 10]``.
      hidden: the activation of every hidden layer, or a sequence with one
        activation per hidden layer. Names (``"relu"``) are accepted.
      output: the output layer's activation.

    Returns:
      An :class:`MLP`.

    Raises:
      ValueError, TypeError: for sizes that are not at least two positive
        integers, or activations that are unknown or do not match the number
        of hidden layers.

    Example:
      >>> import jbp
      >>> jbp.mlp([784, 30, 10], hidden=jbp.sigmoid, output=jbp.softmax)
      MLP(sizes=[784, 30, 10], activations=[sigmoid, softmax])
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"sizes must be a sequence of integers, got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(
            f"sizes needs the input and output widths at least, got {list(sizes)}"
        )
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"every size must be a positive integer, got {list(sizes)}")
    n_hidden = len(sizes) - 2
    if isinstance(hidden, (Activation, str)):
        hidden = [hidden] * n_hidden
    elif not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be an activation or a sequence of them, got {hidden!r}")
    elif len(hidden) != n_hidden:
        raise ValueError(
            f"sizes {list(sizes)} have {n_hidden} hidden layers, "
            f"but {len(hidden)} hidden activations were given"
        )
    activations = tuple(get_activation(act) for act in hidden) + (get_activation(output),)
    for l, (activation, width) in enumerate(zip(activations, sizes[1:]), 1):
        check_activation(activation, int(width), l)
    return MLP(tuple(int(size) for size in sizes), activations)


@functools.lru_cache(maxsize=1024)
def _activation_shapes(activation: Activation, width: int, dtype: str) -> "str | None":
    """What is wrong with an activation's shapes on a vector of ``width``, or None.

    Shapes only (``jax.eval_shape``): nothing is computed, and each
    (activation, width) is looked at once."""
    z = jax.ShapeDtypeStruct((width,), jnp.dtype(dtype))
    try:
        a = jax.eval_shape(activation.fn, z)
        step = jax.eval_shape(activation.backward, z, z, z)
    except Exception as err:  # a user's function may fail in any way; report it, do not guess
        return f"it fails on a vector of shape ({width},): {type(err).__name__}: {err}"
    for what, out in (("fn(z)", a), ("backward(z, a, g)", step)):
        if getattr(out, "shape", None) != (width,) or not jnp.issubdtype(out.dtype, jnp.floating):
            return (
                f"{what} returns {getattr(out, 'shape', type(out).__name__)} "
                f"{getattr(out, 'dtype', '')} for z of shape ({width},); expected shape ({width},), floating point"
            )
    return None


def check_activation(activation: Activation, width: int, layer: int) -> None:
    """Refuses an activation (one of the user's, typically) whose ``fn`` or
    ``backward`` does not map a vector of the layer's width to one of the same
    shape: a wrong shape would otherwise broadcast into gradients of the
    wrong shape, silently."""
    problem = _activation_shapes(activation, width, str(jnp.result_type(float)))
    if problem:
        raise ValueError(f"layer {layer}: activation {activation.name!r}: {problem}")


def init(
    net: MLP,
    key: Array,
    *,
    dtype: Any = None,
    weight_init: Any = None,
) -> tuple[Dense, ...]:
    """Draws the parameters of a network.

    Weights are LeCun normal (a truncated normal of variance ``1/n_in``, the
    scale Nielsen's ``network2.py`` uses), biases zero. The key is split once
    per layer.

    Args:
      net: the network description.
      key: a ``jax.random.key``.
      dtype: the parameters' dtype; the default float (``float32``, or
        ``float64`` with ``jax_enable_x64``) when ``None``.
      weight_init: any ``jax.nn.initializers`` initializer, called with
        ``(key, (n_out, n_in), dtype)``; mind that the input axis is ``-1``.

    Returns:
      A tuple of :class:`Dense`, one per layer.

    Example:
      >>> import jax, jbp
      >>> params = jbp.init(jbp.mlp([3, 5, 2]), jax.random.key(0))
      >>> [layer.W.shape for layer in params]
      [(5, 3), (2, 5)]
    """
    _check_net(net)
    check_key(key)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    if weight_init is None:
        weight_init = jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
    keys = jax.random.split(key, net.depth)
    return tuple(
        Dense(W=weight_init(k, (n_out, n_in), dtype), b=jnp.zeros((n_out,), dtype))
        for k, n_in, n_out in zip(keys, net.sizes[:-1], net.sizes[1:])
    )


class Trace(NamedTuple):
    """Everything the forward pass computed for one sample.

    Attributes:
      zs: ``(z^1, …, z^L)``, the weighted inputs.
      activations: ``(a^0, a^1, …, a^L)`` with ``a^0 = x``; one longer than
        ``zs``, as in Nielsen's ``backprop``.
    """

    zs: tuple[Array, ...]
    activations: tuple[Array, ...]


def forward(net: MLP, params: Sequence[Dense], x: Array) -> Trace:
    """The forward pass for one sample, keeping every ``z`` and ``a``.

    .. math:: z^l = W^l a^{l-1} + b^l, \\qquad a^l = \\sigma(z^l)

    Args:
      net: the network description.
      params: one :class:`Dense` per layer, ``W^l`` of shape
        ``(n_l, n_{l-1})``.
      x: one sample, shape ``(n_0,)``; cast to the parameters' dtype. For a
        batch, ``jax.vmap`` this function or use the functions of ``jbp``'s
        batch module.

    Returns:
      A :class:`Trace`; ``trace.activations[-1]`` is the network's output.

    Raises:
      ValueError: if ``params`` do not fit ``net`` or ``x`` is not one sample
        of width ``n_0`` (the message names the layer and both shapes), or
        ``x`` holds NaN or infinity.
      TypeError: for values that are not real numbers.
      FloatingPointError: if the pass overflows.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([2, 3, 1])
      >>> params = jbp.init(net, jax.random.key(0))
      >>> trace = jbp.forward(net, params, jnp.array([0.5, -1.0]))
      >>> [a.shape for a in trace.activations]
      [(2,), (3,), (1,)]
    """
    check_params(net, params)
    trace = _forward(net, params, as_sample(net, params, x, "x", net.sizes[0]))
    return finite_result(trace, "forward", params, x)


@partial(jax.jit, static_argnames=("net",))
def _forward(net: MLP, params: Sequence[Dense], x: Array) -> Trace:
    """z^l = W^l a^{l-1} + b^l and a^l = σ(z^l), layer after layer, keeping both."""
    zs, activations = [], [x]
    for layer, sigma in zip(params, net.activations):
        # z = W a + b, written a @ Wᵀ: the same numbers for one sample, and under vmap a product whose
        # result is laid out sample-first, (m, n_l), as every pass reads it: no transposes (in bfloat16
        # and float16, XLA otherwise transposes the (n_l, m) result of W @ A and the step runs slower).
        z = activations[-1] @ layer.W.T + layer.b
        zs.append(z)
        activations.append(sigma.fn(z))
    return Trace(tuple(zs), tuple(activations))


def deltas(
    net: MLP, params: Sequence[Dense], trace: Trace, y: Array, loss: "Loss | str", feedback: "Feedback | None" = None
) -> tuple[Array, ...]:
    """BP1 then BP2: the error ``δ^l = ∂C/∂z^l`` of every layer, one sample.

    .. math::

        \\delta^L = \\nabla_a C \\odot \\sigma'(z^L) \\quad \\text{(BP1)}, \\qquad
        \\delta^l = ((W^{l+1})^T \\delta^{l+1}) \\odot \\sigma'(z^l) \\quad \\text{(BP2)}

    ``(W^{l+1})^T δ^{l+1}`` moves the error back through the weights; the
    layer's backward step (``⊙ σ'(z^l)``, or softmax's Jacobian product) moves
    it back through the activation.

    Args:
      net, params: the network and its parameters.
      trace: what :func:`forward` returned for this sample.
      y: the target, shape ``(n_L,)``.
      loss: the per-sample cost, a :class:`~jbp.Loss` or its name.
      feedback: what carries the error back in BP2 (:mod:`jbp.feedback`);
        backpropagation's ``(W^{l+1})^T`` by default.

    Returns:
      ``(δ^1, …, δ^L)``, ``δ^l`` of shape ``(n_l,)``.

    Not compiled by itself: it is the step :func:`backward` and the batch
    functions compile, and what to ``jax.vmap`` for per-sample deltas.
    """
    check_params(net, params)
    _check_trace(net, trace)
    feedback = check_feedback(net, params, feedback)
    y, loss = as_sample(net, params, y, "y", net.sizes[-1]), get_loss(loss)
    output = net.activations[-1]
    delta = output_delta(output, loss, trace.zs[-1], trace.activations[-1], y)  # BP1
    return backpropagate(net, params, trace, delta, feedback)


def backpropagate(
    net: MLP, params: Sequence[Dense], trace: Trace, delta: Array, feedback: "Feedback | None" = None
) -> tuple[Array, ...]:
    """BP2 from a given output error: ``(δ^1, …, δ^L)`` with ``δ^L = delta``.

    .. math:: \\delta^l = ((W^{l+1})^T \\delta^{l+1}) \\odot \\sigma'(z^l)

    What :func:`deltas` runs after BP1, and what carries any other vector
    at the output back through the network: a column of the loss's Hessian
    factor (curvature, :mod:`jbp.quantities`) is carried exactly as an error
    is. With a ``feedback`` rule, the rule's carrier replaces
    ``(W^{l+1})^T δ^{l+1}`` (:func:`jbp.feedback.carry`). One sample,
    unchecked; ``jax.vmap`` it over samples or columns.
    """
    errors, output_error = [delta], delta
    layers_back = zip(range(1, net.depth), params[1:], trace.zs[:-1], trace.activations[1:-1], net.activations[:-1])
    for l, layer_above, z, a, sigma in reversed(list(layers_back)):
        # BP2: (W^{l+1})ᵀ δ^{l+1}, written δ @ W inside carry: the same numbers for one vector, and
        # under vmap (samples, or columns of a Hessian factor) a product that needs no transpose.
        delta = sigma.backward(z, a, carry(feedback, l, layer_above.W, delta, output_error))
        errors.append(delta)
    return tuple(reversed(errors))


def backward(
    net: MLP, params: Sequence[Dense], trace: Trace, y: Array, loss: Loss, feedback: "Feedback | None" = None
) -> tuple[tuple[Dense, ...], tuple[Array, ...]]:
    """Backpropagation for one sample: the deltas, then the gradients.

    .. math::

        \\frac{\\partial C}{\\partial b^l} = \\delta^l \\quad \\text{(BP3)}, \\qquad
        \\frac{\\partial C}{\\partial W^l} = \\delta^l (a^{l-1})^T \\quad \\text{(BP4)}

    with the deltas from BP1 and BP2 (:func:`deltas`).

    Args:
      net: the network description.
      params: its parameters, one :class:`Dense` per layer.
      trace: what :func:`forward` returned for this sample.
      y: the target, shape ``(n_L,)``; cast to the parameters' dtype.
      loss: the per-sample cost, a :class:`~jbp.Loss` or its name.
      feedback: the rule that carries errors back in BP2 (backprop by
        default); with another rule, ``grads`` is its update direction.

    Returns:
      ``(grads, deltas)``: ``grads`` a tuple of :class:`Dense` shaped like
      ``params`` (``∂C/∂W^l``, ``∂C/∂b^l``), ``deltas`` the tuple
      ``(δ^1, …, δ^L)``.

    Raises:
      ValueError, TypeError, FloatingPointError: as :func:`forward`, for
        ``y``; also a target the loss cannot take, or an output activation
        on whose range the loss is undefined.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([2, 3, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> trace = jbp.forward(net, params, jnp.array([0.5, -1.0]))
      >>> grads, deltas = jbp.backward(net, params, trace, jnp.array([0.0, 1.0]),
      ...                              jbp.softmax_cross_entropy)
      >>> grads[0].W.shape, deltas[1].shape
      ((3, 2), (2,))
    """
    check_params(net, params)
    _check_trace(net, trace)
    y, loss = as_sample(net, params, y, "y", net.sizes[-1]), get_loss(loss)
    check_pair(net.activations[-1], loss)
    check_targets(y, loss)
    feedback = check_feedback(net, params, feedback)
    return finite_result(_backward(net, params, trace, y, loss, feedback), "backward", params, trace, y)


@partial(jax.jit, static_argnames=("net", "loss"))
def _backward(net, params, trace, y, loss, feedback=None):
    """BP1 and BP2 (deltas), then BP3 and BP4 for every layer."""
    errors = deltas(net, params, trace, y, loss, feedback)
    grads = tuple(
        Dense(W=jnp.outer(delta, a_prev), b=delta)  # BP4, BP3
        for delta, a_prev in zip(errors, trace.activations[:-1])
    )
    return grads, errors


# --- checks: they run on shapes only, so they cost nothing in compiled code.


def _check_net(net: Any) -> None:
    if not isinstance(net, MLP):
        raise TypeError(f"expected a network from jbp.mlp(...), got {type(net).__name__}")


def check_params(net: MLP, params: Any) -> None:
    """Raises unless ``params`` is one ``(W, b)`` pair per layer of ``net``.

    The message names the first layer that does not fit (counted from 1, as
    in ``W^1``) with the shape expected and the shape found.
    """
    _check_net(net)
    if not isinstance(params, Sequence) or isinstance(params, Dense):
        raise TypeError(
            f"params must be a tuple of jbp.Dense, one per layer, got {type(params).__name__}"
        )
    if len(params) != net.depth:
        raise ValueError(
            f"params have {len(params)} layers, the network {list(net.sizes)} has {net.depth}"
        )
    for l, (layer, n_in, n_out) in enumerate(zip(params, net.sizes[:-1], net.sizes[1:]), 1):
        if not (isinstance(layer, tuple) and len(layer) == 2):
            raise TypeError(f"layer {l}: expected jbp.Dense(W, b), got {type(layer).__name__}")
        for name, value, shape in (("W", layer[0], (n_out, n_in)), ("b", layer[1], (n_out,))):
            found = jnp.shape(value)
            if found != shape:
                raise ValueError(
                    f"layer {l}: {name} has shape {found}, expected {shape} "
                    f"for the network {list(net.sizes)}"
                )
            if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
                raise TypeError(
                    f"layer {l}: {name} must be floating point, got {jnp.result_type(value)}"
                )
            check_finite(value, f"layer {l}: {name}")


def as_sample(net: MLP, params: Sequence[Dense], value: Any, name: str, width: int) -> Array:
    """Checks that ``value`` is one finite sample of ``width`` numbers; casts it to the params' dtype."""
    dtype_of(value, name)
    shape = jnp.shape(value)
    if shape != (width,):
        hint = " (a batch? use jax.vmap or the batch functions)" if len(shape) == 2 else ""
        raise ValueError(
            f"{name} must be one sample of shape ({width},) for the network "
            f"{list(net.sizes)}, got shape {shape}{hint}"
        )
    check_finite(value, name)
    return jnp.asarray(value, dtype=params[0].W.dtype)


def _check_trace(net: MLP, trace: Any) -> None:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be what jbp.forward returned, got {type(trace).__name__}")
    if len(trace.zs) != net.depth or len(trace.activations) != net.depth + 1:
        raise ValueError(
            f"trace has {len(trace.zs)} layers, the network {list(net.sizes)} has {net.depth}"
        )
    for l, (z, width) in enumerate(zip(trace.zs, net.sizes[1:]), 1):
        if jnp.shape(z) != (width,):
            raise ValueError(
                f"trace layer {l}: z has shape {jnp.shape(z)}, expected ({width},) "
                "(a trace of one sample from jbp.forward)"
            )
