"""What else the deltas give: per-sample statistics and curvature, each a contraction.

The batch passes (:mod:`jbp.batch`) leave every sample's errors ``δ_i^l``
(a matrix ``D^l`` of shape ``(m, n_l)``) and inputs ``a_i^{l-1}`` (``A^{l-1}``,
``(m, n_{l-1})``) in hand. Sample ``i``'s own gradient is ``g_i = (δ_i a_iᵀ, δ_i)``
(no ``1/m``, no L2: what :func:`jbp.per_example_grads` returns), and with
``ā = [a; 1]`` every quantity below is one or two contractions over those
matrices; no ``(m, n_l, n_{l-1})`` array is ever formed:

==============================  =============================================  ==========================================
quantity                        definition                                     from the deltas
==============================  =============================================  ==========================================
:func:`sum_grad_squared`        ``Σ_i g_i ⊙ g_i``                              ``(D ⊙ D)ᵀ (A ⊙ A)``, ``Σ_i δ_i²``
:func:`grad_variance`           ``(1/m) Σ_i g_i² − ((1/m) Σ_i g_i)²``          the above and ``Dᵀ A / m``
:func:`per_example_grad_gram`   ``G_ij = ⟨g_i, g_j⟩``                          ``Σ_l (D Dᵀ) ⊙ (Ā Āᵀ)``
:func:`diag_ggn`                ``diag((1/m) Σ_i J_iᵀ H_i J_i)``               columns of ``H_i^{1/2}`` carried back by BP2
:func:`diag_ggn_mc`             its Monte-Carlo estimate                       one sampled output gradient per draw
:func:`kfac_factors`            ``A = (1/m) Σ ā āᵀ``, ``G = (1/m) Σ S Sᵀ``     ``Āᵀ Ā / m``, ``Σ_c Δ_cᵀ Δ_c / m``
==============================  =============================================  ==========================================

Curvature: ``H_i`` is the Hessian of sample ``i``'s cost in the network's
output. For the canonical pairs the output is ``z^L`` (softmax with
cross-entropy: ``diag(p) − p pᵀ``; sigmoid with binary cross-entropy:
``diag(p(1 − p))``; identity with squared error: ``I``); for every other pair
it is ``a^L``, and ``J_i`` includes the output activation. A factor ``S_i``
with ``S_i S_iᵀ = H_i`` (:class:`jbp.Loss`'s ``fused_hessian_factor`` and
``hessian_factor``) has ``c`` columns; each is carried back through the
network exactly as an error is (BP2, :func:`jbp.network.backpropagate`),
giving ``Δ_i^l`` of shape ``(n_l, c)``, and then

.. math::

    \\operatorname{diag}(G)_{W^l} = \\frac{1}{m} \\sum_i \\Big(\\sum_c (Δ_{i,c}^l)^2\\Big) (a_i^{l-1})^2{}^T,
    \\qquad
    G^l_{\\text{KFLR}} = \\frac{1}{m} \\sum_i Δ_i^l Δ_i^{lT}

The Monte-Carlo versions replace ``S_i`` by gradients ``∇_z C(σ(z), ŷ)``
with ``ŷ`` drawn from the distribution the output defines (categorical,
Bernoulli per output, or ``N(z, I)``), whose outer product has expectation
``H_i``; that holds for the canonical pairs only (for any other pair the
same draw estimates the Fisher, not the GGN), so they are refused there.

Everything here is one compiled program per (network, loss, shapes, set of
quantities); :func:`one_pass` returns several at once from one forward
and one backward pass. Conventions follow BackPACK's for a loss averaged
over the batch where BackPACK has the quantity, and the experiment
``experiments/bench_extras.py`` checks them against BackPACK on the same
weights before it times anything. (BackPACK's ``SumGradSquared`` and
``Variance`` are those of the per-sample gradients of the *averaged* loss,
``g_i / m``; here they are of ``g_i``, as defined above: multiply by ``1/m²``
to compare.)
"""

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbp.batch import batch_passes, check_batch, sq_norms
from jbp.checks import available_memory, check_key, finite_result
from jbp.contract import rows_like
from jbp.losses import Loss, get_loss
from jbp.network import Dense, Network, backpropagate

Array = jax.Array

FIRST_ORDER = ("grads", "sum_grad_squared", "grad_variance", "per_example_grad_gram", "per_example_grad_norms")
SECOND_ORDER = ("diag_ggn", "diag_ggn_mc", "kflr", "kfac")
QUANTITIES = FIRST_ORDER + SECOND_ORDER
"""The names :func:`one_pass` takes."""


class KronFactors(NamedTuple):
    """One layer's Kronecker factors: the layer's curvature block over ``[W b]``
    (flattened row by row) is approximated by ``kron(G, A)``.

    Attributes:
      A: ``(1/m) Σ_i ā_i ā_iᵀ``, shape ``(n_{l-1}+1, n_{l-1}+1)``, the bias
        as the last row and column.
      G: ``(1/m) Σ_i S_i S_iᵀ`` of the carried-back columns, shape ``(n_l, n_l)``.
    """

    A: Array
    G: Array


def output_columns(net: Network, loss: Loss, z: Array, a: Array, y: Array) -> Array:
    """``S`` with ``S Sᵀ = J_σᵀ ∇²_a C J_σ``, the output Hessian in ``z^L``, one sample.

    For the canonical pair, the loss's ``fused_hessian_factor``; for any other
    pair, the columns of ``hessian_factor`` (in ``a``) each taken through the
    output activation's backward step. Shape ``(n_L, c)``.
    """
    output = net.activations[-1]
    if output == loss.canonical:
        return loss.fused_hessian_factor(z, a, y)
    in_a = loss.hessian_factor(a, y)
    return jax.vmap(partial(output.backward, z, a), in_axes=-1, out_axes=-1)(in_a)


def _carry_back(net: Network, params, traces, columns: Array) -> tuple[Array, ...]:
    """BP2 for every sample and every column: ``(m, n_L, c)`` → per layer ``(m, n_l, c)``."""
    per_column = jax.vmap(partial(backpropagate, net, params), in_axes=(None, -1), out_axes=-1)
    return jax.vmap(per_column)(traces, columns)


class _Pass:
    """One forward and one backward pass over a batch, and what each quantity reads from it: the
    layers' inputs ``A^{l-1}`` and errors ``D^l``, and (computed once, when first asked for) the
    output Hessian's columns carried back, exactly or sampled."""

    def __init__(self, net, params, X, Y, loss, key, samples):
        self.net, self.params, self.Y, self.loss, self.key, self.samples = net, params, Y, loss, key, samples
        self.traces, self.errors, costs = batch_passes(net, params, X, Y, loss)
        self.inputs, self.m, self.loss_value = self.traces.activations[:-1], X.shape[0], jnp.mean(costs)
        self.values, self._carried = {}, {}

    def layers(self):
        """``(layer, params, A, D)`` for every layer."""
        return zip(self.net.layers, self.params, self.inputs, self.errors)

    def carried(self, kind: str) -> tuple[tuple[Array, ...], int]:
        """The columns carried back through every layer, ``(m, *out_l, c)``, and ``c`` (per sample's draw count)."""
        if kind not in self._carried:
            zs, outs = self.traces.zs[-1], self.traces.activations[-1]
            if kind == "exact":
                columns = jax.vmap(partial(output_columns, self.net, self.loss))(zs, outs, self.Y)
                count = 1
            else:
                keys = rows_like(jax.random.split(self.key, (self.m, self.samples)), zs)
                draw = jax.vmap(jax.vmap(self.loss.fused_sample, in_axes=(0, None, None), out_axes=-1))
                columns, count = draw(keys, zs, outs), self.samples  # (m, n_L, samples)
            self._carried[kind] = (_carry_back(self.net, self.params, self.traces, columns), count)
        return self._carried[kind]

    def get(self, name: str) -> Any:
        if name not in self.values:
            self.values[name] = QUANTITY_FUNCTIONS[name](self)
        return self.values[name]


# --- one small function per quantity; each reduces the pass layer by layer with the layer's own contraction


def _grads(p: _Pass):
    return tuple(jax.tree.map(lambda g: g / p.m, layer.batch_grads(q, a, d)) for layer, q, a, d in p.layers())


def _sum_grad_squared(p: _Pass):
    return tuple(layer.sum_grad_squared(q, a, d) for layer, q, a, d in p.layers())


def _grad_variance(p: _Pass):
    # E[g²] - E[g]² may round below zero where the spread is nil: a variance is ≥ 0
    return jax.tree.map(lambda s, g: jnp.maximum(s / p.m - g**2, 0), p.get("sum_grad_squared"), p.get("grads"))


def _gram(p: _Pass):
    return sum(layer.gram(q, a, d) for layer, q, a, d in p.layers() if jax.tree.leaves(q))


def _norms(p: _Pass):
    return jnp.sqrt(sq_norms(p.net, p.params, p.inputs, p.errors))


def _diag_ggn(kind: str):
    def diagonal(p: _Pass):
        deltas, count = p.carried(kind)
        return tuple(jax.tree.map(lambda x: x / (p.m * count), layer.diag_ggn(q, a, dc))
                     for (layer, q, a, _), dc in zip(p.layers(), deltas))

    return diagonal


def _kron(kind: str):
    def factors(p: _Pass):
        deltas, count = p.carried(kind)
        out = []
        for (layer, q, a, _), dc in zip(p.layers(), deltas):
            A, G = layer.kron_factors(q, a, dc)
            out.append(KronFactors(A=A / p.m, G=G / (p.m * count)))
        return tuple(out)

    return factors


QUANTITY_FUNCTIONS = {
    "grads": _grads,
    "sum_grad_squared": _sum_grad_squared,
    "grad_variance": _grad_variance,
    "per_example_grad_gram": _gram,
    "per_example_grad_norms": _norms,
    "diag_ggn": _diag_ggn("exact"),
    "diag_ggn_mc": _diag_ggn("sampled"),
    "kflr": _kron("exact"),
    "kfac": _kron("sampled"),
}
"""Each quantity by name: a function of the pass. Adding a quantity is one function and one entry
here (and its name in :data:`FIRST_ORDER` or :data:`SECOND_ORDER`)."""


@partial(jax.jit, static_argnames=("net", "loss", "names", "samples"))
def _quantities(net, params, X, Y, loss, key, names, samples):
    pass_ = _Pass(net, params, X, Y, loss, key, samples)
    out = {name: pass_.get(name) for name in names if name != "loss"}
    out["loss"] = pass_.loss_value
    return {name: out[name] for name in names}


MAX_DRAWS = 2**31 - 1
"""The most draws (rows × samples) one call may take: one array's length in XLA's 32-bit indexing."""


def _check_samples(samples: Any, m: int) -> int:
    """``samples`` as a Python int ≥ 1 (NumPy integers pass; bool, floats and strings do not), with
    ``m × samples`` within :data:`MAX_DRAWS`."""
    if isinstance(samples, (bool, np.bool_)) or not isinstance(samples, (int, np.integer)):
        raise TypeError(f"samples must be a whole number ≥ 1, got {type(samples).__name__}: {samples!r}")
    samples = int(samples)
    if samples < 1:
        raise ValueError(f"samples must be a whole number ≥ 1, got {samples}")
    if m * samples > MAX_DRAWS:
        raise ValueError(f"samples={samples:,} over {m:,} rows asks for {m * samples:,} draws; at most "
                         f"{MAX_DRAWS:,} fit in one array (draw in several calls, or fewer per row)")
    return samples


def memory_needed(net: Network, m: int, itemsize: int, names: Sequence[str], samples: int = 1) -> dict[str, int]:
    """Bytes :func:`one_pass` will hold at its peak, per part, from the shapes alone.

    The passes: ``3 m Σ n_l`` numbers (pre-activations, activations, deltas). The Gram matrix: four
    ``m × m`` arrays (two layer Grams, their product, the running sum). Carried-back columns, ``c``
    per row (``n_L`` exact, ``samples`` sampled): the columns and their transports through every
    layer, ``3 m c Σ_{l≥1} n_l`` (the carry, BP2's temporaries, the Kronecker factors' reshaped
    copy), plus ``8 m c`` bytes of keys for the draws.
    """
    widths = tuple(int(np.prod(shape)) for shape in (net.input_shape, *net.out_shapes))
    later = sum(widths[1:])
    parts = {"the forward and backward passes": 3 * m * sum(widths) * itemsize}
    if "per_example_grad_gram" in names:
        parts["the Gram matrix"] = 4 * m * m * itemsize
    if {"diag_ggn", "kflr"} & set(names):
        parts["the output Hessian's columns carried back"] = 3 * m * widths[-1] * (widths[-1] + later) * itemsize
    if {"diag_ggn_mc", "kfac"} & set(names):
        parts["the sampled columns carried back"] = m * samples * (8 + 3 * later * itemsize)
    return parts


def _check_memory(net: Network, X: Array, names: Sequence[str], samples: int) -> None:
    m, itemsize = X.shape[0], np.dtype(X.dtype).itemsize
    parts = memory_needed(net, m, itemsize, names, samples)
    needed, available = sum(parts.values()), available_memory()
    if needed > available:
        largest = max(parts, key=parts.get)
        asked = f", samples={samples:,}" if {"diag_ggn_mc", "kfac"} & set(names) else ""
        raise ValueError(
            f"{', '.join(names)} on {m:,} rows{asked} needs about {needed / 1e9:.3g} GB ({largest}: "
            f"{parts[largest] / 1e9:.3g} GB), and this machine has {available / 1e9:.3g} GB available; "
            "take fewer rows at a time" + (" or fewer samples" if asked else "")
        )


def _check_curvature(net: Network, loss: Loss, names: Sequence[str]) -> None:
    output = net.activations[-1]
    canonical = output == loss.canonical
    if {"diag_ggn_mc", "kfac"} & set(names):
        if not canonical:
            raise ValueError(
                f"{'diag_ggn_mc' if 'diag_ggn_mc' in names else 'kfac_factors with a key'} samples targets from the "
                f"output's distribution, which is defined for the canonical pairs only ({loss.name} with "
                f"{loss.canonical.name if loss.canonical else 'none'}); with {output.name} outputs the draw would "
                "estimate the Fisher, not the GGN: use diag_ggn or kfac_factors without a key (exact)"
            )
        if loss.fused_sample is None:
            raise ValueError(f"{loss.name} has no fused_sample: it cannot draw targets from its output's distribution")
    if {"diag_ggn", "kflr"} & set(names):
        factor = loss.fused_hessian_factor if canonical else loss.hessian_factor
        if factor is None:
            raise ValueError(
                f"{loss.name} has no {'fused_hessian_factor' if canonical else 'hessian_factor'}: the curvature of a "
                "loss needs its Hessian factor written by hand, beside its gradient"
            )


def one_pass(
    net: Network,
    params: Sequence[Any],
    X: Array,
    Y: Array,
    loss: "Loss | str",
    names: Sequence[str],
    *,
    key: "Array | None" = None,
    samples: int = 1,
) -> dict[str, Any]:
    """Several quantities from one forward and one backward pass.

    Args:
      net, params, X, Y, loss: as in :func:`jbp.loss_and_grads`.
      names: any of :data:`QUANTITIES`: ``"grads"`` (the mean gradient),
        ``"sum_grad_squared"``, ``"grad_variance"``,
        ``"per_example_grad_gram"``, ``"per_example_grad_norms"``,
        ``"diag_ggn"``, ``"diag_ggn_mc"``, ``"kflr"`` (exact Kronecker
        factors), ``"kfac"`` (sampled ones).
      key: a ``jax.random.key``, needed by ``diag_ggn_mc`` and ``kfac``.
      samples: draws per sample for those two: a whole number ≥ 1, with
        ``m × samples`` at most :data:`MAX_DRAWS`.

    The memory the call will hold (:func:`memory_needed`: the passes, an
    ``m × m`` Gram matrix, the carried-back columns) is counted from the
    shapes and compared with the memory available before anything is
    allocated.

    Returns:
      ``{name: value}``, each value as its own function returns it, plus
      ``"loss"`` (the batch's mean cost, no L2).

    Raises:
      ValueError: also when the memory needed exceeds the memory available,
        naming both and the largest part; TypeError for ``samples`` that is
        not a whole number.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> X, Y = jnp.ones((5, 3)), jnp.tile(jnp.array([1.0, 0.0]), (5, 1))
      >>> out = jbp.one_pass(net, params, X, Y, jbp.softmax_cross_entropy, ["grad_variance", "kflr"])
      >>> sorted(out), out["kflr"][0].A.shape, out["kflr"][0].G.shape
      (['grad_variance', 'kflr', 'loss'], (4, 4), (4, 4))
    """
    loss = get_loss(loss)
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"names must be a sequence of quantity names, got {names!r}")
    unknown = [n for n in names if n not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantity {unknown[0]!r}; expected any of {', '.join(QUANTITIES)}")
    X, Y = check_batch(net, params, X, Y, loss)
    samples = _check_samples(samples, X.shape[0] if {"diag_ggn_mc", "kfac"} & set(names) else 1)
    _check_curvature(net, loss, names)
    _check_memory(net, X, names, samples)
    if {"diag_ggn_mc", "kfac"} & set(names):
        if key is None:
            raise TypeError("diag_ggn_mc and kfac draw targets: pass key=jax.random.key(seed)")
        check_key(key)
    else:
        key = jax.random.key(0)  # unused; keeps the compiled signature one
    ordered = tuple(dict.fromkeys(list(names) + ["loss"]))
    result = _quantities(net, params, X, Y, loss, key, ordered, samples)
    return finite_result(result, "one_pass", params, X, Y)


def sum_grad_squared(net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str") -> tuple[Dense, ...]:
    """The sum over the batch of every sample's squared gradient, entry by entry.

    .. math:: \\sum_i g_i \\odot g_i: \\quad
              \\sum_i (\\delta_i^l)^2 (a_i^{l-1})^{2\\,T} = (D \\odot D)^T (A \\odot A),
              \\qquad \\sum_i (\\delta_i^l)^2

    Args:
      net, params, X, Y, loss: as in :func:`jbp.loss_and_grads`.

    Returns:
      A tuple of :class:`~jbp.Dense` shaped like ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> s = jbp.sum_grad_squared(net, params, jnp.ones((5, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])],
      ...                          jbp.softmax_cross_entropy)
      >>> s[0].W.shape, bool((s[0].W >= 0).all())
      ((4, 3), True)
    """
    return one_pass(net, params, X, Y, loss, ["sum_grad_squared"])["sum_grad_squared"]


def grad_variance(net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str") -> tuple[Dense, ...]:
    """The variance of the per-sample gradients over the batch, entry by entry.

    .. math:: \\frac{1}{m} \\sum_i g_i^2 - \\Big(\\frac{1}{m} \\sum_i g_i\\Big)^2

    (the population variance, ``1/m``; multiply by ``m/(m-1)`` for the
    unbiased one). From :func:`sum_grad_squared`'s contraction and the mean
    gradient's, in the same pass; an entry that rounds below zero (no spread
    at all, up to rounding) is returned as 0.

    Returns:
      A tuple of :class:`~jbp.Dense` shaped like ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> v = jbp.grad_variance(net, params, jnp.ones((1, 3)), jnp.array([[1.0, 0.0]]), jbp.softmax_cross_entropy)
      >>> float(abs(v[1].W).max()) < 1e-6  # one sample: no spread
      True
    """
    return one_pass(net, params, X, Y, loss, ["grad_variance"])["grad_variance"]


def per_example_grad_gram(net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str") -> Array:
    """The Gram matrix of the per-sample gradients, ``G_ij = ⟨g_i, g_j⟩``.

    .. math:: G = \\sum_l (D^l D^{lT}) \\odot (\\bar A^{l-1} \\bar A^{l-1\\,T})

    since ``⟨δ_i āᵢᵀ, δ_j ā_jᵀ⟩_F = ⟨δ_i, δ_j⟩ ⟨ā_i, ā_j⟩`` (the bias is the
    column of ones in ``ā``). Its diagonal is the squared norms of
    :func:`jbp.per_example_grad_norms`.

    Returns:
      Shape ``(m, m)``, symmetric, positive semi-definite.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> jbp.per_example_grad_gram(net, params, jnp.ones((5, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])],
      ...                           jbp.softmax_cross_entropy).shape
      (5, 5)
    """
    return one_pass(net, params, X, Y, loss, ["per_example_grad_gram"])["per_example_grad_gram"]


def diag_ggn(net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str") -> tuple[Dense, ...]:
    """The diagonal of the generalized Gauss-Newton matrix, exactly.

    .. math:: \\operatorname{diag}\\Big(\\frac{1}{m} \\sum_i J_i^T H_i J_i\\Big)

    with ``H_i = S_i S_iᵀ`` the Hessian of the cost in the output (see the
    module docstring): each column of ``S_i`` is carried back by BP2, giving
    ``Δ_i^l`` (``n_l × c``), and the diagonal for ``W^l`` is
    ``(1/m) Σ_i (Σ_c Δ_{i,c}²) (a_i²)ᵀ``, for ``b^l`` ``(1/m) Σ_i Σ_c Δ_{i,c}²``.
    The cost is ``c`` backward passes (``c = n_L``), with no Jacobian formed.
    BackPACK's ``DiagGGNExact`` for a loss averaged over the batch.

    Returns:
      A tuple of :class:`~jbp.Dense` shaped like ``params``.

    Raises:
      ValueError: also for a loss with no hand-written Hessian factor.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> d = jbp.diag_ggn(net, params, jnp.ones((5, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])],
      ...                  jbp.softmax_cross_entropy)
      >>> d[1].W.shape, bool((d[1].W >= 0).all())
      ((2, 4), True)
    """
    return one_pass(net, params, X, Y, loss, ["diag_ggn"])["diag_ggn"]


def diag_ggn_mc(
    net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str", key: Array, samples: int = 1
) -> tuple[Dense, ...]:
    """A Monte-Carlo estimate of :func:`diag_ggn`, unbiased.

    For each sample and each of ``samples`` draws, targets ``ŷ`` are drawn
    from the distribution the output defines and the gradient
    ``s = ∇_z C(σ(z), ŷ)`` (``E[s sᵀ] = H``) is carried back in place of the
    columns of ``H^{1/2}``: one column per draw instead of ``n_L``. Defined
    for the canonical pairs only (for others the draw estimates the Fisher,
    not the GGN). BackPACK's ``DiagGGNMC``.

    Args:
      key: a ``jax.random.key``.
      samples: draws per sample, ≥ 1.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> d = jbp.diag_ggn_mc(net, params, jnp.ones((5, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])],
      ...                     jbp.softmax_cross_entropy, jax.random.key(1), samples=4)
      >>> d[0].b.shape
      (4,)
    """
    return one_pass(net, params, X, Y, loss, ["diag_ggn_mc"], key=key, samples=samples)["diag_ggn_mc"]


def kfac_factors(
    net: Network,
    params: Sequence[Any],
    X: Array,
    Y: Array,
    loss: "Loss | str",
    key: "Array | None" = None,
    samples: int = 1,
) -> tuple[KronFactors, ...]:
    """Kronecker factors of every layer's curvature block: KFLR exactly, KFAC sampled.

    .. math:: A^l = \\frac{1}{m} \\sum_i \\bar a_i^{l-1} \\bar a_i^{l-1\\,T}, \\qquad
              G^l = \\frac{1}{m} \\sum_i S_i^l S_i^{lT}

    ``S_i^l`` are the columns of ``H_i^{1/2}`` carried back by BP2 ("KFLR",
    without a key), or ``samples`` sampled output gradients (divided by
    ``samples``; "KFAC", with a key). For one sample, ``kron(G, A)`` is
    exactly the GGN block of the layer over ``[W b]`` flattened row by row.

    Returns:
      One :class:`KronFactors` ``(A, G)`` per layer.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> f = jbp.kfac_factors(net, params, jnp.ones((5, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])],
      ...                      jbp.softmax_cross_entropy)
      >>> [(k.A.shape, k.G.shape) for k in f]
      [((4, 4), (4, 4)), ((5, 5), (2, 2))]
    """
    name = "kflr" if key is None else "kfac"
    return one_pass(net, params, X, Y, loss, [name], key=key, samples=samples)[name]
