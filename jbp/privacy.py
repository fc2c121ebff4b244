"""Private training in one backward pass: clipped per-sample gradients from the deltas,
DP-SGD's noise as an optax step, and the accountant behind one small function.

Differentially private SGD (Abadi et al. 2016) clips every sample's gradient
``g_i`` to a norm ``C``, sums, adds Gaussian noise of standard deviation
``σ C`` and divides by the expected batch size. Autodiff gets the per-sample
norms by materializing the per-sample gradients (``vmap(grad)``) or running
a second backward pass (ghost clipping); jbp holds the deltas:

.. math::

    \\|g_i\\|^2 = \\sum_l \\|\\delta_i^l\\|^2 (\\|a_i^{l-1}\\|^2 + 1), \\qquad
    c_i = \\min(1, C / \\|g_i\\|), \\qquad
    \\sum_i c_i g_i = \\big((c \\odot D^l)^T \\bar A^{l-1}\\big)_l

one forward pass, one backward pass, one reweighted contraction, and no
per-sample gradient anywhere (book-keeping clipping, Bu et al. 2023).

- :func:`clipped_grads`: the clipped mean gradient of a batch.
- :func:`dp_noise`: ``N(0, stddev²)`` added to every update, an optax
  transformation whose state is its key and a step count (so a run that is
  checkpointed and resumed draws the same noise).
- :func:`dp_sgd`: the privacy options for :func:`jbp.fit`, which then
  samples each step's batch by Poisson sampling (every sample in
  independently with probability ``q = batch_size / n``), clips through the
  same contraction, divides by the expected batch size, adds the noise and
  hands the result to any optax optimizer.
- :func:`epsilon` and :func:`noise_for_epsilon`: Google's ``dp-accounting``
  (the ``privacy`` extra), RDP accounting of the Poisson-subsampled Gaussian.
"""

import contextlib
import logging
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jbp.batch import batch_passes, check_batch
from jbp.checks import check_key, finite_result, is_traced
from jbp.losses import Loss, get_loss
from jbp.network import MLP, Dense
from jbp.parallel import contract

Array = jax.Array


def _check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    if is_traced(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'≥' if allow_zero else '>'} 0, got {value}")
    return value


def clip_factors(norms: Array, max_norm: "float | Array") -> Array:
    """``c_i = min(1, C / ‖g_i‖)`` (1 where the gradient is zero)."""
    tiny = jnp.finfo(norms.dtype).tiny
    return jnp.minimum(1.0, max_norm / jnp.maximum(norms, tiny))


def clipped_sum(net: MLP, params, X: Array, Y: Array, loss: Loss, max_norm, weights: Array):
    """``Σ_i w_i C(x_i, y_i)``, ``Σ_i w_i c_i g_i`` (one tuple of Dense) and the norms ``‖g_i‖``.

    ``weights`` (0 or 1) mark the rows that count, so that a padded batch of
    fixed shape holds a sample of any size. Uncompiled and unchecked: the
    building block of :func:`clipped_grads` and of DP-SGD's epoch.
    """
    traces, errors, costs = batch_passes(net, params, X, Y, loss)
    inputs = traces.activations[:-1]
    norms = jnp.sqrt(sum(jnp.sum(d**2, axis=1) * (jnp.sum(a**2, axis=1) + 1) for d, a in zip(errors, inputs)))
    factors = weights * clip_factors(norms, max_norm)
    sums = tuple(Dense(W=contract(factors[:, None] * d, a), b=jnp.sum(factors[:, None] * d, axis=0)) for d, a in zip(errors, inputs))
    return jnp.sum(weights * costs), sums, norms


@partial(jax.jit, static_argnames=("net", "loss"))
def _clipped_grads(net, params, X, Y, loss, max_norm):
    m = X.shape[0]
    cost, sums, _ = clipped_sum(net, params, X, Y, loss, max_norm, jnp.ones(m, X.dtype))
    return cost / m, jax.tree.map(lambda s: s / m, sums)


def clipped_grads(
    net: MLP, params, X: Array, Y: Array, loss: "Loss | str", max_norm: float
) -> tuple[Array, tuple[Dense, ...]]:
    """The batch's mean gradient with every sample's gradient clipped to ``max_norm``, in one pass.

    .. math:: \\frac{1}{m} \\sum_i g_i \\min\\Big(1, \\frac{C}{\\|g_i\\|}\\Big)

    with ``g_i`` as :func:`jbp.per_example_grads` gives it (no ``1/m``, no
    L2); the norms come from the deltas and the sum is one reweighted
    contraction ``(c ⊙ δ)ᵀ ā``: no per-sample gradient is formed.

    Args:
      net, params, X, Y, loss: as in :func:`jbp.loss_and_grads`.
      max_norm: ``C``, finite and > 0.

    Returns:
      ``(J, grads)``: the mean cost (``loss_and_grads``' with ``l2 = 0``) and
      the clipped mean gradient, a tuple of :class:`~jbp.Dense`.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([3, 4, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> X, Y = jnp.ones((5, 3)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])]
      >>> J, grads = jbp.clipped_grads(net, params, X, Y, jbp.softmax_cross_entropy, max_norm=1e-3)
      >>> bool(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)) <= 1e-6 + 1e-12)
      True
    """
    loss = get_loss(loss)
    max_norm = _check_positive("max_norm", max_norm)
    X, Y = check_batch(net, params, X, Y, loss)
    result = _clipped_grads(net, params, X, Y, loss, jnp.asarray(max_norm, params[0].W.dtype))
    return finite_result(result, "clipped_grads", params, X, Y)


# --- the noise, as an optax step


class DPNoiseState(NamedTuple):
    """The noise's key and how many steps have drawn from it."""

    key: Array
    count: Array


def dp_noise(stddev: float, key: Array) -> optax.GradientTransformation:
    """Adds ``N(0, stddev²)`` to every entry of the updates: DP-SGD's noise as an optax step.

    For DP-SGD with clipping norm ``C``, noise multiplier ``σ`` and expected
    batch size ``B``, applied to the clipped sum divided by ``B``, the
    standard deviation is ``σ C / B``. One draw per step and parameter array
    (threefry, ``jax.random.normal``) from the keys split off
    ``fold_in(key, step)``; the state is the key and the step count, so a
    checkpointed run draws the same noise when resumed.

    Example:
      >>> import jax, jax.numpy as jnp, optax, jbp
      >>> opt = optax.chain(jbp.dp_noise(0.1, jax.random.key(0)), optax.sgd(0.5))
      >>> params = {"w": jnp.zeros(3)}
      >>> updates, state = opt.update({"w": jnp.zeros(3)}, opt.init(params))
      >>> updates["w"].shape
      (3,)
    """
    stddev = _check_positive("stddev", stddev, allow_zero=True)
    check_key(key)

    def init(params):
        del params
        return DPNoiseState(key=key, count=jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        del params
        leaves, tree = jax.tree.flatten(updates)
        keys = jax.random.split(jax.random.fold_in(state.key, state.count), len(leaves))
        # One draw per leaf, not one flat draw cut into leaves: XLA fuses the cutting into the
        # draw's consumers and then generates the whole flat draw again for every leaf (measured:
        # the noise cost 15-50 ms a step inside fit's scan, against 3.7 ms drawn leaf by leaf).
        noised = [u + stddev * jax.random.normal(k, u.shape, u.dtype) for u, k in zip(leaves, keys)]
        return jax.tree.unflatten(tree, noised), DPNoiseState(state.key, state.count + 1)

    return optax.GradientTransformation(init, update)


class DPSGD(NamedTuple):
    """DP-SGD's options for :func:`jbp.fit` (see :func:`dp_sgd`)."""

    max_norm: float
    noise_multiplier: float
    key: Array
    delta: "float | None" = None


def dp_sgd(max_norm: float, noise_multiplier: float, key: Array, delta: "float | None" = None) -> DPSGD:
    """The options that make :func:`jbp.fit` train with DP-SGD.

    ``fit(..., batch_size=B, privacy=jbp.dp_sgd(C, σ, key, delta=δ))`` draws
    each step's batch by Poisson sampling with ``q = B / n`` (an epoch is
    ``round(n / B)`` steps), clips every sample's gradient to ``C``, sums,
    divides by ``B``, adds ``N(0, (σ C / B)²)`` (:func:`dp_noise`, keyed by
    ``key``) and applies the optimizer. With ``delta``, every epoch's record
    holds the ``epsilon`` spent so far (:func:`epsilon`).

    Raises:
      ValueError: ``max_norm`` ≤ 0 or not finite, a noise multiplier < 0,
        ``delta`` outside ``(0, 1)``.
      TypeError: a key that is not a key.
    """
    max_norm = _check_positive("max_norm", max_norm)
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    check_key(key)
    if delta is not None:
        _check_delta(delta)
    return DPSGD(max_norm, noise_multiplier, key, delta)


def _check_delta(delta: Any) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    return float(delta)


def _check_rate(sampling_rate: Any) -> float:
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float)) or not 0 < sampling_rate <= 1:
        raise ValueError(f"the sampling rate must lie in (0, 1], got {sampling_rate!r}")
    return float(sampling_rate)


# --- the accountant


def _accounting():
    try:
        import dp_accounting
    except ImportError:
        raise ImportError("privacy accounting uses Google's dp-accounting: pip install 'jbp[privacy]'") from None
    return dp_accounting


@contextlib.contextmanager
def _quiet():
    """dp-accounting logs, through absl, every RDP order it cannot evaluate and leaves out (a
    warning per order, harmless: the bound uses the others); kept out of the user's terminal."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _event(dp_accounting, noise_multiplier: float, sampling_rate: float, steps: int):
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian), steps)


def epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
    """The ε of ``(ε, δ)``-differential privacy after ``steps`` Poisson-subsampled Gaussian steps.

    RDP accounting by ``dp_accounting.rdp.RdpAccountant`` of the event
    ``SelfComposed(PoissonSampled(q, Gaussian(σ)), steps)``: the guarantee of
    DP-SGD as :func:`jbp.fit` runs it. ``inf`` without noise.

    Raises:
      ValueError: a noise multiplier < 0, ``sampling_rate`` outside
        ``(0, 1]``, ``delta`` outside ``(0, 1)``, steps < 0.
      ImportError: without the ``privacy`` extra.
    """
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    sampling_rate, delta = _check_rate(sampling_rate), _check_delta(delta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a whole number ≥ 0, got {steps!r}")
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    dp_accounting = _accounting()
    with _quiet():
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(_event(dp_accounting, noise_multiplier, sampling_rate, steps))
        return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, sampling_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier σ whose :func:`epsilon` after ``steps`` is at most ``target``.

    ``dp_accounting.calibrate_dp_mechanism`` over the same RDP accountant.

    Raises:
      ValueError: a target ε ≤ 0 or not finite, and as :func:`epsilon`.
    """
    target = _check_positive("the target epsilon", target)
    sampling_rate, delta = _check_rate(sampling_rate), _check_delta(delta)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number ≥ 1, got {steps!r}")
    dp_accounting = _accounting()
    with _quiet():
        return float(dp_accounting.calibrate_dp_mechanism(
        dp_accounting.rdp.RdpAccountant, lambda sigma: _event(dp_accounting, sigma, sampling_rate, steps),
            target, delta, bracket_interval=dp_accounting.ExplicitBracketInterval(1e-3, 1e3),
        ))
