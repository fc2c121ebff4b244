"""Metrics: what a network's outputs say about a data set (loss, accuracy, confusion), and the
feedback rules' diagnostics (the angles between a rule's update and the gradient).

Evaluation runs ``chunk`` rows at a time inside one compiled program, so memory stays bounded on
data sets of any size.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.batch import _loss_and_grads, check_batch, forward_costs, predict
from jbp.feedback import angle
from jbp.losses import Loss, get_loss
from jbp.network import Network, params_dtype

Array = jax.Array


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

def confusion_matrix(net: Network, params: Sequence[Any], X: Array, labels: Array, n_classes: int,
                     chunk: int = 4096) -> np.ndarray:
    """Counts ``C[t, p]`` of samples of class ``t`` predicted as ``p``, from class indices ``labels``.

    Example:
      >>> import jax, jax.numpy as jnp, jbp
      >>> net = jbp.mlp([2, 3, 2], output=jbp.softmax)
      >>> params = jbp.init(net, jax.random.key(0))
      >>> int(jbp.confusion_matrix(net, params, jnp.ones((5, 2)), jnp.array([0, 1, 0, 1, 1]), 2).sum())
      5
    """
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
    net: Network, params: Sequence[Any], X: Array, Y: Array, loss: "Loss | str", chunk: int = 4096
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
    result = metrics(net, params, X, Y, loss, targets_are_classes(Y), chunk)
    if not np.all(np.isfinite(list(result.values()))):
        raise FloatingPointError(f"evaluate overflowed: {result} although every input is finite")
    return result

def metrics(net, params, X, Y, loss, classes, chunk=4096) -> dict:
    """:func:`evaluate` on data already checked."""
    cost, correct = _evaluate(net, params, X, Y, loss, classes, int(chunk))
    return {"loss": float(cost), "accuracy": float(correct)} if classes else {"loss": float(cost)}


def angles(net, params, X, Y, loss, feedback) -> dict:
    """Per layer with parameters, the angle (degrees) between the rule's update and the true gradient
    on fixed rows (already checked), and between the rule's feedback and the forward transport
    (``B`` or ``sign(W)`` against ``W``)."""
    l2 = jnp.zeros((), params_dtype(params))
    _, true = _loss_and_grads(net, params, X, Y, loss, l2, False)
    _, rule = _loss_and_grads(net, params, X, Y, loss, l2, False, feedback)
    record = {"update_angles": [float(angle(u, g)) for u, g in zip(rule, true) if jax.tree.leaves(g)]}
    feedback_angles = feedback.rule.angles(feedback, net.layers, params)
    if feedback_angles is not None:
        record["feedback_angles"] = [float(a) for a in feedback_angles]
    return record
