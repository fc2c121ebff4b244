"""Activations: each one is σ together with its hand-derived backward step.

An :class:`Activation` holds the forward function ``fn(z) = σ(z)`` and the
backward step ``backward(z, a, g) = g ⊙ σ'(z)``: the factor that BP1 and BP2
multiply by, written next to the function it differentiates so that the two
cannot drift apart. Elementwise activations are built with
:func:`elementwise` from ``σ'(z, a)``, which may use the already computed
output ``a = σ(z)`` (sigmoid's derivative is ``a(1 - a)``, nothing is
recomputed). Softmax couples its outputs, so its step is a true
Jacobian-vector product: ``J^T g = a ⊙ (g - <g, a>)``.

Every forward function here is the numerically stable form (``jax.nn``'s
sigmoid, softplus and softmax; elu through ``expm1`` of a clipped argument).
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Activation(NamedTuple):
    """An activation function and its backward step.

    Attributes:
      name: how the activation is called (``"sigmoid"``); used in messages and
        on the command line.
      fn: ``σ``, ``z -> a``, for one sample's vector ``z`` of shape ``(n,)``.
      backward: ``(z, a, g) -> g ⊙ σ'(z)`` for an elementwise ``σ`` and, in
        general, the Jacobian-transpose product ``(∂a/∂z)^T g``. ``z``, ``a``
        and ``g`` all have shape ``(n,)``.

    An ``Activation`` is hashable (a tuple of a string and two functions), so a
    network description built from it can be a static argument of ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp, jbp
      >>> z = jnp.array([0.0, 2.0])
      >>> a = jbp.sigmoid.fn(z)
      >>> [f"{v:.4f}" for v in jbp.sigmoid.backward(z, a, jnp.ones(2))]
      ['0.2500', '0.1050']
    """

    name: str
    fn: Callable[[Array], Array]
    backward: Callable[[Array, Array, Array], Array]

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


def elementwise(
    name: str,
    fn: Callable[[Array], Array],
    derivative: Callable[[Array, Array], Array],
) -> Activation:
    """Builds an elementwise activation from ``σ`` and its derivative.

    .. math:: \\text{backward}(z, a, g) = g \\odot \\sigma'(z)

    Args:
      name: the activation's name.
      fn: ``σ``, applied elementwise.
      derivative: ``σ'`` as a function of ``(z, a)`` where ``a = σ(z)``; use
        whichever is cheaper or more accurate.

    Returns:
      An :class:`Activation` usable anywhere a built-in one is.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> swish = jbp.elementwise(
      ...     "swish",
      ...     lambda z: z * jax.nn.sigmoid(z),
      ...     lambda z, a: a + jax.nn.sigmoid(z) * (1 - a),
      ... )
      >>> net = jbp.mlp([3, 4, 1], hidden=swish, output=jbp.identity)
    """

    def backward(z: Array, a: Array, g: Array) -> Array:
        return g * derivative(z, a)

    return Activation(name, fn, backward)


LEAKY_RELU_SLOPE = 0.01


def _leaky_relu(z: Array) -> Array:
    return jnp.where(z > 0, z, LEAKY_RELU_SLOPE * z)


def _elu(z: Array) -> Array:
    # expm1 of min(z, 0): exact near 0, and no overflow in the unused branch.
    return jnp.where(z > 0, z, jnp.expm1(jnp.minimum(z, 0)))


sigmoid = elementwise("sigmoid", jax.nn.sigmoid, lambda z, a: a * (1 - a))
"""σ(z) = 1 / (1 + e^{-z}); σ'(z) = a(1 - a)."""

tanh = elementwise("tanh", jnp.tanh, lambda z, a: 1 - a**2)
"""σ(z) = tanh z; σ'(z) = 1 - a²."""

relu = elementwise("relu", jax.nn.relu, lambda z, a: (z > 0).astype(z.dtype))
"""σ(z) = max(z, 0); σ'(z) = 1 if z > 0 else 0."""

leaky_relu = elementwise(
    "leaky_relu",
    _leaky_relu,
    lambda z, a: jnp.where(z > 0, 1, LEAKY_RELU_SLOPE).astype(z.dtype),
)
"""σ(z) = z if z > 0 else 0.01 z; σ'(z) = 1 if z > 0 else 0.01."""

softplus = elementwise("softplus", jax.nn.softplus, lambda z, a: jax.nn.sigmoid(z))
"""σ(z) = log(1 + e^z); σ'(z) = 1 / (1 + e^{-z})."""

elu = elementwise("elu", _elu, lambda z, a: jnp.where(z > 0, 1, jnp.exp(jnp.minimum(z, 0))))
"""σ(z) = z if z > 0 else e^z - 1; σ'(z) = 1 if z > 0 else e^z.

For z ≤ 0, σ'(z) = a + 1 as well, but e^z keeps its relative precision where
a + 1 would cancel."""

identity = elementwise("identity", lambda z: z, lambda z, a: jnp.ones_like(z))
"""σ(z) = z; σ'(z) = 1."""


def _softmax_backward(z: Array, a: Array, g: Array) -> Array:
    # ∂a_i/∂z_j = a_i (δ_ij - a_j), so (∂a/∂z)^T g = a ⊙ (g - <g, a>).
    return a * (g - jnp.dot(g, a))


softmax = Activation("softmax", jax.nn.softmax, _softmax_backward)
"""σ(z)_i = e^{z_i} / Σ_j e^{z_j}; backward step a ⊙ (g - <g, a>)."""

ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (sigmoid, tanh, relu, leaky_relu, softplus, elu, identity, softmax)
}
"""The built-in activations by name."""


def get_activation(name_or_activation: "str | Activation") -> Activation:
    """Returns the activation of that name, or the activation itself.

    Raises:
      ValueError: for an unknown name; the message lists the known ones.
      TypeError: for anything that is neither a name nor an ``Activation``.
    """
    if isinstance(name_or_activation, Activation):
        return name_or_activation
    if isinstance(name_or_activation, str):
        try:
            return ACTIVATIONS[name_or_activation]
        except KeyError:
            raise ValueError(
                f"unknown activation {name_or_activation!r}; "
                f"expected one of {', '.join(ACTIVATIONS)}"
            ) from None
    raise TypeError(
        "expected an activation name or a jbp.Activation, "
        f"got {type(name_or_activation).__name__}: {name_or_activation!r}"
    )
