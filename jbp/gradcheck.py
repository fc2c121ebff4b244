"""Finite differences: the independent check of a hand-written gradient.

The teaching tool of Coursera's ex4 (``computeNumericalGradient``): perturb
each parameter by ``±ε`` in turn and take the central difference

.. math:: \\frac{\\partial J}{\\partial \\theta_i} \\approx
          \\frac{J(\\theta + \\varepsilon e_i) - J(\\theta - \\varepsilon e_i)}{2\\varepsilon},

then compare with backpropagation through the course's relative difference
``‖numerical - analytic‖ / ‖numerical + analytic‖``. The error of the central
difference is ``O(ε²)``; in float64 with ``ε = 1e-4`` a correct gradient gives
a relative difference of about ``1e-11``.

:func:`check_grads` gives that difference for the whole gradient and for each
layer's ``W`` and ``b`` apart, each with the usual reading (:func:`verdict`):
a bug in one layer's backward step shows in that layer and the layers below
it (BP2 carries its error down), not in the layers above.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbp.batch import check_batch, cost, loss_and_grads
from jbp.losses import Loss, get_loss
from jbp.network import Dense, Network

Array = jax.Array


def numerical_grads(f: Callable[[Any], Array], params: Any, eps: float = 1e-4) -> Any:
    """Central differences of a scalar function over every entry of a pytree.

    Costs ``2 n`` evaluations of ``f`` for ``n`` parameters (compiled once,
    looped with ``lax.map``): a checking tool for small networks.

    Args:
      f: ``params -> scalar``, built from array operations.
      params: any pytree of floating arrays.
      eps: the step ``ε``.

    Returns:
      A pytree shaped like ``params``.

    Example:
      >>> import jax.numpy as jnp, jbp
      >>> g = jbp.numerical_grads(lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.array([1.0, 2.0])}, eps=0.5)
      >>> [f"{v:.3f}" for v in g["w"]]
      ['2.000', '4.000']
    """
    theta, unravel = ravel_pytree(params)
    eps = jnp.asarray(eps, theta.dtype)

    def f_flat(flat: Array) -> Array:
        return f(unravel(flat))

    def central_difference(i: Array) -> Array:
        step = jnp.zeros_like(theta).at[i].set(eps)
        return (f_flat(theta + step) - f_flat(theta - step)) / (2 * eps)

    return unravel(jax.jit(lambda: jax.lax.map(central_difference, jnp.arange(theta.size)))())


def relative_difference(a: Any, b: Any) -> float:
    """Coursera's ``norm(a - b) / norm(a + b)`` over two pytrees of one shape."""
    flat_a, _ = ravel_pytree(a)
    flat_b, _ = ravel_pytree(b)
    return float(jnp.linalg.norm(flat_a - flat_b) / jnp.linalg.norm(flat_a + flat_b))


WRONG = 1e-2
"""Above this relative difference, the gradient is wrong."""
SUSPICIOUS = 1e-4
"""From here up to :data:`WRONG`, suspicious: usually a bug."""
RIGHT = 1e-7
"""Below this, right in float64. Between this and :data:`SUSPICIOUS`: fine in float32,
or where the cost has kinks (relu at 0), but too high for a smooth network in float64."""

READINGS = {
    "right": "below 1e-7: right (float64)",
    "marginal": "1e-7 to 1e-4: fine in float32, or across a kink (relu at 0); too high for a smooth network in float64",
    "suspicious": "1e-4 to 1e-2: suspicious, usually a bug",
    "wrong": "above 1e-2: wrong",
}
"""What each verdict of :func:`verdict` means."""


def verdict(relative: float) -> str:
    """The usual reading of a relative difference: ``right`` (below ``1e-7``),
    ``marginal`` (``1e-7`` to ``1e-4``), ``suspicious`` (``1e-4`` to ``1e-2``) or
    ``wrong`` (above ``1e-2``, or not a number).

    Example:
      >>> from jbp.gradcheck import verdict
      >>> [verdict(r) for r in (1e-11, 1e-6, 1e-3, 0.3, float("nan"))]
      ['right', 'marginal', 'suspicious', 'wrong', 'wrong']
    """
    if not math.isfinite(relative) or relative > WRONG:
        return "wrong"
    if relative > SUSPICIOUS:
        return "suspicious"
    if relative > RIGHT:
        return "marginal"
    return "right"


class LayerCheck(NamedTuple):
    """One parameter array's part of :func:`check_grads`.

    Attributes:
      name: ``"layer 1 W"``, ``"layer 1 b"``, … (layers counted from 1).
      layer: the layer ``l``.
      relative_difference: ``‖numerical - analytic‖ / ‖numerical + analytic‖``
        over this array (0 where both are zero).
      max_abs_difference: the largest ``|numerical - analytic|`` in it.
      verdict: :func:`verdict` of the relative difference.
    """

    name: str
    layer: int
    relative_difference: float
    max_abs_difference: float
    verdict: str


class GradCheck(NamedTuple):
    """What :func:`check_grads` found.

    Attributes:
      relative_difference: ``‖numerical - analytic‖ / ‖numerical + analytic‖``.
      analytic: the gradient by backpropagation (:func:`jbp.loss_and_grads`).
      numerical: the gradient by central differences.
      layers: one :class:`LayerCheck` per parameter array (a dense layer's ``W`` and ``b``), in order.
    """

    relative_difference: float
    analytic: tuple[Dense, ...]
    numerical: tuple[Dense, ...]
    layers: tuple[LayerCheck, ...] = ()

    @property
    def verdict(self) -> str:
        """:func:`verdict` of the whole gradient's relative difference."""
        return verdict(self.relative_difference)

    @property
    def wrong(self) -> tuple[str, ...]:
        """The names of the arrays whose gradient is wrong (empty when none is)."""
        return tuple(layer.name for layer in self.layers if layer.verdict == "wrong")


def layer_checks(numerical: Sequence[Any], analytic: Sequence[Any]) -> tuple[LayerCheck, ...]:
    """The relative difference of each layer's parameter arrays (a dense layer's ``W`` and ``b``),
    with its verdict; an array is named by its path in the layer's parameters."""
    checks = []
    for l, (n, a) in enumerate(zip(numerical, analytic), 1):
        for (path, num), ana in zip(jax.tree_util.tree_flatten_with_path(n)[0], jax.tree.leaves(a)):
            field = jax.tree_util.keystr(path).lstrip(".")
            num, ana = np.ravel(num), np.ravel(ana)
            gap, size = float(np.linalg.norm(num - ana)), float(np.linalg.norm(num + ana))
            relative = 0.0 if gap == 0 else (gap / size if size > 0 else math.inf)
            largest = float(np.max(np.abs(num - ana))) if num.size else 0.0
            checks.append(LayerCheck(f"layer {l} {field}", l, relative, largest, verdict(relative)))
    return tuple(checks)


def check_grads(
    net: Network,
    params: Sequence[Any],
    X: Array,
    Y: Array,
    loss: "Loss | str",
    l2: float = 0.0,
    eps: float = 1e-4,
) -> GradCheck:
    """Compares backpropagation with central differences of the same cost ``J``.

    Coursera's ``checkNNGradients``: run it in float64 (``jax_enable_x64``);
    a correct gradient gives a relative difference far below ``1e-9``. Each
    layer's ``W`` and ``b`` is compared apart too (``check.layers``), so a
    wrong backward step is found in the layers it reaches: its own and those
    below it. A layer whose gradient is close to zero (a vanishing gradient)
    can read high from the differences' rounding alone: its
    ``max_abs_difference`` tells.

    Args:
      net, params, X, Y, loss, l2: as in :func:`jbp.loss_and_grads`.
      eps: the finite-difference step.

    Returns:
      A :class:`GradCheck`.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], hidden=jbp.tanh, output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> X, Y = jnp.ones((2, 3)), jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> check = jbp.check_grads(net, params, X, Y, jbp.softmax_cross_entropy, eps=1e-2)
      >>> check.relative_difference < 1e-3
      True
      >>> [layer.name for layer in check.layers], check.wrong
      (['layer 1 W', 'layer 1 b', 'layer 2 W', 'layer 2 b'], ())
    """
    loss = get_loss(loss)
    X, Y = check_batch(net, params, X, Y)
    _, analytic = loss_and_grads(net, params, X, Y, loss, l2)
    numerical = numerical_grads(lambda p: cost(net, p, X, Y, loss, l2), tuple(params), eps)
    return GradCheck(relative_difference(numerical, analytic), analytic, numerical, layer_checks(numerical, analytic))


def coursera_debug_weights(fan_out: int, fan_in: int) -> tuple[Dense, "jax.Array"]:
    """Coursera's ``debugInitializeWeights(fan_out, fan_in)``, as a layer.

    The course fills ``sin(1), sin(2), …`` divided by 10, column by column
    (MATLAB's order), into a ``(fan_out, 1 + fan_in)`` matrix whose first
    column is the bias. Returns that layer as ``Dense(W, b)`` and the whole
    matrix (the course also uses it, without its meaning, as test inputs).

    Example:
      >>> import jbp
      >>> layer, theta = jbp.gradcheck.coursera_debug_weights(5, 3)
      >>> layer.W.shape, layer.b.shape, theta.shape
      ((5, 3), (5,), (5, 4))
    """
    n = fan_out * (1 + fan_in)
    theta = jnp.reshape(jnp.sin(jnp.arange(1, n + 1, dtype=jnp.result_type(float))), (1 + fan_in, fan_out)).T / 10
    return Dense(W=theta[:, 1:], b=theta[:, 0]), theta
