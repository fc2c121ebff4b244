"""The compiled epochs: one ``lax.scan`` over the minibatches of a shuffled order, each step the
rule's gradient then the optimizer (:func:`jbp.update.apply`), and a last, smaller step for the
samples left over (unless ``drop_last``). Python runs once per epoch; minibatches are gathered on
the device from the epoch's permutation, so the data set is never copied. DP-SGD's epoch, with its
Poisson batches, is :func:`jbp.privacy.poisson_epoch`.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jbp import parallel
from jbp.batch import _loss_and_grads
from jbp.network import params_dtype
from jbp.parallel import shard_rows
from jbp.update import apply


def step_function(net, loss, optimizer, l2, n, guard, compute_dtype=None):
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
        J, grads = _loss_and_grads(net, params, X, Y, loss, jnp.asarray(share, params_dtype(params)), share != 0, feedback)
        if compute_dtype is not None:
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, carry[0])
            J = J.astype(params_dtype(carry[0]))
        carry, ok = apply(net, optimizer, carry, grads, J, guard)
        return carry, (J, ok)

    return step

@partial(jax.jit, static_argnames=("net", "loss", "optimizer", "batch_size", "drop_last", "l2", "guard", "mesh",
                                   "compute_dtype"))
def epoch(net, params, opt_state, X, Y, key, feedback=None, *, loss, optimizer, batch_size, drop_last, l2,
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
    step = step_function(net, loss, optimizer, l2, n, guard, compute_dtype)

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
def epoch_of_batches(net, params, opt_state, X, Y, rest, feedback=None, *, loss, optimizer, n, l2, guard=False,
                      compute_dtype=None):
    """:func:`epoch` on minibatches gathered already: ``X`` of shape ``(steps, batch, n_0)``, split
    over the devices of many processes (each fed its own rows), and ``rest``, the epoch's last,
    smaller minibatch ``(X, Y)`` or None."""
    step = step_function(net, loss, optimizer, l2, n, guard, compute_dtype)
    carry = (params, opt_state, feedback, jnp.array(True))
    carry, (costs, ok) = jax.lax.scan(step, carry, (X, Y))
    if rest is not None:
        carry, (last, last_ok) = step(carry, rest)
        costs, ok = jnp.append(costs, last), jnp.append(ok, last_ok)
    return carry[0], carry[1], carry[2], costs, ok

def process_batches(mesh, host, key, batch_size: int, drop_last: bool):
    """An epoch's minibatches for a mesh over several processes: the same shuffle as :func:`epoch`
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
