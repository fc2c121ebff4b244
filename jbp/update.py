"""One optimizer step, the one every epoch shares (:mod:`jbp.epochs`, DP-SGD's Poisson epoch in
:mod:`jbp.privacy`): the optimizer's update, a learning feedback rule's own change, and the guard
that keeps the last finite state."""

import jax
import jax.numpy as jnp
import optax

from jbp.checks import all_finite
from jbp.feedback import after_update


def apply(net, optimizer, carry, grads, J, guard):
    """One optimizer step on ``(params, state, feedback, healthy)``; with ``guard``, a step that
    leaves a non-finite cost, parameter or state is not applied, nor any after it.

    A rule that learns (Kolen-Pollack) gives its matrices the update the weights got, and both
    the same decay: ``W ← W + u − d W``, ``B ← B + u − d B`` (:func:`jbp.feedback.after_update`)."""
    params, state, feedback, healthy = carry
    updates, new_state = optimizer.update(grads, state, params)
    new_params = optax.apply_updates(params, updates)
    if feedback is not None and feedback.learns:
        new_params, feedback = after_update(feedback, net.layers, params, new_params, updates)
    old = (params, state, carry[2])
    if not guard:
        return (new_params, new_state, feedback, healthy), healthy
    ok = healthy & jnp.isfinite(J) & all_finite((new_params, new_state, feedback))
    kept = jax.tree.map(lambda new, previous: jnp.where(ok, new, previous), (new_params, new_state, feedback), old)
    return (*kept, ok), ok
