"""Credit assignment: what carries the error back one layer in BP2.

Backpropagation moves the error back through the transposed forward weights,
``δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)``. Brains, and some hardware, cannot
use the forward weights backwards ("weight transport"), and a line of work
replaces exactly that product, keeping BP1, BP3 and BP4 as they are:

=============================  ==============================================  ==============================
rule                           BP2 becomes                                     reference
=============================  ==============================================  ==============================
:func:`backprop`               ``((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)``              Rumelhart, Hinton, Williams 1986
:func:`feedback_alignment`     ``((B^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)``, ``B`` fixed  Lillicrap et al. 2016
:func:`direct_feedback_alignment`  ``(B^l δ^L) ⊙ σ'(z^l)``, ``B^l`` fixed       Nøkland 2016
:func:`sign_symmetry`          ``(sign(W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)``          Liao, Leibo, Poggio 2016
:func:`kolen_pollack`          as feedback alignment, ``B`` learning           Akrout et al. 2019
=============================  ==============================================  ==============================

A rule is a value (a pytree: its matrices are leaves, its kind is static),
passed as ``feedback=`` to :func:`jbp.deltas`, :func:`jbp.backward`,
:func:`jbp.loss_and_grads` and :func:`jbp.fit`; with any rule but backprop
the "gradient" they return is the rule's update direction. The rule never
imports the network: :func:`carry` receives the layer above, the error above
and the output error, and returns the vector BP2 multiplies by ``σ'(z^l)``.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.checks import check_finite, check_key

Array = jax.Array

KINDS = ("backprop", "fa", "dfa", "sign", "kp")
"""The rules by their short names (``jbp train --rule``)."""


@jax.tree_util.register_pytree_node_class
class Feedback:
    """A credit-assignment rule: its kind, its feedback matrices (or none) and, for
    Kolen-Pollack, the decay both the weights and the matrices receive.

    Build one with :func:`backprop`, :func:`feedback_alignment`,
    :func:`direct_feedback_alignment`, :func:`sign_symmetry` or
    :func:`kolen_pollack`.
    """

    def __init__(self, kind: str, matrices: "tuple[Array, ...]" = (), decay: float = 0.0):
        self.kind, self.matrices, self.decay = kind, tuple(matrices), decay

    def tree_flatten(self):
        return (self.matrices,), (self.kind, self.decay)

    @classmethod
    def tree_unflatten(cls, aux, children):
        kind, decay = aux
        return cls(kind, children[0], decay)

    def replace(self, matrices) -> "Feedback":
        return Feedback(self.kind, matrices, self.decay)

    @property
    def learns(self) -> bool:
        """Whether its matrices change during training (Kolen-Pollack)."""
        return self.kind == "kp"

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(np.shape(B))) for B in self.matrices)
        return f"Feedback({self.kind!r}" + (f", matrices {shapes}" if shapes else "") + \
            (f", decay {self.decay}" if self.kind == "kp" else "") + ")"


def carry(rule: "Feedback | None", l: int, W_above: Array, delta_above: Array, delta_out: Array) -> Array:
    """The vector that BP2 multiplies by ``σ'(z^l)`` at hidden layer ``l`` (counted from 1), one sample.

    Args:
      rule: the rule, or ``None`` for backprop.
      l: the layer receiving the error.
      W_above: ``W^{l+1}``, shape ``(n_{l+1}, n_l)``.
      delta_above: ``δ^{l+1}``, shape ``(n_{l+1},)``.
      delta_out: ``δ^L``, shape ``(n_L,)``.
    """
    kind = "backprop" if rule is None else rule.kind
    if kind == "backprop":
        return delta_above @ W_above  # (W^{l+1})ᵀ δ^{l+1}, written δ @ W (see network.backpropagate)
    if kind in ("fa", "kp"):
        return delta_above @ rule.matrices[l]  # (B^{l+1})ᵀ δ^{l+1}; matrices[l] is B^{l+1}
    if kind == "sign":
        return delta_above @ jnp.sign(W_above)  # sign(W^{l+1})ᵀ δ^{l+1}
    if kind == "dfa":
        return delta_out @ rule.matrices[l - 1].T  # B^l δ^L, written δ^L @ (B^l)ᵀ; matrices[l-1] is B^l
    raise ValueError(f"unknown feedback rule {kind!r}; expected one of {', '.join(KINDS)}")


def backprop() -> Feedback:
    """Backpropagation's BP2, the default: ``δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)``.

    The chain rule exactly (Rumelhart, Hinton and Williams 1986): the update
    is the gradient.

    Example:
      >>> import jbp
      >>> jbp.backprop()
      Feedback('backprop')
    """
    return Feedback("backprop")


def _matrices(matrices: Any, name: str) -> tuple:
    if isinstance(matrices, (str, bytes)) or not isinstance(matrices, Sequence):
        raise TypeError(f"{name} takes a sequence of matrices, one per layer, got {type(matrices).__name__}")
    out = []
    for l, B in enumerate(matrices, 1):
        try:
            dtype = np.dtype(getattr(B, "dtype", None) or np.asarray(B).dtype)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: matrix {l} is not an array of numbers: {type(B).__name__}") from None
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"{name}: matrix {l} must be floating point, got {dtype}")
        if np.ndim(B) != 2:
            raise ValueError(f"{name}: matrix {l} must be a matrix, got shape {np.shape(B)}")
        check_finite(B, f"{name}: matrix {l}")
        out.append(jnp.asarray(B))
    return tuple(out)


def feedback_alignment(matrices: Sequence[Array]) -> Feedback:
    """Feedback alignment: the error goes back through fixed random matrices.

    .. math:: \\delta^l = ((B^{l+1})^T \\delta^{l+1}) \\odot \\sigma'(z^l)

    ``matrices`` holds one ``B^l`` per layer, shaped like ``W^l`` (``B^1`` is
    never used, since no error goes back from layer 1). The forward weights
    learn to align with ``B`` (Lillicrap, Cownden, Tweed and Akerman 2016,
    "Random synaptic feedback weights support error backpropagation for deep
    learning", Nature Communications). :func:`feedback_alignment.random`
    draws them as :func:`jbp.init` draws weights. With ``B = W`` it is backprop.

    Example:
      >>> import jax, jbp
      >>> net = jbp.mlp([4, 5, 3])
      >>> rule = jbp.feedback_alignment.random(net, jax.random.key(1))
      >>> [B.shape for B in rule.matrices]
      [(5, 4), (3, 5)]
    """
    return Feedback("fa", _matrices(matrices, "feedback_alignment"))


def direct_feedback_alignment(matrices: Sequence[Array]) -> Feedback:
    """Direct feedback alignment: every hidden layer gets the output error at once.

    .. math:: \\delta^l = (B^l \\delta^L) \\odot \\sigma'(z^l)

    ``matrices`` holds one ``B^l`` of shape ``(n_l, n_L)`` per hidden layer
    ``l = 1 … L-1``; nothing is carried layer by layer, so the hidden layers'
    errors need no sequential pass (Nøkland 2016, "Direct Feedback Alignment
    Provides Learning in Deep Neural Networks", NeurIPS).
    :func:`direct_feedback_alignment.random` draws them.

    Example:
      >>> import jax, jbp
      >>> net = jbp.mlp([4, 5, 6, 3])
      >>> [B.shape for B in jbp.direct_feedback_alignment.random(net, jax.random.key(1)).matrices]
      [(5, 3), (6, 3)]
    """
    return Feedback("dfa", _matrices(matrices, "direct_feedback_alignment"))


def sign_symmetry() -> Feedback:
    """Sign symmetry: the error goes back through the signs of the forward weights.

    .. math:: \\delta^l = (\\operatorname{sign}(W^{l+1})^T \\delta^{l+1}) \\odot \\sigma'(z^l)

    Only the signs are transported, not the magnitudes (Liao, Leibo and Poggio
    2016, "How Important Is Weight Symmetry in Backpropagation?", AAAI).

    Example:
      >>> import jbp
      >>> jbp.sign_symmetry()
      Feedback('sign')
    """
    return Feedback("sign")


def kolen_pollack(matrices: Sequence[Array], decay: float = 1e-4) -> Feedback:
    """Kolen-Pollack: feedback matrices that learn, with the weights' own update.

    BP2 as :func:`feedback_alignment`, with ``B^l`` shaped like ``W^l``; after
    each step of :func:`jbp.fit`, where the optimizer's update of ``W^l`` is
    ``u^l``, both change by it and both decay:

    .. math:: W^l \\leftarrow W^l + u^l - d\\, W^l, \\qquad
              B^l \\leftarrow B^l + u^l - d\\, B^l

    so ``B^l - W^l`` shrinks by ``(1 - d)`` every step and ``B`` converges to
    ``W`` (Kolen and Pollack 1994; Akrout, Wilson, Humphreys, Lillicrap and
    Tweed 2019, "Deep Learning without Weight Transport", NeurIPS). The
    matrices are carried through :func:`jbp.fit` (``FitResult.feedback``),
    checkpointed and resumed like the optimizer's state.

    Args:
      matrices: the initial ``B^l``, one per layer, shaped like ``W^l``.
      decay: ``d``, the weight decay both receive each step, in ``[0, 1)``.
        The default, 1e-4 a step (Akrout et al.'s weight decay), aligns ``B``
        with ``W`` within a few epochs of minibatch training; a larger one
        aligns faster and regularizes the weights more.

    Example:
      >>> import jax, jbp
      >>> rule = jbp.kolen_pollack.random(jbp.mlp([4, 5, 3]), jax.random.key(1))
      >>> rule.learns, rule.decay
      (True, 0.0001)
    """
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"kolen_pollack's decay must lie in [0, 1), got {decay!r}")
    return Feedback("kp", _matrices(matrices, "kolen_pollack"), float(decay))


def _random_like_weights(net, key: Array, dtype=None) -> tuple:
    """One ``(n_l, n_{l-1})`` matrix per layer, drawn exactly as :func:`jbp.init` draws the weights
    (LeCun normal, the key split once per layer), without importing the network module."""
    check_key(key)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    initializer = jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
    keys = jax.random.split(key, net.depth)
    return tuple(initializer(k, (n_out, n_in), dtype) for k, n_in, n_out in zip(keys, net.sizes[:-1], net.sizes[1:]))


def _random_direct(net, key: Array, dtype=None) -> tuple:
    """One ``(n_l, n_L)`` matrix per hidden layer, LeCun normal as :func:`jbp.init` draws weights (fan-in ``n_L``)."""
    check_key(key)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    initializer = jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
    keys = jax.random.split(key, max(net.depth - 1, 1))
    return tuple(initializer(k, (n, net.sizes[-1]), dtype) for k, n in zip(keys, net.sizes[1:-1]))


feedback_alignment.random = lambda net, key, dtype=None: feedback_alignment(_random_like_weights(net, key, dtype))
feedback_alignment.random.__doc__ = "Feedback alignment with ``B^l`` drawn as :func:`jbp.init` draws ``W^l``."
direct_feedback_alignment.random = lambda net, key, dtype=None: direct_feedback_alignment(_random_direct(net, key, dtype))
direct_feedback_alignment.random.__doc__ = "Direct feedback alignment with LeCun-normal ``B^l`` of shape ``(n_l, n_L)``."
kolen_pollack.random = lambda net, key, decay=1e-4, dtype=None: kolen_pollack(_random_like_weights(net, key, dtype), decay)
kolen_pollack.random.__doc__ = "Kolen-Pollack starting from ``B^l`` drawn as :func:`jbp.init` draws ``W^l``."


def by_name(name: str, net, key: Array, dtype=None) -> Feedback:
    """The rule a short name stands for (:data:`KINDS`), with random matrices drawn from ``key``."""
    makers = {
        "backprop": lambda: backprop(),
        "fa": lambda: feedback_alignment.random(net, key, dtype),
        "dfa": lambda: direct_feedback_alignment.random(net, key, dtype),
        "sign": lambda: sign_symmetry(),
        "kp": lambda: kolen_pollack.random(net, key, dtype=dtype),
    }
    if name not in makers:
        raise ValueError(f"unknown feedback rule {name!r}; expected one of {', '.join(KINDS)}")
    return makers[name]()


def check_feedback(net, params, rule: Any) -> "Feedback | None":
    """Refuses a rule that does not fit the network: the wrong count, shape or dtype of matrices,
    naming the layer; returns the rule (``None`` for backprop)."""
    if rule is None:
        return None
    if not isinstance(rule, Feedback):
        raise TypeError(f"feedback must be a rule from jbp.backprop(), jbp.feedback_alignment(...) and kin, "
                        f"got {type(rule).__name__}")
    if rule.kind == "backprop":
        return None
    if rule.kind not in KINDS:
        raise ValueError(f"unknown feedback rule {rule.kind!r}; expected one of {', '.join(KINDS)}")
    dtype = jnp.result_type(params[0].W)
    if rule.kind in ("fa", "kp"):
        expected = [tuple(np.shape(layer.W)) for layer in params]
        what = "one per layer, shaped like W^l"
    elif rule.kind == "dfa":
        expected = [(n, net.sizes[-1]) for n in net.sizes[1:-1]]
        what = f"one per hidden layer, of shape (n_l, {net.sizes[-1]})"
    else:
        return rule
    if len(rule.matrices) != len(expected):
        raise ValueError(f"{rule.kind} needs {len(expected)} matrices ({what}) for the network {list(net.sizes)}, "
                         f"got {len(rule.matrices)}")
    for l, (B, shape) in enumerate(zip(rule.matrices, expected), 1):
        if not isinstance(B, jax.core.Tracer):
            if tuple(np.shape(B)) != shape:
                raise ValueError(f"{rule.kind}: matrix {l} (B^{l}) has shape {tuple(np.shape(B))}, expected {shape} "
                                 f"for the network {list(net.sizes)}")
            if jnp.result_type(B) != dtype:
                raise TypeError(f"{rule.kind}: matrix {l} (B^{l}) is {jnp.result_type(B)}, the parameters are {dtype}")
    return rule


def angle(u: Any, v: Any) -> Array:
    """The angle in degrees between two pytrees taken as flat vectors."""
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(u)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(v)])
    cosine = jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), jnp.finfo(a.dtype).tiny)
    return jnp.degrees(jnp.arccos(jnp.clip(cosine, -1.0, 1.0)))
