"""The worked example as text: every number beside its equation, for a terminal.

:func:`explain` is the entry point (``jbp.explain``); :func:`render` turns an
:class:`~jbp.explain.example.Example` into the same lines.
"""

import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from jbp.explain.example import Example, Explanation, worked_example
from jbp.losses import Loss
from jbp.network import MLP, Dense

HEADINGS = {"forward": "Forward pass", "BP1": "Backward pass"}


def _fmt(value) -> str:
    value = np.asarray(value)
    if value.ndim == 0:
        return f"{float(value):.9g}"
    text = np.array2string(value, precision=9, floatmode="maxprec", separator=", ", max_line_width=100)
    return text.replace("\n", "\n" + " " * 8)


def render(example: Example) -> str:
    """The lines :func:`explain` prints: a heading per pass, then ``equation  =  value``."""
    lines = []
    for step in example.steps:
        if step.kind == "start":
            continue
        heading = HEADINGS.get(step.kind)
        if step.kind == "update":
            heading = f"Gradient descent step, η = {example.learning_rate}"
        if heading and heading not in lines:
            lines.append(heading)
        lines += [f"  {q.equation}  =  {_fmt(q.value)}" for q in step.quantities]
    return "\n".join(lines)


def explain(
    net: MLP,
    params: Sequence[Dense],
    x,
    y,
    loss: "Loss | str",
    learning_rate: "float | None" = None,
    update_biases: bool = True,
    file: TextIO = None,
) -> Explanation:
    """Prints one sample's forward and backward pass, equation by equation.

    Args:
      net, params: the network.
      x, y: one sample and its target, shapes ``(n_0,)`` and ``(n_L,)``.
      loss: the per-sample cost.
      learning_rate: ``η``; when given, the updated parameters
        ``W⁺ = W - η ∂C/∂W`` (and ``b⁺`` unless ``update_biases`` is false)
        are printed too.
      file: where to print (standard output by default).

    Returns:
      An :class:`Explanation` with the same numbers as arrays.

    Example:
      >>> import jax.numpy as jnp, jbp
      >>> net = jbp.mlp([1, 1], hidden=(), output=jbp.sigmoid)
      >>> params = (jbp.Dense(W=jnp.array([[0.6]]), b=jnp.array([0.9])),)
      >>> e = jbp.explain(net, params, jnp.array([1.0]), jnp.array([0.0]), jbp.squared_error,
      ...                 learning_rate=0.15)  # doctest: +ELLIPSIS
      Forward pass
        z^1 = W^1 a^0 + b^1  =  [1.5]
      ...
    """
    example = worked_example(net, params, x, y, loss, learning_rate, update_biases)
    print(render(example), file=sys.stdout if file is None else file)
    return example.explanation
