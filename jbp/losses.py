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
numbers. Every other (activation, loss) pair goes through BP1 as written,
except where writing it out loses precision: softmax outputs with binary
cross-entropy need ``log(1 - a_k)`` where ``a_k`` may round to 1, so that pair
has its cost and its ``δ^L`` computed from ``z^L`` too (``stable``), still
``∇_a C ⊙ σ'(z^L)``, only rearranged (:func:`softmax_binary_cross_entropy_from_z`).

Which outputs each loss takes: a cross-entropy takes logarithms of the
outputs, so its output activation must stay in ``(0, 1)``: sigmoid and
softmax for both cross-entropies. softplus is refused for
``softmax_cross_entropy``: its outputs exceed 1, where ``-y log a`` turns
negative and the cost has no minimum. Sigmoid outputs with
``softmax_cross_entropy`` are allowed on purpose: every ``a_k`` lies in
``(0, 1)``, so ``C = -Σ y_k log a_k ≥ 0`` and it is 0 exactly when the target
classes' outputs reach 1 (a one-vs-rest reading that some courses use), and
the tests compare it with autodiff like every other pair.
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
      stable: ``(activation, cost_from_z, delta_from_z)`` for non-canonical
        output activations whose cost and ``δ^L`` are computed from ``z`` to
        keep their precision; ``delta_from_z(z, y)`` is BP1 rearranged.
      hessian_factor: ``(a, y) -> S``, shape ``(n_out, c)``, with
        ``S Sᵀ = ∇²_a C``, the Hessian of the cost in the outputs ``a``
        (curvature for any output activation: :mod:`jbp.quantities`).
      fused_hessian_factor: the same for the canonical pair, in ``z``:
        ``S Sᵀ = ∇²_z C(σ(z), y)``; a function of ``(z, a, y)``.
      fused_sample: ``(key, z, a) -> ∇_z C(σ(z), ŷ)`` with ``ŷ`` drawn
        from the distribution the canonical pair's output defines, so that
        ``E[s sᵀ] = ∇²_z C`` (Monte-Carlo curvature).

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
    stable: tuple = ()
    hessian_factor: "Callable[[Array, Array], Array] | None" = None
    fused_hessian_factor: "Callable[[Array, Array, Array], Array] | None" = None
    fused_sample: "Callable[[Array, Array, Array], Array] | None" = None

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


squared_error = Loss(
    name="squared_error",
    fn=lambda a, y: 0.5 * jnp.sum((y - a) ** 2),
    grad=lambda a, y: a - y,
    canonical=identity,
    cost_from_z=lambda z, y: 0.5 * jnp.sum((y - z) ** 2),
    fused_delta=lambda a, y: a - y,
    # ∇²_a C = I, in a and, with identity outputs, in z.
    hessian_factor=lambda a, y: jnp.eye(a.shape[0], dtype=a.dtype),
    fused_hessian_factor=lambda z, a, y: jnp.eye(a.shape[0], dtype=a.dtype),
    # ŷ ~ N(a, I): ∇_z C = a - ŷ = -ε.
    fused_sample=lambda key, z, a: -jax.random.normal(key, a.shape, a.dtype),
)
"""C = ½ Σ_k (y_k - a_k)², ∇_a C = a - y (Mazur's E_total, Nielsen's quadratic cost)."""

def _softmax_log_probabilities(z: Array) -> tuple[Array, Array]:
    """``log a_k`` and ``log(1 - a_k)`` of ``a = softmax(z)``, both from ``z``.

    ``1 - a_k = Σ_{j≠k} a_j``, so ``log(1 - a_k)`` is the log-sum-exp of ``z``
    without ``z_k``, minus that of all of ``z``: no ``1 - a`` is ever rounded.
    """
    lse = jax.nn.logsumexp(z)
    others = jnp.where(jnp.eye(z.shape[0], dtype=bool), -jnp.inf, z[None, :])  # row k: z without z_k
    return z - lse, jax.nn.logsumexp(others, axis=1) - lse


def _softmax_binary_cross_entropy_cost(z: Array, y: Array) -> Array:
    log_a, log_1ma = _softmax_log_probabilities(z)
    return -jnp.sum(y * log_a + jnp.where(y < 1, (1 - y) * log_1ma, 0))


def softmax_binary_cross_entropy_from_z(z: Array, y: Array) -> Array:
    """BP1 for softmax outputs with binary cross-entropy, rearranged to stay finite.

    With ``g = ∇_a C``, ``g_k a_k = -y_k + r_k`` where ``r_k = (1 - y_k) a_k / (1 - a_k)``,
    and softmax's backward step ``a ⊙ (g - <g, a>)`` gives

    .. math:: \\delta_j = -y_j + (1 - y_j) a_j + a_j \\sum_k y_k
              - \\sum_{k \\ne j} a_j r_k

    (the ``r_j`` term cancels against ``a_j r_j`` exactly). Each
    ``a_j r_k = (1 - y_k) exp(log a_j + log a_k - log(1 - a_k))`` is at most
    ``a_k``, since ``a_j ≤ 1 - a_k`` for ``j ≠ k``: nothing overflows, nothing
    divides by a rounded ``1 - a``.
    """
    log_a, log_1ma = _softmax_log_probabilities(z)
    a = jnp.exp(log_a)
    cross = jnp.exp(log_a[:, None] + (log_a - log_1ma)[None, :]) * (1 - y)[None, :]  # [j, k] = a_j r_k
    cross = jnp.where(jnp.eye(z.shape[0], dtype=bool), 0, cross)
    return -y + (1 - y) * a + a * jnp.sum(y) - jnp.sum(cross, axis=1)


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
    stable=((softmax, _softmax_binary_cross_entropy_cost, softmax_binary_cross_entropy_from_z),),
    # ∇²_a C = diag(y/a² + (1-y)/(1-a)²); with sigmoid outputs, ∇²_z C = diag(a(1-a)).
    hessian_factor=lambda a, y: jnp.diag(jnp.sqrt(y / a**2 + (1 - y) / (1 - a) ** 2)),
    fused_hessian_factor=lambda z, a, y: jnp.diag(jnp.sqrt(a * (1 - a))),
    # ŷ_k ~ Bernoulli(a_k), each output on its own: ∇_z C = a - ŷ.
    fused_sample=lambda key, z, a: a - jax.random.bernoulli(key, a).astype(a.dtype),
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
    outputs=("sigmoid", "softmax"),
    targets="distribution",
    # ∇²_a C = diag(y / a²); with softmax outputs ∇²_z C = (Σ_k y_k)(diag(a) - a aᵀ), whose factor
    # diag(√a) - a √aᵀ is BackPACK's (S Sᵀ = diag(a) - 2 a aᵀ + a (Σ a) aᵀ, and Σ a = 1).
    hessian_factor=lambda a, y: jnp.diag(jnp.sqrt(y) / a),
    fused_hessian_factor=lambda z, a, y: jnp.sqrt(jnp.sum(y)) * (jnp.diag(jnp.sqrt(a)) - jnp.outer(a, jnp.sqrt(a))),
    # ŷ ~ Categorical(a): ∇_z C = a - e_ŷ.
    fused_sample=lambda key, z, a: a - jax.nn.one_hot(jax.random.categorical(key, z), a.shape[0], dtype=a.dtype),
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
    for activation, _, delta_from_z in loss.stable:
        if output == activation:
            return delta_from_z(z, y)
    return output.backward(z, a, loss.grad(a, y))


def output_cost(output: Activation, loss: Loss, z: Array, a: Array, y: Array) -> Array:
    """The per-sample cost ``C(a^L, y)``, from ``z^L`` for the canonical and stable pairs.

    Args:
      output, loss, z, a, y: as in :func:`output_delta`.

    Returns:
      A scalar.
    """
    if output == loss.canonical:
        return loss.cost_from_z(z, y)
    for activation, cost_from_z, _ in loss.stable:
        if output == activation:
            return cost_from_z(z, y)
    return loss.fn(a, y)
