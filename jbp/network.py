"""The network, a sequence of layers, and the forward and backward passes for one sample.

A network is a sequence of layers (:mod:`jbp.layers`), each ``z^l = transform^l(a^{l-1})``,
``a^l = σ_l(z^l)``, ``a^0 = x``. For dense layers, in the column-vector convention of the notes
(``W^l`` of shape ``(n_l, n_{l-1})``, ``b^l`` of shape ``(n_l,)``),

.. math::

    z^l = W^l a^{l-1} + b^l, \\qquad a^l = \\sigma_l(z^l), \\qquad a^0 = x.

:func:`forward` is a fold over the layers that keeps every ``z^l`` and ``a^l``; :func:`backward`
runs BP1, then BP2 as a reverse fold (each layer's ``carry`` moves the error back through it, its
activation's backward step through ``σ``), then BP3 and BP4 (each layer's ``grads``). Both work on
one unbatched sample, the readable truth; ``jbp.batch`` maps them over a batch with ``jax.vmap``.
Both are compiled with ``jax.jit`` (the network description and the loss are static arguments),
once per network and shape. The public functions check their arguments at the door; the
functions with a leading underscore, which the batch functions compose, never check again.
"""

import copy
import functools
from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbp.activations import Activation, get_activation, sigmoid
from jbp.checks import check_finite, check_key, check_targets, dtype_of, finite_result, params_dtype
from jbp.feedback import Feedback, carry, check_feedback
from jbp.layers import Dense, DenseLayer, Layer, dense
from jbp.losses import Loss, check_pair, get_loss, output_delta

Array = jax.Array

__all__ = ["MLP", "Dense", "Network", "Trace", "backpropagate", "backward", "deltas", "forward", "init", "mlp", "network"]


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


class Network:
    """A static description of a network: its layers and the shape of one input sample (no arrays).

    Hashable, so it is passed to compiled functions as a static argument. Build one with
    :func:`network` (or :func:`mlp` for dense layers alone).

    Attributes:
      layers: the layers, input side first.
      input_shape: one sample's shape.
      in_shapes: each layer's input shape; ``out_shapes``: each layer's output shape.
      activations: each layer's activation.
    """

    def __init__(self, layers: Sequence[Layer], input_shape: Sequence[int]):
        self.layers, self.input_shape = tuple(layers), tuple(int(n) for n in input_shape)
        shapes, dtype = [self.input_shape], jnp.result_type(float)
        for l, layer in enumerate(self.layers, 1):
            try:
                _, out_shape = layer.shapes(shapes[-1], dtype)
            except Exception as err:  # a user's layer may fail in any way; name it
                raise ValueError(f"layer {l} ({layer!r}) does not take an input of shape {_shape_text(shapes[-1])}: "
                                 f"{type(err).__name__}: {err}") from None
            check_activation(layer.activation, out_shape, l)
            shapes.append(tuple(out_shape))
        self.in_shapes, self.out_shapes = tuple(shapes[:-1]), tuple(shapes[1:])

    @property
    def depth(self) -> int:
        """The number of layers, ``L``."""
        return len(self.layers)

    @property
    def activations(self) -> tuple[Activation, ...]:
        return tuple(layer.activation for layer in self.layers)

    @property
    def output_shape(self) -> tuple:
        return self.out_shapes[-1]

    @property
    def name(self) -> str:
        """How messages name the network."""
        return repr(self)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Network) and (self.layers, self.input_shape) == (other.layers, other.input_shape)

    def __hash__(self) -> int:
        return hash((Network, self.layers, self.input_shape))

    def __repr__(self) -> str:
        return f"network({', '.join(map(repr, self.layers))}, input_shape={_shape_text(self.input_shape)})"


class MLP(Network):
    """A multi-layer perceptron: a :class:`Network` of dense layers on vectors.

    Attributes:
      sizes: the width of every layer, input first: ``(n_0, n_1, …, n_L)``.
      activations: one :class:`~jbp.Activation` per layer ``1 … L``.
    """

    def __init__(self, sizes: Sequence[int], activations: Sequence[Activation]):
        super().__init__(tuple(dense(n, a) for n, a in zip(sizes[1:], activations)), (sizes[0],))

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.input_shape[0],) + tuple(layer.units for layer in self.layers)

    @property
    def name(self) -> str:
        return str(list(self.sizes))

    def __repr__(self) -> str:
        names = ", ".join(act.name for act in self.activations)
        return f"MLP(sizes={list(self.sizes)}, activations=[{names}])"


def network(*layers: Layer, input_shape: "int | Sequence[int]") -> Network:
    """A network: the layers in order, and the shape of one input sample.

    Shapes are checked layer by layer from ``input_shape`` before anything is computed (the
    message names the layer). A network of dense layers alone is an :class:`MLP`, equal to the
    one :func:`mlp` describes.

    Args:
      layers: :class:`~jbp.Layer` values: :func:`jbp.dense` or a layer of your own.
      input_shape: one sample's shape, ``(n_0,)`` for a vector (an int is taken as that).

    Example:
      >>> import jbp
      >>> jbp.network(jbp.dense(30, activation=jbp.sigmoid), jbp.dense(10, activation=jbp.softmax),
      ...             input_shape=(784,))
      MLP(sizes=[784, 30, 10], activations=[sigmoid, softmax])
    """
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (int(input_shape),)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence) or not input_shape or not all(
        isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in input_shape
    ):
        raise ValueError(f"input_shape must be a tuple of positive integers, one sample's shape, got {input_shape!r}")
    if not layers:
        raise ValueError("a network needs at least one layer")
    for l, layer in enumerate(layers, 1):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer {l} must be a jbp.Layer (jbp.dense(...) or a subclass of your own), "
                            f"got {type(layer).__name__}")
        if not isinstance(getattr(layer, "activation", None), Activation):
            raise TypeError(f"layer {l} ({type(layer).__name__}) has no activation: a subclass's __init__ must call "
                            "super().__init__(activation)")
        try:
            hash(layer)
        except TypeError as err:
            raise TypeError(f"layer {l} ({type(layer).__name__}) must be hashable, a static description: "
                            f"keep its attributes numbers, strings, tuples and activations ({err})") from None
    if len(input_shape) == 1 and all(type(layer) is DenseLayer and layer.weight_init is None for layer in layers):
        return MLP((int(input_shape[0]), *(layer.units for layer in layers)), tuple(layer.activation for layer in layers))
    return Network(layers, input_shape)


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
    return MLP(tuple(int(size) for size in sizes), activations)


@functools.lru_cache(maxsize=1024)
def _activation_shapes(activation: Activation, shape: tuple, dtype: str) -> "str | None":
    """What is wrong with an activation's shapes on a layer's output of ``shape``, or None.

    Shapes only (``jax.eval_shape``): nothing is computed, and each
    (activation, shape) is looked at once."""
    text = _shape_text(shape)
    what_z = "a vector" if len(shape) == 1 else "an output"
    z = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    try:
        a = jax.eval_shape(activation.fn, z)
        step = jax.eval_shape(activation.backward, z, z, z)
    except Exception as err:  # a user's function may fail in any way; report it, do not guess
        return f"it fails on {what_z} of shape {text}: {type(err).__name__}: {err}"
    for what, out in (("fn(z)", a), ("backward(z, a, g)", step)):
        if getattr(out, "shape", None) != shape or not jnp.issubdtype(out.dtype, jnp.floating):
            return (
                f"{what} returns {getattr(out, 'shape', type(out).__name__)} "
                f"{getattr(out, 'dtype', '')} for z of shape {text}; expected shape {text}, floating point"
            )
    return None


def check_activation(activation: Activation, shape: "int | tuple", layer: int) -> None:
    """Refuses an activation (one of the user's, typically) whose ``fn`` or
    ``backward`` does not map a vector of the layer's width to one of the same
    shape: a wrong shape would otherwise broadcast into gradients of the
    wrong shape, silently."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    problem = _activation_shapes(activation, shape, str(jnp.result_type(float)))
    if problem:
        raise ValueError(f"layer {layer}: activation {activation.name!r}: {problem}")


def init(
    net: Network,
    key: Array,
    *,
    dtype: Any = None,
    weight_init: Any = None,
) -> tuple[Any, ...]:
    """Draws the parameters of a network, one entry per layer.

    Each layer draws its own (:meth:`jbp.Layer.init`); the key is split once per layer. A dense
    layer's weights are LeCun normal (a truncated normal of variance ``1/n_in``, the scale
    Nielsen's ``network2.py`` uses), its biases zero; a layer without parameters has ``()``.

    Args:
      net: the network description.
      key: a ``jax.random.key``.
      dtype: the parameters' dtype; the default float (``float32``, or
        ``float64`` with ``jax_enable_x64``) when ``None``.
      weight_init: any ``jax.nn.initializers`` initializer for every dense layer's ``W``,
        called with ``(key, (n_out, n_in), dtype)``; mind that the input axis is ``-1``.

    Returns:
      A tuple with one entry per layer: :class:`Dense` for a dense layer.

    Example:
      >>> import jax, jbp
      >>> params = jbp.init(jbp.mlp([3, 5, 2]), jax.random.key(0))
      >>> [layer.W.shape for layer in params]
      [(5, 3), (2, 5)]
    """
    _check_net(net)
    check_key(key)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    keys = jax.random.split(key, net.depth)
    params = []
    for layer, k, in_shape in zip(net.layers, keys, net.in_shapes):
        if weight_init is not None and hasattr(layer, "weight_init"):  # this call's initializer for the weights
            layer = copy.copy(layer)
            layer.weight_init = weight_init
        params.append(layer.init(k, in_shape, dtype)[0])
    return tuple(params)


class Trace(NamedTuple):
    """Everything the forward pass computed for one sample.

    Attributes:
      zs: ``(z^1, …, z^L)``, the weighted inputs.
      activations: ``(a^0, a^1, …, a^L)`` with ``a^0 = x``; one longer than
        ``zs``, as in Nielsen's ``backprop``.
    """

    zs: tuple[Array, ...]
    activations: tuple[Array, ...]


def forward(net: Network, params: Sequence[Any], x: Array) -> Trace:
    """The forward pass for one sample, keeping every ``z`` and ``a``.

    .. math:: z^l = W^l a^{l-1} + b^l, \\qquad a^l = \\sigma(z^l)

    for dense layers; ``z^l = transform^l(a^{l-1})`` for any layer.

    Args:
      net: the network description.
      params: one entry per layer, :class:`Dense` for a dense layer (``W^l`` of shape
        ``(n_l, n_{l-1})``).
      x: one sample of ``net.input_shape``; cast to the parameters' dtype. For a
        batch, ``jax.vmap`` this function or use the functions of ``jbp``'s
        batch module.

    Returns:
      A :class:`Trace`; ``trace.activations[-1]`` is the network's output.

    Raises:
      ValueError: if ``params`` do not fit ``net`` or ``x`` is not one sample
        of the input shape (the message names the layer and both shapes), or
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
    trace = _forward(net, params, as_sample(net, params, x, "x", net.input_shape))
    return finite_result(trace, "forward", params, x)


@partial(jax.jit, static_argnames=("net",))
def _forward(net: Network, params: Sequence[Any], x: Array) -> Trace:
    """The fold: z^l = transform^l(a^{l-1}) and a^l = σ(z^l), layer after layer, keeping both."""
    zs, activations = [], [x]
    for layer, p in zip(net.layers, params):
        z = layer.transform(p, activations[-1])
        zs.append(z)
        activations.append(layer.activation.fn(z))
    return Trace(tuple(zs), tuple(activations))


def deltas(
    net: Network, params: Sequence[Any], trace: Trace, y: Array, loss: "Loss | str", feedback: "Feedback | None" = None
) -> tuple[Array, ...]:
    """BP1 then BP2: the error ``δ^l = ∂C/∂z^l`` of every layer, one sample.

    .. math::

        \\delta^L = \\nabla_a C \\odot \\sigma'(z^L) \\quad \\text{(BP1)}, \\qquad
        \\delta^l = ((W^{l+1})^T \\delta^{l+1}) \\odot \\sigma'(z^l) \\quad \\text{(BP2)}

    ``(W^{l+1})^T δ^{l+1}`` moves the error back through the weights (any layer's ``carry``);
    the layer's backward step (``⊙ σ'(z^l)``, or softmax's Jacobian product) moves it back
    through the activation.

    Args:
      net, params: the network and its parameters.
      trace: what :func:`forward` returned for this sample.
      y: the target, of the network's output shape.
      loss: the per-sample cost, a :class:`~jbp.Loss` or its name.
      feedback: what carries the error back in BP2 (:mod:`jbp.feedback`);
        backpropagation's ``(W^{l+1})^T`` by default.

    Returns:
      ``(δ^1, …, δ^L)``, ``δ^l`` shaped like ``z^l``.

    Not compiled by itself: :func:`backward` and the batch functions compile
    the same step (unchecked); ``jax.vmap`` it for per-sample deltas.
    """
    check_params(net, params)
    _check_trace(net, trace)
    feedback = check_feedback(net, params, feedback)
    y, loss = as_sample(net, params, y, "y", net.output_shape), get_loss(loss)
    return _deltas(net, params, trace, y, loss, feedback)


def _deltas(net, params, trace, y, loss, feedback=None):
    """BP1, then BP2 (:func:`backpropagate`); unchecked."""
    delta = output_delta(net.activations[-1], loss, trace.zs[-1], trace.activations[-1], y)  # BP1
    return backpropagate(net, params, trace, delta, feedback)


def backpropagate(
    net: Network, params: Sequence[Any], trace: Trace, delta: Array, feedback: "Feedback | None" = None
) -> tuple[Array, ...]:
    """BP2 from a given output error: ``(δ^1, …, δ^L)`` with ``δ^L = delta``.

    .. math:: \\delta^l = ((W^{l+1})^T \\delta^{l+1}) \\odot \\sigma'(z^l)

    The reverse fold: layer ``l + 1``'s ``carry`` moves the error back through it, layer ``l``'s
    activation through ``σ_l``. What :func:`deltas` runs after BP1, and what carries any other
    vector at the output back through the network: a column of the loss's Hessian factor
    (curvature, :mod:`jbp.quantities`) is carried exactly as an error is. With a ``feedback``
    rule, the rule's carrier replaces the layer's transport (:func:`jbp.feedback.carry`). One
    sample, unchecked; ``jax.vmap`` it over samples or columns.
    """
    errors, output_error = [delta], delta
    for l in reversed(range(1, net.depth)):
        # BP2: (W^{l+1})ᵀ δ^{l+1} through layer l+1 (0-based l, input a^l), then ⊙ σ'(z^l)
        carried = carry(feedback, l, net.layers[l], params[l], trace.activations[l], delta, output_error)
        delta = net.layers[l - 1].activation.backward(trace.zs[l - 1], trace.activations[l], carried)
        errors.append(delta)
    return tuple(reversed(errors))


def backward(
    net: Network, params: Sequence[Any], trace: Trace, y: Array, loss: Loss, feedback: "Feedback | None" = None
) -> tuple[tuple[Any, ...], tuple[Array, ...]]:
    """Backpropagation for one sample: the deltas, then the gradients.

    .. math::

        \\frac{\\partial C}{\\partial b^l} = \\delta^l \\quad \\text{(BP3)}, \\qquad
        \\frac{\\partial C}{\\partial W^l} = \\delta^l (a^{l-1})^T \\quad \\text{(BP4)}

    with the deltas from BP1 and BP2 (:func:`deltas`); any layer's ``grads(params, a^{l-1}, δ^l)``.

    Args:
      net: the network description.
      params: its parameters, one entry per layer.
      trace: what :func:`forward` returned for this sample.
      y: the target, of the output shape; cast to the parameters' dtype.
      loss: the per-sample cost, a :class:`~jbp.Loss` or its name.
      feedback: the rule that carries errors back in BP2 (backprop by
        default); with another rule, ``grads`` is its update direction.

    Returns:
      ``(grads, deltas)``: ``grads`` shaped like ``params`` (for a dense layer
      :class:`Dense` of ``∂C/∂W^l``, ``∂C/∂b^l``), ``deltas`` the tuple
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
    y, loss = as_sample(net, params, y, "y", net.output_shape), get_loss(loss)
    check_pair(net.activations[-1], loss)
    check_targets(y, loss)
    feedback = check_feedback(net, params, feedback)
    return finite_result(_backward(net, params, trace, y, loss, feedback), "backward", params, trace, y)


@partial(jax.jit, static_argnames=("net", "loss"))
def _backward(net, params, trace, y, loss, feedback=None):
    """BP1 and BP2 (deltas), then BP3 and BP4 for every layer."""
    errors = _deltas(net, params, trace, y, loss, feedback)
    grads = tuple(
        layer.grads(p, a_prev, delta)  # BP4, BP3
        for layer, p, delta, a_prev in zip(net.layers, params, errors, trace.activations[:-1])
    )
    return grads, errors


# --- checks: they run on shapes only, so they cost nothing in compiled code.


def _check_net(net: Any) -> None:
    if not isinstance(net, Network):
        raise TypeError(f"expected a network from jbp.network(...) or jbp.mlp(...), got {type(net).__name__}")


def _describe(template: Any) -> str:
    if isinstance(template, Dense):
        return "jbp.Dense(W, b)"
    if hasattr(template, "_fields"):
        return f"{type(template).__name__}({', '.join(template._fields)})"
    return f"{type(template).__name__} of {len(jax.tree.leaves(template))} arrays" if jax.tree.leaves(template) else "()"


def check_params(net: Network, params: Any) -> None:
    """Raises unless ``params`` has one entry per layer of ``net``, each of the structure and
    shapes that layer's ``init`` gives.

    The message names the first layer that does not fit (counted from 1, as
    in ``W^1``) with the shape expected and the shape found.
    """
    _check_net(net)
    if not isinstance(params, Sequence) or isinstance(params, Dense):
        raise TypeError(f"params must be a tuple with one entry per layer (jbp.Dense for a dense layer), "
                        f"got {type(params).__name__}")
    if len(params) != net.depth:
        raise ValueError(f"params have {len(params)} layers, the network {net.name} has {net.depth}")
    for l, (layer, p, in_shape) in enumerate(zip(net.layers, params, net.in_shapes), 1):
        template, _ = layer.shapes(in_shape, jnp.result_type(float))
        if jax.tree.structure(p) != jax.tree.structure(template):
            raise TypeError(f"layer {l}: expected {_describe(template)}, got {type(p).__name__}")
        for (path, expected), value in zip(jax.tree_util.tree_flatten_with_path(template)[0], jax.tree.leaves(p)):
            name = jax.tree_util.keystr(path).lstrip(".") or "params"
            found = jnp.shape(value)
            if found != expected.shape:
                raise ValueError(f"layer {l}: {name} has shape {found}, expected {expected.shape} "
                                 f"for the network {net.name}")
            if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
                raise TypeError(f"layer {l}: {name} must be floating point, got {jnp.result_type(value)}")
            check_finite(value, f"layer {l}: {name}")


def as_sample(net: Network, params: Sequence[Any], value: Any, name: str, shape: "int | tuple") -> Array:
    """Checks that ``value`` is one finite sample of ``shape``; casts it to the params' dtype."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dtype_of(value, name)
    found = jnp.shape(value)
    if found != shape:
        hint = " (a batch? use jax.vmap or the batch functions)" if len(found) == len(shape) + 1 else ""
        raise ValueError(
            f"{name} must be one sample of shape {_shape_text(shape)} for the network "
            f"{net.name}, got shape {found}{hint}"
        )
    check_finite(value, name)
    return jnp.asarray(value, dtype=params_dtype(params))


def _check_trace(net: Network, trace: Any) -> None:
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be what jbp.forward returned, got {type(trace).__name__}")
    if len(trace.zs) != net.depth or len(trace.activations) != net.depth + 1:
        raise ValueError(
            f"trace has {len(trace.zs)} layers, the network {net.name} has {net.depth}"
        )
    for l, (z, shape) in enumerate(zip(trace.zs, net.out_shapes), 1):
        if jnp.shape(z) != shape:
            raise ValueError(
                f"trace layer {l}: z has shape {jnp.shape(z)}, expected {shape} "
                "(a trace of one sample from jbp.forward)"
            )
