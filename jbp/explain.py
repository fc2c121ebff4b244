"""A worked example for any small network: every number next to its equation.

:func:`explain` runs the forward pass and BP1–BP4 for one sample and prints,
layer by layer, each ``z``, ``a``, ``δ``, gradient and (given a learning rate)
updated weight, with the equation that produced it: Mazur's step-by-step
table, for any network built with :func:`jbp.mlp`.
"""

import sys
from collections.abc import Sequence
from typing import NamedTuple, TextIO

import jax
import numpy as np

from jbp.batch import cost
from jbp.losses import Loss, get_loss
from jbp.network import MLP, Dense, backward, forward


class Explanation(NamedTuple):
    """Everything :func:`explain` computed, as arrays.

    Attributes:
      zs, activations: the forward trace (``activations[0]`` is ``x``).
      cost: ``C(a^L, y)``.
      deltas: ``(δ^1, …, δ^L)``.
      grads: ``∂C/∂W^l``, ``∂C/∂b^l`` per layer.
      updated: the parameters after one step of gradient descent, or
        ``None`` without a learning rate.
    """

    zs: tuple
    activations: tuple
    cost: float
    deltas: tuple
    grads: tuple[Dense, ...]
    updated: "tuple[Dense, ...] | None"


def _fmt(value) -> str:
    value = np.asarray(value)
    if value.ndim == 0:
        return f"{float(value):.9g}"
    text = np.array2string(value, precision=9, floatmode="maxprec", separator=", ", max_line_width=100)
    return text.replace("\n", "\n" + " " * 8)


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
    file = sys.stdout if file is None else file
    loss = get_loss(loss)
    trace = forward(net, params, x)
    grads, deltas = backward(net, params, trace, y, loss)
    y = np.asarray(y)
    C = float(cost(net, params, np.asarray(trace.activations[0])[None], y[None], loss))
    updated = None
    if learning_rate is not None:
        step = lambda p, g: p - learning_rate * g  # noqa: E731
        updated = tuple(
            Dense(W=step(layer.W, g.W), b=step(layer.b, g.b) if update_biases else layer.b)
            for layer, g in zip(params, grads)
        )

    L = net.depth

    def show(equation: str, value) -> None:
        print(f"  {equation}  =  {_fmt(value)}", file=file)

    print("Forward pass", file=file)
    for l, (z, a, sigma) in enumerate(zip(trace.zs, trace.activations[1:], net.activations), 1):
        show(f"z^{l} = W^{l} a^{l - 1} + b^{l}", z)
        show(f"a^{l} = {sigma.name}(z^{l})", a)
    show(f"C = {loss.name}(a^{L}, y)", C)

    output = net.activations[-1]
    print("Backward pass", file=file)
    if output == loss.canonical:
        show(f"BP1  δ^{L} = a^{L} - y  ({output.name} with {loss.name}: σ' cancels)", deltas[-1])
    else:
        show(f"∇_a C = ∇_a {loss.name}(a^{L}, y)", loss.grad(trace.activations[-1], y))
        show(f"BP1  δ^{L} = ∇_a C ⊙ σ'(z^{L})", deltas[-1])
    for l in reversed(range(1, L)):
        show(f"BP2  δ^{l} = ((W^{l + 1})^T δ^{l + 1}) ⊙ σ'(z^{l})", deltas[l - 1])
    for l in reversed(range(1, L + 1)):
        show(f"BP3  ∂C/∂b^{l} = δ^{l}", grads[l - 1].b)
        show(f"BP4  ∂C/∂W^{l} = δ^{l} (a^{l - 1})^T", grads[l - 1].W)
    if updated is not None:
        print(f"Gradient descent step, η = {learning_rate}", file=file)
        for l, layer in enumerate(updated, 1):
            show(f"W^{l}⁺ = W^{l} - η ∂C/∂W^{l}", layer.W)
            if update_biases:
                show(f"b^{l}⁺ = b^{l} - η ∂C/∂b^{l}", layer.b)
    as_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return Explanation(as_np(trace.zs), as_np(trace.activations), C, as_np(deltas), as_np(grads), as_np(updated))
