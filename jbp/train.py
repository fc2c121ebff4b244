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

from jbp import parallel
from jbp.batch import check_batch
from jbp.checks import all_finite, check_key
from jbp.epochs import epoch_of_batches, epoch as run_one_epoch, process_batches
from jbp.feedback import Feedback, check_feedback
from jbp.losses import Loss, get_loss
from jbp.metrics import angles, confusion_matrix, evaluate, metrics, predicted_classes, targets_are_classes  # noqa: F401
from jbp.network import Dense, Network, check_params, params_dtype
from jbp.privacy import (DPSGD, check_delta, check_privacy, dp_keys, epsilon, poisson_epoch, private_optimizer,
                          public_state, with_noise_key)

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


def _divergence_hint(params, compute_dtype) -> str:
    if jnp.dtype(compute_dtype or params_dtype(params)) == jnp.float16:
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
    net: Network,
    params: Sequence[Any],
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
    best_params: "Sequence[Any] | None" = None,
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
    run = _Training(net, params, optimizer, opt_state, key, checked, drop_last=drop_last, l2=float(l2))
    params, opt_state, feedback, best, history = run.params, run.opt_state, run.checked.feedback, checked.best, list(history)
    bar = _progress_bar(checked.start_epoch, checked.epochs) if progress else None
    try:
        for epoch in range(checked.start_epoch, checked.epochs):
            started = time.perf_counter()
            run_epoch = run.epoch_function(epoch, params, opt_state, feedback)
            new_params, new_state, new_feedback, costs, _, *counts = run_epoch()
            if not run.healthy(new_params, new_state, new_feedback, costs):
                raise run.diverged(epoch, run_epoch, params, history)
            params, opt_state, feedback = new_params, new_state, new_feedback
            record = run.record(epoch, params, feedback, costs, counts, history, opt_state)
            if best is not None:
                if best["epoch"] is None or record["val_loss"] < best["val_loss"]:
                    best.update(epoch=epoch + 1, val_loss=record["val_loss"], params=params)
                record["best_epoch"] = best["epoch"]
            record["seconds"] = time.perf_counter() - started
            history.append(record)
            if on_epoch is not None:
                if feedback is not None and feedback.learns:
                    on_epoch(record, params, run.handed(opt_state), feedback=feedback)
                else:
                    on_epoch(record, params, run.handed(opt_state))
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in BAR_METRICS}, refresh=False)
                bar.update(1)
            if best is not None and epoch + 1 - best["epoch"] >= checked.patience and epoch + 1 < checked.epochs:
                return FitResult(best["params"], run.handed(opt_state), history, best["epoch"], True, feedback)
    finally:
        if bar is not None:
            bar.close()
    if best is not None:
        return FitResult(best["params"], run.handed(opt_state), history, best["epoch"], False, feedback)
    return FitResult(params, run.handed(opt_state), history, feedback=feedback)


class _Training:
    """What stays fixed through one call of :func:`fit`, after its checks: the data (on the mesh's
    devices, once), the optimizer (with DP-SGD's noise for a private run), the keys, the sets measured
    each epoch; and the three things an epoch asks of them: its compiled program, a judgement of
    its outcome, its record."""

    def __init__(self, net, params, optimizer, opt_state, key, checked: _Checked, *, drop_last: bool, l2: float):
        c = self.checked = checked
        self.net, self.key, self.drop_last, self.l2 = net, key, drop_last, l2
        X, Y, privacy, mesh = c.X, c.Y, c.privacy, c.mesh
        probe = (X[:512], Y[:512])  # the fixed rows the feedback diagnostics are measured on
        if privacy is not None:
            noise_key, self.sampling_key = dp_keys(privacy)  # the run's randomness is the privacy's, not fit's key
            optimizer = private_optimizer(privacy, optimizer, c.batch_size)
            if opt_state is not None:  # a continued run draws from this key (a secure checkpoint holds a placeholder)
                opt_state = with_noise_key(opt_state, noise_key)
        # what fit hands out (its result, on_epoch, TrainingDiverged): a secure run's noise key never leaves it
        self.handed = public_state if privacy is not None and privacy.secure else (lambda state: state)
        params = tuple(params)
        opt_state = optimizer.init(params) if opt_state is None else opt_state
        sets = ([("", X, Y)] if c.train_metrics else []) + ([("val_", *c.validation)] if c.validation is not None else [])
        sets = [(prefix, X_, Y_, targets_are_classes(Y_)) for prefix, X_, Y_ in sets]
        self.many = mesh is not None and parallel.spans_processes(mesh)
        self.host = (np.asarray(X), np.asarray(Y)) if self.many else None
        feedback = c.feedback
        if mesh is not None:  # on the devices once for the whole run
            X, Y, params, opt_state, feedback, probe = parallel.place((X, Y, params, opt_state, feedback, probe), mesh)
            sets = [(prefix, *parallel.place((X_, Y_), mesh), classes) for prefix, X_, Y_, classes in sets]
            self.checked = c = c._replace(feedback=feedback)
            if c.best is not None:
                c.best["params"] = parallel.place(c.best["params"], mesh)
        self.X, self.Y, self.probe, self.sets, self.optimizer = X, Y, probe, sets, optimizer
        self.params, self.opt_state = params, opt_state

    def epoch_function(self, epoch: int, params, opt_state, feedback):
        """Epoch ``epoch``'s compiled program, as a function of ``guard`` alone: the mesh-of-processes
        epoch, the plain one, or DP-SGD's Poisson epoch."""
        c, net = self.checked, self.net
        epoch_key = jax.random.fold_in(self.key if c.privacy is None else self.sampling_key, epoch)
        common = dict(loss=c.loss, optimizer=self.optimizer, l2=self.l2)
        if self.many:
            batches = process_batches(c.mesh, self.host, epoch_key, c.batch_size, self.drop_last)
            return partial(epoch_of_batches, net, params, opt_state, *batches, feedback, n=c.n,
                           compute_dtype=c.compute_dtype, **common)
        if c.privacy is None:
            return partial(run_one_epoch, net, params, opt_state, self.X, self.Y, epoch_key, feedback,
                           batch_size=c.batch_size, drop_last=self.drop_last, mesh=c.mesh, compute_dtype=c.compute_dtype,
                           **common)
        max_norm = jnp.asarray(c.privacy.max_norm, params_dtype(params))
        return partial(poisson_epoch, net, params, opt_state, self.X, self.Y, epoch_key, max_norm,
                       batch_size=c.batch_size, mesh=c.mesh, **common)

    def healthy(self, params, opt_state, feedback, costs) -> bool:
        """Whether an epoch left finite parameters, state and (without privacy) costs. A private run is
        judged by what the mechanism released (the noised parameters), never by the samples' costs."""
        healthy = bool(all_finite((params, opt_state, feedback)))
        if self.checked.privacy is None:
            healthy = healthy and bool(np.all(np.isfinite(np.asarray(costs))))
        return healthy

    def diverged(self, epoch: int, run_epoch, params, history) -> "TrainingDiverged":
        """The error for an epoch that went non-finite: the same epoch again (the same keys, so the same
        draws) with the guard on, which stops at the first step that is not finite."""
        c = self.checked
        last_params, last_state, _, costs, ok, *_ = run_epoch(guard=True)
        step = int(np.argmin(np.asarray(ok)))
        what = "the parameters or the optimizer's state overflowed" if c.privacy is not None else (
            f"the loss is {float(costs[step])}, or the parameters or the optimizer's state overflowed")
        # the failing step counts: what it computed from its batch is what this message tells
        note, accounted = _spent_note(c.privacy, c.batch_size, c.n, epoch * (c.steps_per_epoch or 0) + step + 1)
        return TrainingDiverged(
            f"training diverged at epoch {epoch + 1}, step {step + 1}: {what} "
            f"({_divergence_hint(params, c.compute_dtype)}); the parameters from just before that step are kept"
            + note, epoch + 1, step + 1, last_params, self.handed(last_state), history, *accounted,
        )

    def record(self, epoch: int, params, feedback, costs, counts, history, opt_state) -> dict:
        """Epoch ``epoch``'s record: the running loss (a private run's only when asked for), ε, the
        metrics of every set, the feedback angles. Raises :class:`TrainingDiverged` when one of them
        overflowed although the parameters are finite."""
        c = self.checked
        record = {"epoch": epoch + 1}
        if c.privacy is None or c.train_metrics:  # a private run's training statistics only when asked for
            costs = np.asarray(costs)
            if c.privacy is None:
                sizes = np.full(len(costs), c.batch_size)
                if len(costs) > c.n // c.batch_size:  # the last, smaller minibatch
                    sizes[-1] = c.n % c.batch_size
            else:
                sizes = np.asarray(counts[0])
            record["running_loss"] = float(np.dot(costs, sizes) / max(sizes.sum(), 1))
            if c.privacy is not None:
                record["batch_size_mean"] = float(sizes.mean())
        if c.privacy is not None:
            spent = _spent(c.privacy, c.batch_size, c.n, (epoch + 1) * c.steps_per_epoch)
            if spent is not None and math.isfinite(spent):
                record["epsilon"] = spent
        measured = c.eval_every and ((epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs)
        for prefix, X_, Y_, classes in self.sets if measured else ():
            record.update({prefix + k: v for k, v in metrics(self.net, params, X_, Y_, c.loss, classes).items()})
        if feedback is not None:
            record.update(angles(self.net, params, *self.probe, c.loss, feedback))
        overflowed = [name for name, value in record.items() if not np.all(np.isfinite(value))]
        if overflowed:
            note, accounted = _spent_note(c.privacy, c.batch_size, c.n, (epoch + 1) * (c.steps_per_epoch or 0))
            raise TrainingDiverged(
                f"after epoch {epoch + 1} the {' and '.join(overflowed)} overflowed to "
                f"{', '.join(str(record[k]) for k in overflowed)} although the parameters are finite "
                "(inputs or weights too large for the dtype?); that epoch is not recorded" + note,
                epoch + 1, len(costs), params, self.handed(opt_state), history, *accounted,
            )
        return record


BAR_METRICS = ("running_loss", "accuracy", "val_loss", "val_accuracy", "epsilon")


def _best_so_far(history: Sequence[dict], best_params: "Sequence[Any] | None", params) -> dict:
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
