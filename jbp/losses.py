"""Losses: each one is a per-sample cost C(a, y) together with ∇_a C.

A :class:`Loss` keeps the cost and its gradient side by side, as Nielsen's
cost objects keep ``fn`` and ``delta``. Each loss also names its *canonical*
output activation, the one whose derivative cancels against the loss's
gradient so that BP1 collapses to ``δ^L = a - y``:

==========================  ====================  ========================
loss                        canonical output      fused output error
==========================  ====================  ========================
``squared_error``           ``identity``          ``δ^L = a - y``
``binary_cross_entropy``    ``sigmoid``           ``δ^L = a - y``
``softmax_cross_entropy``   ``softmax``           ``δ^L = a Σ_k y_k - y``
==========================  ====================  ========================

(The last one is ``a - y`` whenever the target sums to one, as a one-hot or
probability vector does.) For these pairs :func:`output_delta` uses the fused
form instead of multiplying ``∇_a C`` by ``σ'(z)``: for binary cross-entropy
``∇_a C = (a - y) / (a(1 - a))`` and ``σ'(z) = a(1 - a)``, whose product is
``a - y`` but whose factors are ``0/0`` once the sigmoid saturates. This is the
``σ'`` that seems to be missing from the cross-entropy delta in Nielsen's
``network2.py``: it cancelled. The cost of a canonical pair is likewise taken
from ``z^L`` (log-sum-exp, softplus), so saturated outputs give finite
numbers. Every other (activation, loss) pair goes through BP1 as written.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jbp.activations import ACTIVATIONS, Activation, identity, sigmoid, softmax

Array = jax.Array


class Loss(NamedTuple):
    """A per-sample cost, its gradient, and its fused canonical pair.

    Attributes:
      name: how the loss is called (``"softmax_cross_entropy"``).
      fn: ``C(a, y)``, a scalar for one sample; ``a`` and ``y`` of shape
        ``(n_out,)``.
      grad: ``∇_a C(a, y)``, shape ``(n_out,)``. Hand-derived, not autodiff.
      canonical: the output activation whose pair with this loss is fused, or
        ``None``.
      cost_from_z: ``C(σ(z), y)`` computed from the output pre-activation
        ``z`` in a stable form, for the canonical pair.
      fused_delta: ``δ^L`` of the canonical pair as a function of ``(a, y)``.
      outputs: the names of the built-in activations on whose range the
        cost is defined (the cross-entropies take logarithms of ``a``), or
        ``None`` for any; an activation of your own is never refused.
      targets: what a target must be, checked on concrete data:
        ``"unit"`` (every entry in ``[0, 1]``), ``"distribution"`` (entries
        ≥ 0 summing to 1 per row) or ``None``.

    Example:
      >>> import jax.numpy as jnp, jbp
      >>> a, y = jnp.array([0.75, 0.25]), jnp.array([1.0, 0.0])
      >>> float(jbp.squared_error.fn(a, y)), jbp.squared_error.grad(a, y).tolist()
      (0.0625, [-0.25, 0.25])
    """

    name: str
    fn: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    canonical: Activation | None = None
    cost_from_z: Callable[[Array, Array], Array] | None = None
    fused_delta: Callable[[Array, Array], Array] | None = None
    outputs: "tuple[str, ...] | None" = None
    targets: "str | None" = None

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


squared_error = Loss(
    name="squared_error",
    fn=lambda a, y: 0.5 * jnp.sum((y - a) ** 2),
    grad=lambda a, y: a - y,
    canonical=identity,
    cost_from_z=lambda z, y: 0.5 * jnp.sum((y - z) ** 2),
    fused_delta=lambda a, y: a - y,
)
"""C = ½ Σ_k (y_k - a_k)², ∇_a C = a - y (Mazur's E_total, Nielsen's quadratic cost)."""

binary_cross_entropy = Loss(
    name="binary_cross_entropy",
    fn=lambda a, y: -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log1p(-a)),
    grad=lambda a, y: (a - y) / (a * (1 - a)),
    canonical=sigmoid,
    # -[y log σ(z) + (1-y) log(1-σ(z))] = softplus(z) - y z, summed over outputs.
    cost_from_z=lambda z, y: jnp.sum(jax.nn.softplus(z) - y * z),
    fused_delta=lambda a, y: a - y,
    outputs=("sigmoid", "softmax"),
    targets="unit",
)
"""C = -Σ_k [y_k log a_k + (1 - y_k) log(1 - a_k)], summed over the outputs as
in Coursera's cost; ∇_a C = (a - y) / (a(1 - a))."""

softmax_cross_entropy = Loss(
    name="softmax_cross_entropy",
    fn=lambda a, y: -jnp.sum(y * jnp.log(a)),
    grad=lambda a, y: -y / a,
    canonical=softmax,
    # -Σ y_k log softmax(z)_k = Σ_k y_k · logsumexp(z) - <y, z>.
    cost_from_z=lambda z, y: jnp.sum(y) * jax.nn.logsumexp(z) - jnp.dot(y, z),
    fused_delta=lambda a, y: a * jnp.sum(y) - y,
    outputs=("sigmoid", "softmax", "softplus"),
    targets="distribution",
)
"""C = -Σ_k y_k log a_k, ∇_a C = -y / a."""

LOSSES: dict[str, Loss] = {
    loss.name: loss for loss in (squared_error, binary_cross_entropy, softmax_cross_entropy)
}
"""The built-in losses by name."""


def get_loss(name_or_loss: "str | Loss") -> Loss:
    """Returns the loss of that name, or the loss itself.

    Raises:
      ValueError: for an unknown name; the message lists the known ones.
      TypeError: for anything that is neither a name nor a ``Loss``.
    """
    if isinstance(name_or_loss, Loss):
        return name_or_loss
    if isinstance(name_or_loss, str):
        try:
            return LOSSES[name_or_loss]
        except KeyError:
            raise ValueError(
                f"unknown loss {name_or_loss!r}; expected one of {', '.join(LOSSES)}"
            ) from None
    raise TypeError(
        f"expected a loss name or a jbp.Loss, got {type(name_or_loss).__name__}: "
        f"{name_or_loss!r}"
    )


def check_pair(output: Activation, loss: Loss) -> None:
    """Refuses a built-in output activation on whose range the loss is undefined.

    Raises:
      ValueError: naming the loss, the activation and the ones that fit.
    """
    if loss.outputs is None or output.name in loss.outputs:
        return
    if ACTIVATIONS.get(output.name) is output:
        raise ValueError(
            f"{loss.name} takes logarithms of the outputs, which {output.name} can make "
            f"undefined; use {' or '.join(loss.outputs)} as the output activation"
        )


def output_delta(output: Activation, loss: Loss, z: Array, a: Array, y: Array) -> Array:
    """BP1, the error at the output layer, for one sample.

    .. math:: \\delta^L = \\nabla_a C \\odot \\sigma'(z^L)

    For the canonical pairs the product is simplified by hand first (see the
    module docstring) and ``δ^L = a - y``; every other pair multiplies
    ``∇_a C`` by the output activation's backward step, a true
    Jacobian-transpose product for softmax.

    Args:
      output: the output activation σ.
      loss: the per-sample cost C.
      z: ``z^L``, shape ``(n_out,)``.
      a: ``a^L = σ(z^L)``, shape ``(n_out,)``.
      y: the target, shape ``(n_out,)``.

    Returns:
      ``δ^L = ∂C/∂z^L``, shape ``(n_out,)``.
    """
    if output == loss.canonical:
        return loss.fused_delta(a, y)
    return output.backward(z, a, loss.grad(a, y))


def output_cost(output: Activation, loss: Loss, z: Array, a: Array, y: Array) -> Array:
    """The per-sample cost ``C(a^L, y)``, from ``z^L`` for the canonical pairs.

    Args:
      output, loss, z, a, y: as in :func:`output_delta`.

    Returns:
      A scalar.
    """
    if output == loss.canonical:
        return loss.cost_from_z(z, y)
    return loss.fn(a, y)
