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
  transformation whose state is its key and a step count.
- :func:`dp_sgd`: the privacy options for :func:`jbp.fit`, which then
  samples each step's batch by Poisson sampling (every sample in
  independently with probability ``q = batch_size / n``), clips through the
  same contraction, divides by the expected batch size, adds the noise and
  hands the result to any optax optimizer.
- :func:`epsilon` and :func:`noise_for_epsilon`: Google's ``dp-accounting``
  (the ``privacy`` extra), RDP accounting of the Poisson-subsampled Gaussian.

**Where the randomness comes from.** The guarantee holds only if nobody can
redraw the noise or the batches: by default :func:`dp_sgd` draws its key from
the operating system's entropy (:func:`os_key`, ``secrets.token_bytes``
wrapped into a threefry key), and the resulting :class:`DPSGD` says so
(``secure=True``). A run with such a key writes it nowhere (:func:`public_state`
replaces it in what a checkpoint holds); continued, it draws a fresh key, so
it does not repeat bit for bit (each step's noise is then fresh and
independent, which the accounting assumes anyway). A key passed in makes the
run reproducible and **not private**: whoever knows the key (or the seed it
came from) can redraw the noise and subtract it (Opacus' ``secure_mode``
warns the same way).

**What ε covers.** The ε a run reports is that of every step behind the
parameters it hands out, counted over the steps that actually ran; the
training part's own statistics (loss, accuracy, batch sizes) are outside it,
and :func:`jbp.fit` does not publish them for a private run unless asked.
``δ`` must lie below ``1/n`` (:func:`check_delta`): a δ of ``1/n`` or more
admits a mechanism that publishes one record whole.
"""

import contextlib
import logging
import math
import secrets
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbp import parallel
from jbp.batch import batch_passes, check_batch, sq_norms, with_l2
from jbp.checks import check_key, finite_result, is_traced
from jbp.losses import Loss, get_loss
from jbp.network import Dense, Network, params_dtype
from jbp.parallel import shard_rows
from jbp.update import apply

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


def clipped_sum(net: Network, params, X: Array, Y: Array, loss: Loss, max_norm, weights: Array):
    """``Σ_i w_i C(x_i, y_i)``, ``Σ_i w_i c_i g_i`` (one tuple of Dense) and the norms ``‖g_i‖``.

    ``weights`` (0 or 1) mark the rows that count, so that a padded batch of
    fixed shape holds a sample of any size. Uncompiled and unchecked: the
    building block of :func:`clipped_grads` and of DP-SGD's epoch.
    """
    traces, errors, costs = batch_passes(net, params, X, Y, loss)
    inputs = traces.activations[:-1]
    norms = jnp.sqrt(sq_norms(net, params, inputs, errors))  # ‖δ‖²(‖a‖² + 1) summed, for dense layers
    factors = weights * clip_factors(norms, max_norm)
    sums = tuple(layer.weighted_grads(p, a, d, factors)  # (c ⊙ D)ᵀ Ā for a dense layer
                 for layer, p, a, d in zip(net.layers, params, inputs, errors))
    return jnp.sum(weights * costs), sums, norms


@partial(jax.jit, static_argnames=("net", "loss"))
def _clipped_grads(net, params, X, Y, loss, max_norm):
    m = X.shape[0]
    cost, sums, _ = clipped_sum(net, params, X, Y, loss, max_norm, jnp.ones(m, X.dtype))
    return cost / m, jax.tree.map(lambda s: s / m, sums)


def clipped_grads(
    net: Network, params, X: Array, Y: Array, loss: "Loss | str", max_norm: float
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
    result = _clipped_grads(net, params, X, Y, loss, jnp.asarray(max_norm, params_dtype(params)))
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
    run resumed with the same key draws the same noise (:func:`jbp.fit`
    puts its :class:`DPSGD`'s noise key into the state it is given, and a
    checkpoint of a secure run holds a placeholder instead, :func:`public_state`).

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


def os_key() -> Array:
    """A threefry key from the operating system's entropy (64 bits, ``secrets.token_bytes``):
    a key nobody else knows, which no seed reproduces."""
    data = np.frombuffer(secrets.token_bytes(8), np.uint32).copy()
    return jax.random.wrap_key_data(data, impl="threefry2x32")


def placeholder_key(key: Array) -> Array:
    """A fixed key of ``key``'s kind (all bits zero): what a secure run writes where its key would go."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        data = jnp.zeros(jax.random.key_data(key).shape, jnp.uint32)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))
    return jnp.zeros_like(key)


class _DPSGDFields(NamedTuple):
    max_norm: float
    noise_multiplier: float
    key: Array
    delta: "float | None" = None
    secure: bool = False


def _checked_fields(max_norm, noise_multiplier, key, delta, secure) -> tuple:
    max_norm = _check_positive("max_norm", max_norm)
    noise_multiplier = _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    if key is None:
        if secure is False:
            raise ValueError("key=None draws the key from the operating system, which is secure; "
                             "pass a key of your own for a reproducible run")
        key, secure = os_key(), True
    else:
        check_key(key)
        if secure is None:
            secure = False
        elif not isinstance(secure, bool):
            raise TypeError(f"secure must be True or False, got {type(secure).__name__}: {secure!r}")
        elif secure:
            raise ValueError("secure=True holds only for a key drawn from the operating system (key=None): "
                             "a key passed in is known to whoever made it")
    if delta is not None:
        delta = _check_delta(delta)
    return max_norm, noise_multiplier, key, delta, secure


class DPSGD(_DPSGDFields):
    """DP-SGD's options for :func:`jbp.fit` (see :func:`dp_sgd`), checked when built.

    Attributes:
      max_norm: the clipping norm ``C``, finite and > 0.
      noise_multiplier: ``σ``, finite and ≥ 0.
      key: the key that draws both the noise and the Poisson batches (drawn
        from the operating system when built with ``key=None``).
      delta: the δ the run accounts ε at, in ``(0, 1)`` and below ``1/n``, or
        ``None`` for no accounting.
      secure: whether the key came from the operating system's entropy; a run
        whose key was passed in is reproducible and not private.

    Raises:
      ValueError, TypeError: as :func:`dp_sgd`, and for ``secure=True`` with a
        key passed in.
    """

    __slots__ = ()

    def __new__(cls, max_norm: float, noise_multiplier: float, key: "Array | None" = None,
                delta: "float | None" = None, secure: "bool | None" = None) -> "DPSGD":
        return super().__new__(cls, *_checked_fields(max_norm, noise_multiplier, key, delta, secure))

    def __reduce__(self):  # copies and pickles keep the fields as they are (``secure`` with its key)
        return (DPSGD._make, (tuple(self),))

    def __repr__(self) -> str:  # a secure key is never printed
        key = "<from the operating system, not shown>" if self.secure else repr(self.key)
        return (f"DPSGD(max_norm={self.max_norm!r}, noise_multiplier={self.noise_multiplier!r}, key={key}, "
                f"delta={self.delta!r}, secure={self.secure!r})")


# a pytree like any NamedTuple, rebuilt without the constructor's check (which refuses a key with secure=True)
jax.tree_util.register_pytree_node(DPSGD, lambda p: (tuple(p), None), lambda _, fields: DPSGD._make(fields))


def check_privacy(privacy: Any) -> DPSGD:
    """Refuses anything but a :class:`DPSGD` with sound fields: one changed with ``_replace`` or
    rebuilt with ``_make`` is checked again (clip, σ, key, δ; ``secure`` a bool). ``secure`` records
    where the key came from; it cannot be checked against the key itself, so a field set by hand
    to ``True`` is the caller's claim."""
    if not isinstance(privacy, DPSGD):
        raise TypeError(f"privacy must be what jbp.dp_sgd returns, got {type(privacy).__name__}")
    if not isinstance(privacy.secure, bool):
        raise TypeError(f"privacy.secure must be True or False, got {privacy.secure!r}")
    check_key(privacy.key, "privacy.key")  # before the fields' check, which would draw a key for None
    _checked_fields(privacy.max_norm, privacy.noise_multiplier, privacy.key, privacy.delta, None)  # raises only
    return privacy


def check_delta(delta: float, n: int, name: str = "delta") -> None:
    """Refuses ``δ ≥ 1/n`` for ``n`` records: such a δ admits a mechanism that publishes one record whole.

    Raises:
      ValueError: naming ``n`` and ``1/n``.
    """
    if delta * n >= 1:
        raise ValueError(f"{name} {delta:g} must lie below 1/n = {1 / n:.3g} for the n = {n} training samples "
                         "(a δ of 1/n or more allows publishing a sample whole)")


def dp_keys(privacy: DPSGD) -> tuple[Array, Array]:
    """The noise's key and the Poisson sampling's key, both split off ``privacy.key``."""
    noise, sampling = jax.random.split(privacy.key)
    return noise, sampling


def _noise_states(state: Any, change) -> Any:
    is_noise = lambda leaf: isinstance(leaf, DPNoiseState)  # noqa: E731
    return jax.tree.map(lambda leaf: change(leaf) if is_noise(leaf) else leaf, state, is_leaf=is_noise)


def with_noise_key(opt_state: Any, key: Array) -> Any:
    """The optimizer state with the key of every :func:`dp_noise` state in it set to ``key``
    (the step count kept): how :func:`jbp.fit` continues a run with its own key."""
    return _noise_states(opt_state, lambda state: DPNoiseState(key, state.count))


def public_state(opt_state: Any) -> Any:
    """The optimizer state with the key of every :func:`dp_noise` state in it replaced by a fixed
    placeholder: what a secure run may write into a checkpoint."""
    return _noise_states(opt_state, lambda state: DPNoiseState(placeholder_key(state.key), state.count))


def dp_sgd(max_norm: float, noise_multiplier: float, key: "Array | None" = None,
           delta: "float | None" = None) -> DPSGD:
    """The options that make :func:`jbp.fit` train with DP-SGD.

    ``fit(..., batch_size=B, privacy=jbp.dp_sgd(C, σ, delta=δ))`` draws
    each step's batch by Poisson sampling with ``q = B / n`` (an epoch is
    ``round(n / B)`` steps), clips every sample's gradient to ``C``, sums,
    divides by ``B``, adds ``N(0, (σ C / B)²)`` (:func:`dp_noise`) and
    applies the optimizer. With ``delta``, every epoch's record holds the
    ``epsilon`` of every step so far (:func:`epsilon`).

    The noise and the batches are drawn from two keys split off ``key``.
    ``key=None`` (the default) draws it from the operating system's entropy
    (:func:`os_key`): the run is private, and cannot be repeated bit for
    bit. A key passed in (``jax.random.key(seed)``) makes the run
    reproducible and **not private**: anyone who knows it can redraw the
    noise and subtract it; for experiments only. ``DPSGD.secure`` says which.

    Raises:
      ValueError: ``max_norm`` ≤ 0 or not finite, a noise multiplier < 0,
        ``delta`` outside ``(0, 1)``.
      TypeError: a key that is not a key.

    Example:
      >>> import jbp
      >>> private = jbp.dp_sgd(1.0, 1.1, delta=1e-5)
      >>> private.secure
      True
    """
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


# --- DP-SGD in fit: the private optimizer and the Poisson epoch


def private_optimizer(privacy: DPSGD, optimizer: optax.GradientTransformation, batch_size: int):
    """DP-SGD's noise, ``N(0, (σ C / B)²)`` on the clipped sum divided by the expected batch
    size ``B``, then the optimizer: the transformation :func:`fit` applies with ``privacy``.
    The noise's key is the first of :func:`jbp.privacy.dp_keys`."""
    stddev = privacy.noise_multiplier * privacy.max_norm / batch_size
    return optax.chain(dp_noise(stddev, dp_keys(privacy)[0]), optimizer)

def poisson_capacities(n: int, batch_size: int, multiple: int = 1) -> tuple[int, ...]:
    """The padded sizes a Poisson-sampled batch is processed at: the expected size times 1 1/16,
    1 1/8, 1 1/4, 1 1/2 and 2, then ``n`` (so that any draw fits, however unlikely); each
    rounded up to a ``multiple`` of the devices that share it."""
    sizes = {min(n, multiple * math.ceil(batch_size * f / multiple)) for f in (1.0625, 1.125, 1.25, 1.5, 2.0)} | {n}
    return tuple(sorted(sizes))

@partial(jax.jit, static_argnames=("net", "loss", "optimizer", "batch_size", "l2", "guard", "mesh"))
def poisson_epoch(net, params, opt_state, X, Y, key, max_norm, *, loss, optimizer, batch_size, l2, guard=False,
                   mesh=None):
    """One epoch of DP-SGD: ``round(n / B)`` steps, each on a Poisson sample (every row in with
    probability ``q = B / n``), clipped to ``max_norm``, summed, divided by ``B``; the noise is
    the first transformation of ``optimizer``.

    Shapes under ``jit``: the sampled rows (a mask over all ``n``, its count
    and ``jnp.nonzero``) are gathered into the smallest of a few padded sizes
    that holds them (:func:`poisson_capacities`), chosen by ``lax.switch``;
    padding rows have weight 0 in the clipped sum. Only the chosen size's
    branch runs, so the padding costs at most a sixteenth of the expected
    batch in the common case, and no draw is ever cut short.
    """
    n = X.shape[0]
    q = batch_size / n
    capacities = poisson_capacities(n, batch_size, 1 if mesh is None else parallel.batch_devices(mesh))
    steps = max(1, round(n / batch_size))

    def step(carry, k):
        params = carry[0]
        mask = jax.random.bernoulli(k, q, (n,))
        count = jnp.sum(mask)

        def at(capacity):
            def run(_):
                rows = jnp.nonzero(mask, size=capacity, fill_value=0)[0]
                weights = (jnp.arange(capacity) < count).astype(X.dtype)
                batch = (X[rows], Y[rows], weights)
                if mesh is not None:
                    batch = tuple(shard_rows(part, mesh) for part in batch)
                return clipped_sum(net, params, *batch[:2], loss, max_norm, batch[2])[:2]

            return run

        branch = jnp.searchsorted(jnp.asarray(capacities), count)
        cost, sums = jax.lax.switch(branch, [at(c) for c in capacities], None)
        grads = with_l2(net, params, sums, batch_size, l2 / n)  # Σ c_i g_i / B + (λ/n) W
        J = cost / jnp.maximum(count, 1)
        # the guard judges the released parameters and state only, never the samples' costs
        carry, ok = apply(net, optimizer, carry, grads, jnp.zeros_like(J), guard)
        return carry, (J, ok, count)

    carry = (params, opt_state, None, jnp.array(True))
    carry, (costs, ok, counts) = jax.lax.scan(step, carry, jax.random.split(key, steps))
    return carry[0], carry[1], None, costs, ok, counts
