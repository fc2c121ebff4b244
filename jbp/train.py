"""Training: any optax optimizer on jbp's hand-written gradients.

One epoch is one compiled program: a ``lax.scan`` over the minibatches of a
shuffled order, each step ``loss_and_grads`` then ``optimizer.update`` then
``optax.apply_updates``, and a last, smaller step for the samples left over
(unless ``drop_last``). Python runs once per epoch. Minibatches are gathered
on the device from the epoch's permutation, so the data set is never copied.

The shuffle of epoch ``e`` comes from ``jax.random.fold_in(key, e)``: the same
key and data give the same parameters bit for bit, and a run resumed after
epoch ``e`` continues exactly as if it had never stopped. A private run
(``privacy``) draws its batches and its noise from its :class:`~jbp.DPSGD`'s
key instead, by default one from the operating system's entropy, which no
run repeats (:mod:`jbp.privacy`).

L2 follows Coursera's full-set cost: with ``n`` training samples, each step's
gradient is ``(1/m_b) Σ δ a^T + (λ/n) W``, an unbiased estimate of the gradient
of ``J = (1/n) Σ C + (λ/2n) Σ ‖W‖²`` (the weight decay of Nielsen's
``network2.py``, ``(1 - ηλ/n) w``).
"""

import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbp.batch import check_batch, forward_costs, loss_and_grads
from jbp.checks import all_finite, check_key
from jbp.losses import Loss, get_loss
from jbp.network import MLP, Dense, check_params
from jbp.feedback import Feedback, angle, check_feedback
from jbp import parallel
from jbp.parallel import shard_rows
from jbp.privacy import (DPSGD, check_delta, check_privacy, clipped_sum, dp_keys, dp_noise, epsilon, public_state,
                          with_noise_key)

Array = jax.Array


class FitResult(NamedTuple):
    """What :func:`fit` returns.

    Attributes:
      params: the trained parameters (with early stopping, those of the best epoch).
      opt_state: the optimizer's state after the last step.
      history: one dict per epoch (see :func:`fit`).
      best_epoch: with early stopping, the epoch whose validation loss was
        lowest (its parameters are ``params``); ``None`` without.
      stopped_early: whether early stopping ended the run before ``epochs``.
      feedback: the feedback rule after training (a Kolen-Pollack rule's
        matrices have learned), or ``None`` for backprop.
    """

    params: tuple[Dense, ...]
    opt_state: Any
    history: list[dict]
    best_epoch: "int | None" = None
    stopped_early: bool = False
    feedback: Any = None


class TrainingDiverged(FloatingPointError):
    """A step's loss was NaN or infinite. ``params`` and ``opt_state`` are
    the last finite ones, from before that step; ``history`` holds the epochs
    that finished. For a private run, ``steps`` counts the private steps
    behind ``params`` (those of the finished epochs and of the failing epoch
    before the failing step) and ``epsilon`` is their ε (None without a δ;
    ∞ without noise); both None otherwise."""

    def __init__(self, message: str, epoch: int, step: int, params, opt_state, history,
                 steps: "int | None" = None, epsilon: "float | None" = None):
        super().__init__(message)
        self.epoch, self.step = epoch, step
        self.params, self.opt_state, self.history = params, opt_state, history
        self.steps, self.epsilon = steps, epsilon


def targets_are_classes(Y: Any) -> bool:
    """Whether ``Y`` holds class targets: 0/1 entries, one 1 per row (or one 0/1 output)."""
    Y = np.asarray(Y)
    if not np.all((Y == 0) | (Y == 1)):
        return False
    return Y.shape[1] == 1 or bool(np.all(Y.sum(axis=1) == 1))


def predicted_classes(outputs: Array) -> Array:
    """The class each row of outputs ``(m, n_L)`` predicts: the largest output, or ``a > ½`` for one output."""
    outputs = jnp.asarray(outputs)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] > 0.5).astype(jnp.int32)
    return jnp.argmax(outputs, axis=1)


def confusion_matrix(net: MLP, params: Sequence[Dense], X: Array, labels: Array, n_classes: int,
                     chunk: int = 4096) -> np.ndarray:
    """Counts ``C[t, p]`` of samples of class ``t`` predicted as ``p``, from class indices ``labels``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([2, 3, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> int(jbp.confusion_matrix(net, params, jnp.ones((5, 2)), jnp.array([0, 1, 0, 1, 1]), 2).sum())
      5
    """
    from jbp.batch import predict

    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(X) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be one class index per row of X ({len(X)}), got {labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    counts = np.zeros((n_classes, n_classes), np.int64)
    for start in range(0, len(X), chunk):
        guess = np.asarray(predicted_classes(predict(net, params, X[start : start + chunk])))
        np.add.at(counts, (labels[start : start + chunk], guess), 1)
    return counts


def _correct(outputs: Array, Y: Array) -> Array:
    """1 where the prediction is the target class: argmax, or a > ½ for one output."""
    if Y.shape[1] == 1:
        return ((outputs[:, 0] > 0.5) == (Y[:, 0] > 0.5)).astype(outputs.dtype)
    return (jnp.argmax(outputs, axis=1) == jnp.argmax(Y, axis=1)).astype(outputs.dtype)


@partial(jax.jit, static_argnames=("net", "loss", "classes", "chunk"))
def _evaluate(net, params, X, Y, loss, classes, chunk):
    n = X.shape[0]

    def sums(X, Y):
        traces, costs = forward_costs(net, params, X, Y, loss)
        correct = jnp.sum(_correct(traces.activations[-1], Y)) if classes else 0.0
        return jnp.stack([jnp.sum(costs), correct])

    def add_chunk(i, total):
        rows = partial(jax.lax.dynamic_slice_in_dim, start_index=i * chunk, slice_size=chunk)
        return total + sums(rows(X), rows(Y))

    full = n // chunk
    total = jnp.zeros(2, X.dtype)
    if full:
        total = jax.lax.fori_loop(0, full, add_chunk, total)
    if n % chunk:
        total = total + sums(X[full * chunk :], Y[full * chunk :])
    return total / n


def evaluate(
    net: MLP, params: Sequence[Dense], X: Array, Y: Array, loss: "Loss | str", chunk: int = 4096
) -> dict:
    """The mean per-sample cost over a data set, and the accuracy for class targets.

    The set is processed ``chunk`` rows at a time, so memory stays bounded.

    Returns:
      ``{"loss": mean C}``, plus ``"accuracy"`` when ``Y`` holds classes
      (one-hot rows, or a single 0/1 output judged at ``a > 0.5``).

    Raises:
      ValueError, TypeError, FloatingPointError: as :func:`jbp.loss_and_grads`.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([2, 3, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> sorted(jbp.evaluate(net, params, jnp.ones((5, 2)), jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])],
      ...                     jbp.softmax_cross_entropy))
      ['accuracy', 'loss']
    """
    loss = get_loss(loss)
    X, Y = check_batch(net, params, X, Y, loss)
    metrics = _metrics(net, params, X, Y, loss, targets_are_classes(Y), chunk)
    if not np.all(np.isfinite(list(metrics.values()))):
        raise FloatingPointError(f"evaluate overflowed: {metrics} although every input is finite")
    return metrics


def _metrics(net, params, X, Y, loss, classes, chunk=4096) -> dict:
    """:func:`evaluate` on data already checked."""
    cost, correct = _evaluate(net, params, X, Y, loss, classes, int(chunk))
    return {"loss": float(cost), "accuracy": float(correct)} if classes else {"loss": float(cost)}


def _step(net, loss, optimizer, l2, n, guard, compute_dtype=None):
    """One training step on a minibatch ``(X, Y)``: the rule's gradient, then the optimizer.

    With a ``compute_dtype`` (mixed precision), the passes run on copies of the
    parameters, the feedback matrices and the minibatch in that dtype; the
    gradient comes back in the parameters' own dtype for the optimizer."""

    def step(carry, batch):
        X, Y = batch
        params, feedback = carry[0], carry[2]
        if compute_dtype is not None:
            params, feedback, X, Y = jax.tree.map(lambda x: x.astype(compute_dtype), (params, feedback, X, Y))
        share = l2 * X.shape[0] / n  # this minibatch's share of λ/(2n) Σ‖W‖²
        J, grads = loss_and_grads(net, params, X, Y, loss, share, feedback=feedback)
        if compute_dtype is not None:
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, carry[0])
            J = J.astype(carry[0][0].W.dtype)
        carry, ok = _apply(optimizer, carry, grads, J, guard)
        return carry, (J, ok)

    return step


@partial(jax.jit, static_argnames=("net", "loss", "optimizer", "batch_size", "drop_last", "l2", "guard", "mesh",
                                   "compute_dtype"))
def _epoch(net, params, opt_state, X, Y, key, feedback=None, *, loss, optimizer, batch_size, drop_last, l2,
           guard=False, mesh=None, compute_dtype=None):
    """One epoch: the scan over full minibatches, then the remainder. Returns
    the new params, state and feedback rule, every step's minibatch cost J and
    whether each step left finite parameters.

    With ``guard`` (the slow path, run again after an epoch that went
    non-finite), a step whose cost or new parameters are not finite is not
    applied, nor any after it: the parameters returned are the last finite ones.

    With a ``mesh``, ``X`` and ``Y`` are replicated on its devices and each
    minibatch's rows are split over its ``"batch"`` axis (:func:`jbp.parallel.shard_rows`).
    """
    n = X.shape[0]
    order = jax.random.permutation(key, n)
    full = n // batch_size
    step = _step(net, loss, optimizer, l2, n, guard, compute_dtype)

    def rows_step(carry, rows):
        batch = (X[rows], Y[rows])
        if mesh is not None:
            batch = tuple(shard_rows(part, mesh) for part in batch)
        return step(carry, batch)

    carry = (params, opt_state, feedback, jnp.array(True))
    carry, (costs, ok) = jax.lax.scan(rows_step, carry, order[: full * batch_size].reshape(full, batch_size))
    if n % batch_size and not drop_last:
        carry, (last, last_ok) = rows_step(carry, order[full * batch_size :])
        costs, ok = jnp.append(costs, last), jnp.append(ok, last_ok)
    return carry[0], carry[1], carry[2], costs, ok


@partial(jax.jit, static_argnames=("net", "loss", "optimizer", "n", "l2", "guard", "compute_dtype"))
def _epoch_of_batches(net, params, opt_state, X, Y, rest, feedback=None, *, loss, optimizer, n, l2, guard=False,
                      compute_dtype=None):
    """:func:`_epoch` on minibatches gathered already: ``X`` of shape ``(steps, batch, n_0)``, split
    over the devices of many processes (each fed its own rows), and ``rest``, the epoch's last,
    smaller minibatch ``(X, Y)`` or None."""
    step = _step(net, loss, optimizer, l2, n, guard, compute_dtype)
    carry = (params, opt_state, feedback, jnp.array(True))
    carry, (costs, ok) = jax.lax.scan(step, carry, (X, Y))
    if rest is not None:
        carry, (last, last_ok) = step(carry, rest)
        costs, ok = jnp.append(costs, last), jnp.append(ok, last_ok)
    return carry[0], carry[1], carry[2], costs, ok


def _apply(optimizer, carry, grads, J, guard):
    """One optimizer step on ``(params, state, feedback, healthy)``; with ``guard``, a step that
    leaves a non-finite cost, parameter or state is not applied, nor any after it.

    A rule that learns (Kolen-Pollack) gives its matrices the update the weights got, and both
    the same decay: ``W ← W + u − d W``, ``B ← B + u − d B``."""
    params, state, feedback, healthy = carry
    updates, new_state = optimizer.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    if feedback is not None and feedback.learns:
        d = feedback.decay
        new_params = tuple(Dense(W=new.W - d * old.W, b=new.b) for new, old in zip(new_params, params))
        feedback = feedback.replace(tuple(B + u.W - d * B for B, u in zip(feedback.matrices, updates)))
    old = (params, state, carry[2])
    if not guard:
        return (new_params, new_state, feedback, healthy), healthy
    ok = healthy & jnp.isfinite(J) & all_finite((new_params, new_state, feedback))
    kept = jax.tree.map(lambda new, previous: jnp.where(ok, new, previous), (new_params, new_state, feedback), old)
    return (*kept, ok), ok


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
def _private_epoch(net, params, opt_state, X, Y, key, max_norm, *, loss, optimizer, batch_size, l2, guard=False,
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
        grads = tuple(
            Dense(W=s.W / batch_size + (l2 / n) * layer.W, b=s.b / batch_size) for s, layer in zip(sums, params)
        )
        J = cost / jnp.maximum(count, 1)
        # the guard judges the released parameters and state only, never the samples' costs
        carry, ok = _apply(optimizer, carry, grads, jnp.zeros_like(J), guard)
        return carry, (J, ok, count)

    carry = (params, opt_state, None, jnp.array(True))
    carry, (costs, ok, counts) = jax.lax.scan(step, carry, jax.random.split(key, steps))
    return carry[0], carry[1], None, costs, ok, counts


def _process_batches(mesh, host, key, batch_size: int, drop_last: bool):
    """An epoch's minibatches for a mesh over several processes: the same shuffle as :func:`_epoch`
    (from the same key, in every process), each process sending only its own devices' rows."""
    X, Y = host
    n = len(X)
    order = np.asarray(jax.random.permutation(key, n))
    full = n // batch_size
    steps = order[: full * batch_size].reshape(full, batch_size)
    rest = None
    if n % batch_size and not drop_last:
        rest = tuple(parallel.remainder(mesh, part, order[full * batch_size :]) for part in (X, Y))
    return parallel.batches(mesh, X, steps), parallel.batches(mesh, Y, steps), rest


def _divergence_hint(params, compute_dtype) -> str:
    if jnp.dtype(compute_dtype or params[0].W.dtype) == jnp.float16:
        return ("float16 holds numbers up to 65504 only: compute in bfloat16, which has float32's range, "
                "or lower the learning rate")
    return "lower the learning rate?"


def _check_count(name: str, value: Any, low: int, high: "int | None" = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


class _Checked(NamedTuple):
    """:func:`fit`'s arguments after every check, in the form it trains with."""

    loss: Loss
    X: Array
    Y: Array
    n: int
    epochs: int
    batch_size: int
    start_epoch: int
    validation: Any
    patience: "int | None"
    best: "dict | None"
    eval_every: int
    compute_dtype: Any
    mesh: Any
    feedback: Any
    privacy: "DPSGD | None"
    train_metrics: bool
    steps_per_epoch: "int | None"


def _checked_arguments(net, params, X, Y, *, loss, optimizer, epochs, batch_size, key=None, l2=0.0, validation=None,
                       start_epoch=0, history=(), patience=None, best_params=None, privacy=None, feedback=None,
                       mesh=None, eval_every=1, train_metrics=None, compute_dtype=None, **_not_checked) -> _Checked:
    """Every check :func:`fit` makes before its first step (one definition, used by :func:`fit` and
    :func:`check_fit`); the arguments not named here (``drop_last``, ``opt_state``, ``on_epoch``,
    ``progress``) are not checked."""
    loss = get_loss(loss)
    check_params(net, params)
    X, Y = check_batch(net, params, X, Y, loss)
    n = X.shape[0]
    epochs = _check_count("epochs", epochs, 1)
    batch_size = _check_count("batch_size", batch_size, 1, n)
    start_epoch = _check_count("start_epoch", start_epoch, 0, epochs)
    if not np.isscalar(l2) or not np.isfinite(l2) or l2 < 0:
        raise ValueError(f"l2 must be a finite number ≥ 0, got {l2!r}")
    if privacy is None or key is not None:  # a private run draws from its privacy's key
        check_key(key)
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}")
    if validation is not None:
        validation = check_batch(net, params, *validation, loss)
    if patience is not None:
        patience = _check_count("patience", patience, 1)
        if validation is None:
            raise ValueError("early stopping (patience) watches the validation loss: pass validation=(X_val, Y_val)")
    best = _best_so_far(history, best_params, params) if patience is not None else None
    eval_every = _check_count("eval_every", eval_every, 0)
    if compute_dtype is not None:
        try:
            compute_dtype = jnp.dtype(compute_dtype)
        except TypeError:
            raise TypeError(f"compute_dtype must be a floating dtype such as jnp.bfloat16, got {compute_dtype!r}") from None
        if not jnp.issubdtype(compute_dtype, jnp.floating):
            raise TypeError(f"compute_dtype must be a floating dtype such as jnp.bfloat16, got {compute_dtype}")
        if privacy is not None:
            raise ValueError("DP-SGD clips in the parameters' dtype: train it without compute_dtype")
    if patience is not None and eval_every != 1:
        raise ValueError(f"early stopping watches the validation loss every epoch: eval_every must be 1, got {eval_every}")
    if mesh is not None:
        mesh = parallel.check_mesh(mesh)
        devices = parallel.batch_devices(mesh)
        if batch_size % devices:
            raise ValueError(f"batch_size {batch_size} does not split over the mesh's {devices} 'batch' devices; "
                             f"use a multiple of {devices}")
        if privacy is not None and parallel.spans_processes(mesh):
            raise ValueError("DP-SGD across several processes is not supported; train it on one process's devices")
    feedback = check_feedback(net, params, feedback)
    if feedback is not None and privacy is not None:
        raise ValueError("DP-SGD clips true per-sample gradients: train it with backprop, not another feedback rule")
    steps_per_epoch = None
    if privacy is not None:
        privacy = check_privacy(privacy)
        if privacy.delta is not None:
            check_delta(privacy.delta, n)
        steps_per_epoch = max(1, round(n / batch_size))
        _check_accounted_history(privacy, history, start_epoch, batch_size, n, steps_per_epoch)
    train_metrics = privacy is None if train_metrics is None else bool(train_metrics)
    return _Checked(loss, X, Y, n, epochs, batch_size, start_epoch, validation, patience, best, eval_every,
                    compute_dtype, mesh, feedback, privacy, train_metrics, steps_per_epoch)


def _spent(privacy: DPSGD, batch_size: int, n: int, steps: int) -> "float | None":
    """The ε of ``steps`` private steps at the privacy's δ (∞ without noise), or None without a δ."""
    if privacy.delta is None:
        return None
    return epsilon(privacy.noise_multiplier, batch_size / n, steps, privacy.delta)


def _spent_note(privacy, batch_size: int, n: int, steps: int) -> tuple[str, tuple]:
    """For a private run that stops: what its message adds (the ε of the steps behind the parameters
    it keeps) and :class:`TrainingDiverged`'s ``steps`` and ``epsilon``."""
    if privacy is None:
        return "", ()
    spent = _spent(privacy, batch_size, n, steps)
    if spent is None:
        return f"; they are {steps} private steps (no δ given: ε not accounted)", (steps, None)
    return f"; the {steps} private steps behind them spent ε = {spent:.4g} at δ = {privacy.delta:g}", (steps, spent)


def _check_accounted_history(privacy, history, start_epoch, batch_size, n, steps_per_epoch) -> None:
    """A continued private run accounts ε over every step behind its parameters: the ε its history
    holds for ``start_epoch`` must be that of ``start_epoch`` epochs of this run's steps, on
    ``n`` samples at this σ and batch size; otherwise the steps before could not be counted."""
    if not start_epoch:
        if history:
            raise ValueError(f"a private run starting at epoch 0 continues no history, got {len(history)} "
                             "record(s): pass start_epoch, the last epoch they hold, so that their steps are counted")
        return
    before = next((r for r in history if r.get("epoch") == start_epoch), {})
    recorded = before.get("epsilon")
    spent = _spent(privacy, batch_size, n, start_epoch * steps_per_epoch)
    expected = spent if spent is not None and math.isfinite(spent) else None
    if expected is None and recorded is None:
        return
    if expected is None:
        raise ValueError(f"the history accounts ε = {recorded:.4g} after epoch {start_epoch}; continue it with a "
                         "privacy that has a delta and noise, so that every step is counted")
    if recorded is None:
        raise ValueError(f"the history holds no ε for epoch {start_epoch}, the last one done: the steps behind the "
                         "parameters cannot be accounted (were they trained with this privacy?)")
    if not math.isclose(recorded, expected, rel_tol=1e-6):
        raise ValueError(
            f"the history's ε after epoch {start_epoch} is {recorded:.6g}, but {start_epoch} epochs of "
            f"{steps_per_epoch} steps at q = {batch_size}/{n}, σ = {privacy.noise_multiplier:g} spend "
            f"{expected:.6g}: the run was trained on other data or with other privacy options, and ε cannot "
            "be carried on"
        )


def check_fit(*args, **kwargs) -> None:
    """Refuses, with :func:`fit`'s own message, whatever :func:`fit` given the same arguments would
    refuse before its first step, and trains nothing.

    For a caller that must not create anything for a run that would be refused (``jbp train``
    checks before it makes the run's folder). The data are checked as :func:`fit` checks them
    (shapes, finiteness, a conversion to the parameters' dtype that overflows).

    Raises:
      ValueError, TypeError: as :func:`fit`.
    """
    bound = inspect.signature(fit).bind(*args, **kwargs)
    _checked_arguments(**bound.arguments)


def fit(
    net: MLP,
    params: Sequence[Dense],
    X: Array,
    Y: Array,
    *,
    loss: "Loss | str",
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: "Array | None" = None,
    l2: float = 0.0,
    validation: "tuple[Array, Array] | None" = None,
    drop_last: bool = False,
    opt_state: Any = None,
    start_epoch: int = 0,
    history: Sequence[dict] = (),
    on_epoch: "Callable[[dict, tuple[Dense, ...], Any], None] | None" = None,
    progress: bool = False,
    patience: "int | None" = None,
    best_params: "Sequence[Dense] | None" = None,
    privacy: "DPSGD | None" = None,
    feedback: "Feedback | None" = None,
    mesh: "jax.sharding.Mesh | None" = None,
    eval_every: int = 1,
    train_metrics: "bool | None" = None,
    compute_dtype: Any = None,
) -> FitResult:
    """Trains a network with an optax optimizer on minibatches.

    Args:
      net, params: the network and its initial parameters.
      X, Y: training inputs ``(n, n_0)`` and targets ``(n, n_L)``.
      loss: the per-sample cost.
      optimizer: any ``optax.GradientTransformation``.
      epochs: the epoch to train up to, counted from the start of the run
        (with ``start_epoch = 10`` and ``epochs = 30``, twenty more).
      batch_size: samples per step, ``1 … n``.
      key: a ``jax.random.key``; epoch ``e`` shuffles with ``fold_in(key, e)``.
        Unused with ``privacy``, whose own key draws the batches and the noise
        (it may then be left out).
      l2: ``λ`` of Coursera's cost over the whole training set.
      validation: optional ``(X_val, Y_val)``, evaluated after every epoch.
      drop_last: skip the last, smaller minibatch of each epoch instead of
        taking a step on it.
      opt_state, start_epoch, history: where a resumed run left off.
      on_epoch: called after every epoch with ``(record, params, opt_state)``,
        and ``feedback=`` the rule as it stands when it learns (Kolen-Pollack).
      progress: show a tqdm bar over the epochs with the latest loss.
      patience: early stopping: stop when the validation loss has not gone
        below its best for this many epochs, and return the parameters of
        the best epoch (needs ``validation``). Each record then holds
        ``best_epoch``, the best epoch so far.
      best_params: for a resumed run with ``patience``, the parameters of its
        best epoch so far (the best epoch and its loss are read from
        ``history``).
      privacy: :func:`jbp.dp_sgd`'s options: train with DP-SGD. ``batch_size``
        is then the expected size of the Poisson-sampled batches, an epoch is
        ``round(n / batch_size)`` steps, ``drop_last`` does not apply, and
        ``opt_state`` (given or returned) is that of
        :func:`jbp.privacy.private_optimizer`, the noise then ``optimizer``;
        the noise's key in a given ``opt_state`` is replaced by the privacy's
        (:func:`jbp.privacy.dp_keys`), so a secure run continues with fresh
        randomness and a reproducible one bit for bit. The batches and the
        noise come from ``privacy.key``, not ``key``. With a ``delta`` (which
        must lie below ``1/n``), each record holds ``epsilon``, the ε of every
        step so far (a continued run's history must hold the ε of the steps
        before ``start_epoch``, and it must be that of this data and these
        options, or the run is refused). A step is judged diverged by the
        parameters and state only, never by the samples' costs.
      feedback: the rule that carries errors back in BP2 (:mod:`jbp.feedback`,
        backprop by default); a Kolen-Pollack rule's matrices learn, and the
        rule as trained is ``FitResult.feedback`` (pass it back to resume).
        Records then hold, per layer, ``update_angles`` (degrees between the
        rule's update and the true gradient on the first 512 training rows,
        the same rows every epoch) and, for rules with a matrix per layer,
        ``feedback_angles`` (between ``B^l``, or ``sign(W^l)``, and ``W^l``).
      mesh: data parallel training (:mod:`jbp.parallel`): a
        ``jax.sharding.Mesh`` with an axis ``"batch"``. The data, parameters
        and optimizer state are replicated on its devices, every minibatch is
        split over the ``"batch"`` axis (``batch_size`` must divide by its
        size), and XLA sums the gradient with one all-reduce. An epoch's last,
        smaller minibatch whose rows do not divide is computed whole on every
        device. A mesh over the devices of several processes
        (``jax.distributed``): every process passes the same ``X`` and ``Y``
        and feeds only its own devices' rows of each minibatch.
      eval_every: measure the training set (and the validation set) after
        every ``eval_every``-th epoch and after the last; ``0`` for never.
        Records of the other epochs hold ``running_loss`` only.
      train_metrics: measure the training set's loss and accuracy when
        measuring; ``False`` leaves only the validation set's (and
        ``running_loss``), which costs no pass over the training set. The
        default, ``None``, is ``True`` without ``privacy`` and ``False``
        with: a private run then publishes nothing about its training
        samples beyond the noised parameters (no ``loss``, ``accuracy``,
        ``running_loss`` nor ``batch_size_mean``, which would reveal the
        sampling). ``True`` with ``privacy`` records all four, **outside
        the privacy guarantee**.
      compute_dtype: mixed precision: the forward and backward passes in
        this dtype (``jnp.bfloat16``, ``jnp.float16``) on copies of the
        parameters and minibatch, the parameters, the optimizer and the
        measurements in the parameters' dtype (float32 "master" weights).
        float16's range is small: a step that overflows it ends the run with
        :class:`TrainingDiverged`, which says so (bfloat16 has float32's range).

    Returns:
      A :class:`FitResult`. Each history record has ``epoch`` (from 1),
      ``loss`` (the mean per-sample cost on the training set after the
      epoch), ``running_loss`` (the mean minibatch ``J`` during the epoch),
      ``accuracy`` for class targets, ``val_loss`` and ``val_accuracy`` with
      validation data, and ``seconds``; a private run's, by default,
      ``epoch``, ``epsilon`` (with a δ), the validation set's and ``seconds``.

    Raises:
      TrainingDiverged: when a step's loss, the parameters or the optimizer's
        state stop being finite, or a metric of the epoch overflows; for a
        private run it holds the ε of the steps behind its parameters.
      ValueError, TypeError: for bad data (as :func:`jbp.loss_and_grads`)
        or options: epochs < 1, a batch size outside ``1 … n``, a negative
        ``l2``, a key that is not a PRNG key, an optimizer that is not optax's,
        a privacy that is not a sound :class:`~jbp.DPSGD`, ``delta ≥ 1/n``,
        a history whose ε does not continue. All are raised before the first
        step; :func:`check_fit` raises them without training.

    Example:
      >>> import jax, optax, jbp
      >>> data = jbp.data.xor()
      >>> net = jbp.mlp([2, 4, 1], hidden=jbp.tanh, output=jbp.sigmoid)
      >>> result = jbp.fit(net, jbp.init(net, jax.random.key(0)), data.train.X, data.train.Y,
      ...                  loss=jbp.binary_cross_entropy, optimizer=optax.adam(0.1),
      ...                  epochs=200, batch_size=4, key=jax.random.key(1))
      >>> result.history[-1]["accuracy"]
      1.0
    """
    checked = _checked_arguments(**locals())  # every argument of fit, as given
    loss, X, Y, n, epochs, batch_size, start_epoch, validation, patience, best, eval_every, compute_dtype, mesh, \
        feedback, privacy, train_metrics, steps_per_epoch = checked
    probe = (X[:512], Y[:512])  # the fixed rows the feedback diagnostics are measured on
    if privacy is not None:
        noise_key, sampling_key = dp_keys(privacy)  # the run's randomness is the privacy's, not fit's key
        optimizer = private_optimizer(privacy, optimizer, batch_size)
        if opt_state is not None:  # a continued run draws from this key (a secure checkpoint holds a placeholder)
            opt_state = with_noise_key(opt_state, noise_key)
    # what fit hands out (its result, on_epoch, TrainingDiverged): a secure run's noise key never leaves it
    handed = public_state if privacy is not None and privacy.secure else (lambda state: state)
    params = tuple(params)
    opt_state = optimizer.init(params) if opt_state is None else opt_state
    history = list(history)
    sets = ([("", X, Y)] if train_metrics else []) + ([("val_", *validation)] if validation is not None else [])
    sets = [(prefix, X_, Y_, targets_are_classes(Y_)) for prefix, X_, Y_ in sets]
    many = mesh is not None and parallel.spans_processes(mesh)
    host = (np.asarray(X), np.asarray(Y)) if many else None
    if mesh is not None:  # on the devices once for the whole run
        X, Y, params, opt_state, feedback, probe = parallel.place((X, Y, params, opt_state, feedback, probe), mesh)
        sets = [(prefix, *parallel.place((X_, Y_), mesh), classes) for prefix, X_, Y_, classes in sets]
    if best is not None and mesh is not None:
        best["params"] = parallel.place(best["params"], mesh)

    bar = _progress_bar(start_epoch, epochs) if progress else None
    try:
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            epoch_key = jax.random.fold_in(key if privacy is None else sampling_key, epoch)
            if many:
                run_epoch = partial(
                    _epoch_of_batches, net, params, opt_state, *_process_batches(mesh, host, epoch_key, batch_size,
                                                                                 drop_last), feedback,
                    loss=loss, optimizer=optimizer, n=n, l2=float(l2), compute_dtype=compute_dtype,
                )
            elif privacy is None:
                run_epoch = partial(
                    _epoch, net, params, opt_state, X, Y, epoch_key, feedback,
                    loss=loss, optimizer=optimizer, batch_size=batch_size, drop_last=drop_last, l2=float(l2), mesh=mesh,
                    compute_dtype=compute_dtype,
                )
            else:
                run_epoch = partial(
                    _private_epoch, net, params, opt_state, X, Y, epoch_key,
                    jnp.asarray(privacy.max_norm, params[0].W.dtype),
                    loss=loss, optimizer=optimizer, batch_size=batch_size, l2=float(l2), mesh=mesh,
                )
            new_params, new_state, new_feedback, costs, _, *counts = run_epoch()
            # a private run is judged by what the mechanism released (the noised parameters), never by
            # the training samples' costs
            healthy = bool(all_finite((new_params, new_state, new_feedback)))
            if privacy is None:
                costs = np.asarray(costs)
                healthy = healthy and bool(np.all(np.isfinite(costs)))
            if not healthy:
                # the same epoch again (the same keys, so the same draws), stopping at the first step that is not finite
                last_params, last_state, _, costs, ok, *_ = run_epoch(guard=True)
                ok = np.asarray(ok)
                step = int(np.argmin(ok))
                what = "the parameters or the optimizer's state overflowed" if privacy is not None else (
                    f"the loss is {float(costs[step])}, or the parameters or the optimizer's state overflowed")
                # the failing step counts: what it computed from its batch is what this message tells
                note, accounted = _spent_note(privacy, batch_size, n, epoch * (steps_per_epoch or 0) + step + 1)
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch + 1}, step {step + 1}: {what} "
                    f"({_divergence_hint(params, compute_dtype)}); the parameters from just before that step are kept"
                    + note, epoch + 1, step + 1, last_params, handed(last_state), history, *accounted,
                )
            params, opt_state, feedback = new_params, new_state, new_feedback
            record = {"epoch": epoch + 1}
            if privacy is None or train_metrics:  # a private run's training statistics only when asked for
                costs = np.asarray(costs)
                if privacy is None:
                    sizes = np.full(len(costs), batch_size)
                    if len(costs) > n // batch_size:  # the last, smaller minibatch
                        sizes[-1] = n % batch_size
                else:
                    sizes = np.asarray(counts[0])
                record["running_loss"] = float(np.dot(costs, sizes) / max(sizes.sum(), 1))
                if privacy is not None:
                    record["batch_size_mean"] = float(sizes.mean())
            if privacy is not None:
                spent = _spent(privacy, batch_size, n, (epoch + 1) * steps_per_epoch)
                if spent is not None and math.isfinite(spent):
                    record["epsilon"] = spent
            measured = eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs)
            for prefix, X_, Y_, classes in sets if measured else ():
                record.update({prefix + k: v for k, v in _metrics(net, params, X_, Y_, loss, classes).items()})
            if feedback is not None:
                record.update(_angles(net, params, *probe, loss, feedback))
            overflowed = [name for name, value in record.items() if not np.all(np.isfinite(value))]
            if overflowed:
                note, accounted = _spent_note(privacy, batch_size, n, (epoch + 1) * (steps_per_epoch or 0))
                raise TrainingDiverged(
                    f"after epoch {epoch + 1} the {' and '.join(overflowed)} overflowed to "
                    f"{', '.join(str(record[k]) for k in overflowed)} although the parameters are finite "
                    "(inputs or weights too large for the dtype?); that epoch is not recorded" + note,
                    epoch + 1, len(costs), params, handed(opt_state), history, *accounted,
                )
            if best is not None:
                if best["epoch"] is None or record["val_loss"] < best["val_loss"]:
                    best.update(epoch=epoch + 1, val_loss=record["val_loss"], params=params)
                record["best_epoch"] = best["epoch"]
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            if on_epoch is not None:
                if feedback is not None and feedback.learns:
                    on_epoch(record, params, handed(opt_state), feedback=feedback)
                else:
                    on_epoch(record, params, handed(opt_state))
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in BAR_METRICS}, refresh=False)
                bar.update(1)
            if best is not None and epoch + 1 - best["epoch"] >= patience and epoch + 1 < epochs:
                return FitResult(best["params"], handed(opt_state), history, best["epoch"], True, feedback)
    finally:
        if bar is not None:
            bar.close()
    if best is not None:
        return FitResult(best["params"], handed(opt_state), history, best["epoch"], False, feedback)
    return FitResult(params, handed(opt_state), history, feedback=feedback)


def _angles(net, params, X, Y, loss, feedback) -> dict:
    """Per layer, the angle (degrees) between the rule's update and the true gradient on fixed rows,
    and between the rule's feedback matrix (or sign(W)) and W."""
    _, true = loss_and_grads(net, params, X, Y, loss)
    _, rule = loss_and_grads(net, params, X, Y, loss, feedback=feedback)
    record = {"update_angles": [float(angle(u, g)) for u, g in zip(rule, true)]}
    if feedback.kind in ("fa", "kp"):
        record["feedback_angles"] = [float(angle(B, layer.W)) for B, layer in zip(feedback.matrices, params)]
    elif feedback.kind == "sign":
        record["feedback_angles"] = [float(angle(jnp.sign(layer.W), layer.W)) for layer in params]
    return record


BAR_METRICS = ("running_loss", "accuracy", "val_loss", "val_accuracy", "epsilon")


def _best_so_far(history: Sequence[dict], best_params: "Sequence[Dense] | None", params) -> dict:
    """The best epoch of a resumed history (lowest val_loss, the earliest of ties) and its parameters."""
    scored = [r for r in history if "val_loss" in r]
    if not scored:
        return {"epoch": None, "val_loss": np.inf, "params": params}
    if best_params is None:
        raise ValueError("a resumed run with early stopping needs the parameters of its best epoch: pass best_params")
    record = min(scored, key=lambda r: (r["val_loss"], r["epoch"]))
    return {"epoch": record["epoch"], "val_loss": record["val_loss"], "params": tuple(best_params)}


def _progress_bar(start: int, total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "the progress bar needs tqdm: pip install 'jbp[progress]'"
        ) from None
    return tqdm(total=total, initial=start, unit="epoch", dynamic_ncols=True, file=sys.stderr)
