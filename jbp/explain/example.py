"""The worked example as data: one sample's passes, every number with its equation.

:func:`worked_example` runs jbp's own forward pass and BP1–BP4 for one
sample and keeps what a teacher writes on the board, step by step: the
sample and the parameters, each layer's ``z`` and ``a``, the cost, ``δ^L``
(BP1), each hidden ``δ^l`` (BP2), each layer's gradients (BP3, BP4) and,
given a learning rate, each updated layer. Every :class:`Step` names its
equation and the lines of jbp that computed it (found with :mod:`inspect`
in the functions that ran, so the line numbers follow the code). The
renderings read this and nothing else: :mod:`jbp.explain.text` prints it,
:mod:`jbp.explain.html` draws it.

The intermediate factors shown beside the deltas come from the same
functions the passes call, never a second copy of a formula: ``∇_a C`` is
the loss's ``grad``, ``σ'(z)`` the activation's backward step applied to
ones (elementwise activations only), ``(W^{l+1})^T δ^{l+1}`` is
:func:`jbp.feedback.carry`.
"""

import inspect
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jbp import losses as _losses
from jbp.activations import Activation
from jbp.batch import cost
from jbp.feedback import carry
from jbp.losses import Loss, get_loss
from jbp.layers.dense import DenseLayer
from jbp.network import MLP, Dense, _forward, backpropagate, backward, forward

ROOT = pathlib.Path(__file__).resolve().parents[2]
"""The folder that holds the ``jbp`` package: source paths are shown relative to it."""


class Explanation(NamedTuple):
    """Everything :func:`jbp.explain` computed, as arrays.

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


class Source(NamedTuple):
    """One line of code that computed a step.

    Attributes:
      function: its dotted name, ``jbp.network._forward``.
      path: the file, relative to the folder holding ``jbp`` when inside it
        (``jbp/network.py``), absolute otherwise (an activation of your own).
      line: the line number, from 1.
      code: the line's text, stripped.
    """

    function: str
    path: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


class Quantity(NamedTuple):
    """One computed value and the equation that gives it.

    Attributes:
      symbol: its name, plain text with ``^`` for superscripts: ``z^1``.
      equation: the equation, plain text: ``z^1 = W^1 a^0 + b^1``.
      value: a float64 array: a scalar, one value per neuron ``(n_l,)``, or
        one per weight ``(n_l, n_{l-1})``.
      role: what it is, for the renderings: ``x``, ``y``, ``W``, ``b``,
        ``z``, ``a``, ``cost``, ``cost_terms``, ``grad_a``, ``sigma_prime``,
        ``carried``, ``delta``, ``grad_b``, ``grad_W``, ``W_new``, ``b_new``.
      layer: the layer ``l`` it belongs to (0 for the input, ``L`` for the
        cost and the target).
    """

    symbol: str
    equation: str
    value: np.ndarray
    role: str
    layer: int


class Step(NamedTuple):
    """One step of the passes: one equation, applied to one layer.

    Attributes:
      kind: ``start``, ``forward``, ``cost``, ``BP1``, ``BP2``, ``BP3/BP4``
        or ``update``.
      layer: the layer the step computes (``L`` for the cost and BP1, 0 for
        the start).
      title: a heading: ``Forward pass, layer 1``.
      law: the equation in general form, plain text.
      quantities: what the step computed, in order.
      sources: the lines of jbp (or of your activation or loss) that computed it.
      note: a remark, or ``""``.
    """

    kind: str
    layer: int
    title: str
    law: str
    quantities: tuple[Quantity, ...]
    sources: tuple[Source, ...]
    note: str = ""


class Example(NamedTuple):
    """A worked example: the problem, the numbers, and the steps that show them.

    Attributes:
      net, loss: the network description and the per-sample cost.
      params: the parameters, as numpy arrays.
      x, y: the sample and its target.
      learning_rate: ``η`` of the update shown, or ``None``.
      update_biases: whether the update changes the biases.
      explanation: the numbers as arrays (what :func:`jbp.explain` returns).
      steps: the steps, in the order they are computed.
      title: what the example is (``Mazur's 2-2-2 example``), or ``""``.
    """

    net: MLP
    loss: Loss
    params: tuple[Dense, ...]
    x: np.ndarray
    y: np.ndarray
    learning_rate: "float | None"
    update_biases: bool
    explanation: Explanation
    steps: tuple[Step, ...]
    title: str = ""

    def step_index(self, kind: str, layer: "int | None" = None) -> "int | None":
        """The position of the first step of that kind (and layer), or ``None``."""
        for i, step in enumerate(self.steps):
            if step.kind == kind and (layer is None or step.layer == layer):
                return i
        return None


def gradient_step(param: np.ndarray, grad: np.ndarray, learning_rate: float) -> np.ndarray:
    """One step of gradient descent on one array: ``θ⁺ = θ - η ∂C/∂θ``."""
    return param - learning_rate * grad


def source(function: Callable, marker: "str | None" = None, name: "str | None" = None) -> "Source | None":
    """The line of ``function`` that starts with ``marker`` (else the first that holds it outside a
    comment, else its ``def`` line).

    ``function`` is unwrapped first (``jax.jit`` keeps the Python function as
    ``__wrapped__``); ``name`` replaces its own in the result (a lambda's is
    ``<lambda>``). Returns ``None`` for a function without Python source (a
    builtin, a compiled ufunc).
    """
    try:
        function = inspect.unwrap(function)
        lines, start = inspect.getsourcelines(function)
        path = pathlib.Path(inspect.getsourcefile(function)).resolve()
    except (TypeError, OSError):
        return None
    code = [text.strip() for text in lines]
    index = next((i for i, text in enumerate(code) if not text.startswith("@")), 0)
    if marker is not None:
        index = next((i for i, text in enumerate(code) if text.startswith(marker)),
                     next((i for i, text in enumerate(code) if marker in text.split("#")[0]), index))
    try:
        shown = path.relative_to(ROOT).as_posix()
    except ValueError:
        shown = os.fspath(path)
    module = getattr(function, "__module__", None) or "?"
    name = name or getattr(function, "__qualname__", getattr(function, "__name__", "?"))
    return Source(f"{module}.{name}", shown, max(start, 1) + index, code[index])


def is_elementwise(activation: Activation) -> bool:
    """Whether the activation was built by :func:`jbp.elementwise`, so that
    its backward step is ``g ⊙ σ'(z)`` and ``σ'(z)`` is that step applied to ones."""
    return getattr(activation.backward, "__qualname__", "").startswith("elementwise.")


def activation_source(activation: Activation) -> "Source | None":
    """Where ``σ'`` is written: the derivative given to :func:`jbp.elementwise`,
    or the backward step itself (softmax's Jacobian product)."""
    if is_elementwise(activation):
        try:
            derivative = inspect.getclosurevars(activation.backward).nonlocals.get("derivative")
        except (TypeError, ValueError):
            derivative = None
        if derivative is not None:
            return source(derivative, name=f"{activation.name} (σ')")
    return source(activation.backward, "return", name=f"{activation.name} (backward step)")


def definition(activation: Activation) -> "Source | None":
    """Where an elementwise activation is defined: the line of its derivative, given to
    :func:`jbp.elementwise` beside the function (``sigmoid = elementwise(...)``)."""
    return activation_source(activation) if is_elementwise(activation) else None


def _sources(*found: "Source | None") -> tuple[Source, ...]:
    """The lines found, leaving out those inside installed libraries (``jax.nn.sigmoid``'s):
    jbp's own lines and your code's are what a reader can open."""
    def ours(s: Source) -> bool:
        inside_jbp = not os.path.isabs(s.path)
        return inside_jbp or not any(part in ("site-packages", "dist-packages") for part in pathlib.Path(s.path).parts)

    return tuple(s for s in found if s is not None and ours(s))


def _cost_terms(loss: Loss, a: np.ndarray, y: np.ndarray, total: float) -> "np.ndarray | None":
    """``C = Σ_k C_k`` split over the outputs, for the built-in losses (all three
    are sums over the outputs), from the loss's own ``fn`` on one output at a
    time; ``None`` when the terms are not finite or do not add up to ``C``."""
    if _losses.LOSSES.get(loss.name) is not loss or a.shape[0] < 2:
        return None
    terms = np.array([float(loss.fn(jnp.asarray(a[k:k + 1]), jnp.asarray(y[k:k + 1]))) for k in range(a.shape[0])])
    if not np.all(np.isfinite(terms)) or not np.isclose(terms.sum(), total, rtol=1e-6, atol=1e-12):
        return None
    return terms


def worked_example(
    net: MLP,
    params: Sequence[Dense],
    x,
    y,
    loss: "Loss | str",
    learning_rate: "float | None" = None,
    update_biases: bool = True,
    title: str = "",
) -> Example:
    """Runs one sample through the passes and keeps every number, step by step.

    Args:
      net, params: the network.
      x, y: one sample and its target, shapes ``(n_0,)`` and ``(n_L,)``.
      loss: the per-sample cost.
      learning_rate: ``η``; when given, the steps end with the updated
        parameters ``W⁺ = W - η ∂C/∂W`` (and ``b⁺`` unless
        ``update_biases`` is false).
      title: what the example is, for the renderings.

    Returns:
      An :class:`Example`.

    Example:
      >>> import jax.numpy as jnp, jbp
      >>> from jbp.explain import worked_example
      >>> net = jbp.mlp([1, 1], hidden=(), output=jbp.sigmoid)
      >>> params = (jbp.Dense(W=jnp.array([[0.6]]), b=jnp.array([0.9])),)
      >>> e = worked_example(net, params, jnp.array([1.0]), jnp.array([0.0]), jbp.squared_error, 0.15)
      >>> [step.kind for step in e.steps]
      ['start', 'forward', 'cost', 'BP1', 'BP3/BP4', 'update']
      >>> e.steps[1].quantities[0].equation, float(e.steps[1].quantities[0].value[0])
      ('z^1 = W^1 a^0 + b^1', 1.5)
    """
    if not isinstance(net, MLP):
        raise TypeError(f"the worked example is written for dense networks (jbp.mlp, or jbp.network of dense layers "
                        f"alone); got {net!r}")
    loss = get_loss(loss)
    params, y, explanation = _passes(net, params, x, y, loss, learning_rate, update_biases)
    steps = [_start_step(net, params, explanation, y)]
    steps += _forward_steps(net, explanation)
    steps.append(_cost_step(net, loss, explanation, y))
    steps.append(_bp1_step(net, loss, explanation, y))
    steps += _bp2_steps(net, params, explanation)
    steps += _gradient_steps(net, explanation)
    steps += _update_steps(explanation, learning_rate, update_biases)
    return Example(net, loss, params, explanation.activations[0], y, learning_rate, update_biases, explanation,
                   tuple(steps), title)


def _passes(net: MLP, params: Sequence[Dense], x, y, loss: Loss, learning_rate: "float | None",
            update_biases: bool) -> tuple[tuple[Dense, ...], np.ndarray, Explanation]:
    """jbp's forward pass, BP1–BP4, the cost and (given ``η``) the update, for one sample:
    the parameters and the target as numpy arrays, and every number as an :class:`Explanation`."""
    trace = forward(net, params, x)
    grads, deltas = backward(net, params, trace, y, loss)
    a0 = np.asarray(trace.activations[0])
    y = np.asarray(y, dtype=a0.dtype)
    C = float(cost(net, params, a0[None], y[None], loss))
    as_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    params, zs, activations, grads, deltas = (as_np(tuple(t)) for t in (params, trace.zs, trace.activations, grads, deltas))
    updated = None
    if learning_rate is not None:
        updated = tuple(
            Dense(W=gradient_step(layer.W, g.W, learning_rate),
                  b=gradient_step(layer.b, g.b, learning_rate) if update_biases else layer.b)
            for layer, g in zip(params, grads)
        )
    return params, y, Explanation(zs, activations, C, deltas, grads, updated)


def _start_step(net: MLP, params: tuple[Dense, ...], e: Explanation, y: np.ndarray) -> Step:
    """The sample, its target and every layer's parameters."""
    L, Q = net.depth, Quantity
    return Step(
        "start", 0, "The sample and the parameters", "a^0 = x",
        (Q("x", "a^0 = x", e.activations[0], "x", 0), Q("y", "y", y, "y", L))
        + tuple(q for l, layer in enumerate(params, 1)
                for q in (Q(f"W^{l}", f"W^{l}", layer.W, "W", l), Q(f"b^{l}", f"b^{l}", layer.b, "b", l))),
        (),
        "W^l has one row per neuron of layer l and one column per neuron of layer l-1: "
        "W^l_jk is the weight from neuron k to neuron j.",
    )


def _forward_steps(net: MLP, e: Explanation) -> list[Step]:
    """Each layer's ``z^l`` and ``a^l``, first layer first."""
    Q = Quantity
    forward_z = source(DenseLayer.transform, "return x @ params.W.T + params.b")
    forward_a = source(_forward, "activations.append(layer.activation.fn(z))")
    steps = []
    for l, sigma in enumerate(net.activations, 1):
        steps.append(Step(
            "forward", l, f"Forward pass, layer {l}", "z^l = W^l a^{l-1} + b^l,  a^l = σ(z^l)",
            (Q(f"z^{l}", f"z^{l} = W^{l} a^{l - 1} + b^{l}", e.zs[l - 1], "z", l),
             Q(f"a^{l}", f"a^{l} = {sigma.name}(z^{l})", e.activations[l], "a", l)),
            _sources(forward_z, forward_a, *(_sources(source(sigma.fn)) or _sources(definition(sigma)))),
        ))
    return steps


def _cost_step(net: MLP, loss: Loss, e: Explanation, y: np.ndarray) -> Step:
    """``C`` (and its terms ``C_k`` where they add up), with the line that computed it: from ``z^L``
    for the canonical and stable pairs, from ``a^L`` otherwise."""
    L, Q = net.depth, Quantity
    output = net.activations[-1]
    canonical = output == loss.canonical
    stable = next((s for s in loss.stable if s[0] == output), None)
    if canonical:
        cost_line, cost_fn = "return loss.cost_from_z(z, y)", loss.cost_from_z
    elif stable is not None:
        cost_line, cost_fn = "return cost_from_z(z, y)", stable[1]
    else:
        cost_line, cost_fn = "return loss.fn(a, y)", loss.fn
    cost_quantities = (Q("C", f"C = {loss.name}(a^{L}, y)", np.asarray(e.cost), "cost", L),)
    terms = _cost_terms(loss, e.activations[-1], y, e.cost)
    if terms is not None:
        cost_quantities += (Q("C_k", f"C_k = {loss.name}(a^{L}_k, y_k)", terms, "cost_terms", L),)
    return Step(
        "cost", L, "The cost", "C = C(a^L, y)", cost_quantities,
        _sources(source(_losses.output_cost, cost_line), source(cost_fn, name=f"{loss.name} (C)")),
        f"computed from z^{L}, which keeps it finite when the output saturates" if (canonical or stable) else "",
    )


def _sigma_prime(net: MLP, e: Explanation, l: int) -> "Quantity | None":
    """``σ'(z^l)``: layer ``l``'s backward step applied to ones, for an elementwise activation
    (``None`` for another)."""
    sigma = net.activations[l - 1]
    if not is_elementwise(sigma):
        return None
    z, a = jnp.asarray(e.zs[l - 1]), jnp.asarray(e.activations[l])
    value = np.asarray(sigma.backward(z, a, jnp.ones_like(z)))
    return Quantity(f"σ'(z^{l})", f"σ'(z^{l}) = {sigma.name}'(z^{l})", value, "sigma_prime", l)


def _bp1_step(net: MLP, loss: Loss, e: Explanation, y: np.ndarray) -> Step:
    """BP1, ``δ^L``: ``a^L - y`` for a canonical pair, else ``∇_a C ⊙ σ'(z^L)`` with its factors."""
    L, Q = net.depth, Quantity
    output = net.activations[-1]
    canonical = output == loss.canonical
    stable = next((s for s in loss.stable if s[0] == output), None)
    delta_L = e.deltas[-1]
    if canonical:
        bp1 = (Q(f"δ^{L}", f"BP1  δ^{L} = a^{L} - y  ({output.name} with {loss.name}: σ' cancels)",
                 delta_L, "delta", L),)
        bp1_sources = _sources(source(_losses.output_delta, "return loss.fused_delta(a, y)"),
                               source(loss.fused_delta, name=f"{loss.name} (fused δ^L)"))
        note = (f"{output.name} is the canonical output of {loss.name}: in ∇_a C ⊙ σ'(z^{L}) the factor σ' cancels "
                f"and δ^{L} = a^{L} - y, with no 0/0 when the output saturates.")
        law = "δ^L = ∇_a C ⊙ σ'(z^L) = a^L - y"
    else:
        grad_a = np.asarray(loss.grad(jnp.asarray(e.activations[-1]), jnp.asarray(y)))
        bp1 = tuple(q for q in (
            Q("∇_a C", f"∇_a C = ∇_a {loss.name}(a^{L}, y)", grad_a, "grad_a", L),
            _sigma_prime(net, e, L),
            Q(f"δ^{L}", f"BP1  δ^{L} = ∇_a C ⊙ σ'(z^{L})", delta_L, "delta", L),
        ) if q is not None)
        if stable:
            bp1_sources = _sources(source(_losses.output_delta, "return delta_from_z(z, y)"), source(stable[2], "return"))
        else:
            bp1_sources = _sources(source(_losses.output_delta, "return output.backward(z, a, loss.grad(a, y))"),
                                   source(loss.grad, name=f"{loss.name} (∇_a C)"), activation_source(output))
        note = "" if is_elementwise(output) else (
            f"{output.name} is not elementwise: its backward step is the Jacobian-transpose product (∂a/∂z)^T ∇_a C.")
        if stable:
            note += f" Computed from z^{L} in a rearranged form that keeps its precision."
        law = "δ^L = ∇_a C ⊙ σ'(z^L)"
    return Step("BP1", L, "BP1: the error at the output", law, bp1, bp1_sources, note.strip())


def _bp2_steps(net: MLP, params: tuple[Dense, ...], e: Explanation) -> list[Step]:
    """BP2, each hidden ``δ^l`` from the layer above, last hidden layer first."""
    Q = Quantity
    bp2_line = source(backpropagate, "delta = net.layers[l - 1].activation.backward(")
    carry_line = source(DenseLayer.carry, "return delta @ params.W")
    steps = []
    for l in reversed(range(1, net.depth)):
        sigma = net.activations[l - 1]
        layer = jax.tree.map(jnp.asarray, params[l])
        carried = np.asarray(carry(None, l, net.layers[l], layer, jnp.asarray(e.activations[l]),
                                   jnp.asarray(e.deltas[l]), jnp.asarray(e.deltas[-1])))
        quantities = tuple(q for q in (
            Q(f"(W^{l + 1})^T δ^{l + 1}", f"(W^{l + 1})^T δ^{l + 1}", carried, "carried", l),
            _sigma_prime(net, e, l),
            Q(f"δ^{l}", f"BP2  δ^{l} = ((W^{l + 1})^T δ^{l + 1}) ⊙ σ'(z^{l})", e.deltas[l - 1], "delta", l),
        ) if q is not None)
        note = "" if is_elementwise(sigma) else (
            f"{sigma.name} is not elementwise: ⊙ σ'(z^{l}) is its Jacobian-transpose product.")
        steps.append(Step(
            "BP2", l, f"BP2: the error of layer {l}", "δ^l = ((W^{l+1})^T δ^{l+1}) ⊙ σ'(z^l)", quantities,
            _sources(bp2_line, carry_line, activation_source(sigma)), note,
        ))
    return steps


def _gradient_steps(net: MLP, e: Explanation) -> list[Step]:
    """BP3 and BP4, each layer's ``∂C/∂b^l`` and ``∂C/∂W^l``, last layer first."""
    Q = Quantity
    bp34_line = source(DenseLayer.grads, "return Dense(W=jnp.outer(delta, x), b=delta)")
    return [Step(
        "BP3/BP4", l, f"BP3 and BP4: the gradients of layer {l}", "∂C/∂b^l = δ^l,  ∂C/∂W^l = δ^l (a^{l-1})^T",
        (Q(f"∂C/∂b^{l}", f"BP3  ∂C/∂b^{l} = δ^{l}", e.grads[l - 1].b, "grad_b", l),
         Q(f"∂C/∂W^{l}", f"BP4  ∂C/∂W^{l} = δ^{l} (a^{l - 1})^T", e.grads[l - 1].W, "grad_W", l)),
        _sources(bp34_line),
    ) for l in reversed(range(1, net.depth + 1))]


def _update_steps(e: Explanation, learning_rate: "float | None", update_biases: bool) -> list[Step]:
    """Each layer after one step of gradient descent, first layer first (none without ``η``)."""
    if e.updated is None:
        return []
    Q = Quantity
    update_line = source(gradient_step, "return")
    steps = []
    for l, layer in enumerate(e.updated, 1):
        quantities = (Q(f"W^{l}⁺", f"W^{l}⁺ = W^{l} - η ∂C/∂W^{l}", layer.W, "W_new", l),)
        if update_biases:
            quantities += (Q(f"b^{l}⁺", f"b^{l}⁺ = b^{l} - η ∂C/∂b^{l}", layer.b, "b_new", l),)
        steps.append(Step(
            "update", l, f"Gradient descent: layer {l} updated, η = {learning_rate:g}",
            "W^l ← W^l - η ∂C/∂W^l,  b^l ← b^l - η ∂C/∂b^l" if update_biases else "W^l ← W^l - η ∂C/∂W^l",
            quantities, _sources(update_line),
            "" if update_biases else "The biases are kept, as in Mazur's article.",
        ))
    return steps
