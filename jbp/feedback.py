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
the "gradient" they return is the rule's update direction.

Each kind is one :class:`Rule` in :data:`RULES`, holding all it does: its
random matrices, the shapes it expects, how it carries the error back through
a layer, what it learns after an optimizer step and its diagnostics. Adding a
rule is one subclass and one entry there. A rule works on any layer
(:mod:`jbp.layers`) through the layer's *transport* (what BP2 carries through:
Dense's ``W``), so ``B^l`` is shaped like it; the rule never imports the
network, only asks it for its layers and their shapes.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jbp.checks import check_finite, check_key, params_dtype

Array = jax.Array

KINDS = ("backprop", "fa", "dfa", "sign", "kp")
"""The rules by their short names (``jbp train --rule``); :data:`RULES` holds each one's behaviour."""


@jax.tree_util.register_pytree_node_class
class Feedback:
    """A credit-assignment rule: its kind, its feedback matrices (or none) and, for
    Kolen-Pollack, the decay both the weights and the matrices receive.

    ``matrices`` holds one entry per layer: for feedback alignment and Kolen-Pollack a pytree
    shaped like the layer's transport (a matrix like ``W^l`` for a dense layer, ``()`` for a
    layer without parameters); for direct feedback alignment one ``B^l`` per layer below the
    output, of shape ``(*out_shape_l, n_L)``.

    Build one with :func:`backprop`, :func:`feedback_alignment`,
    :func:`direct_feedback_alignment`, :func:`sign_symmetry` or
    :func:`kolen_pollack`.
    """

    def __init__(self, kind: str, matrices: "tuple[Any, ...]" = (), decay: float = 0.0):
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
    def rule(self) -> "Rule":
        """What this kind does (:data:`RULES`)."""
        if self.kind not in RULES:
            raise ValueError(f"unknown feedback rule {self.kind!r}; expected one of {', '.join(KINDS)}")
        return RULES[self.kind]

    @property
    def learns(self) -> bool:
        """Whether its matrices change during training (Kolen-Pollack)."""
        return self.kind in RULES and RULES[self.kind].learns

    def __repr__(self) -> str:
        shapes = ", ".join(str(jax.tree.map(lambda B: tuple(np.shape(B)), B)) for B in self.matrices)
        return f"Feedback({self.kind!r}" + (f", matrices {shapes}" if shapes else "") + \
            (f", decay {self.decay}" if self.kind == "kp" else "") + ")"


# --- the rules


def _draw_transports(net, key: Array, dtype=None) -> tuple:
    """One transport-shaped pytree per layer, drawn exactly as :func:`jbp.init` draws the parameters
    (each layer's own initializer, the key split once per layer): a dense layer's ``W``."""
    check_key(key)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    keys = jax.random.split(key, len(net.layers))
    return tuple(layer.transport(layer.init(k, shape, dtype)[0]) for layer, k, shape in zip(net.layers, keys, net.in_shapes))


def _flat_size(shape: tuple) -> int:
    return int(np.prod(shape, dtype=np.int64))


class Rule:
    """What one kind of rule does; the base is backpropagation's. One instance per kind in :data:`RULES`."""

    kind = "backprop"
    learns = False

    def random(self, net, key: Array, dtype=None) -> Feedback:
        """The rule with matrices drawn from ``key`` (none for rules without matrices)."""
        del net, key, dtype
        return Feedback(self.kind)

    def expected(self, net, params) -> "list | None":
        """The shapes of the matrices, one pytree of shapes per entry, or None for no matrices."""
        return None

    def carry(self, feedback, l: int, layer, params, x: Array, delta_above: Array, delta_out: Array) -> Array:
        """The vector BP2 multiplies by ``σ'(z^l)``: the error ``delta_above`` of layer ``l + 1``
        (0-based ``l``; ``layer``, ``params`` and its input ``x`` are that layer's) carried back."""
        return layer.carry(params, x, delta_above)  # (W^{l+1})ᵀ δ^{l+1}, written δ @ W for a dense layer

    def after_update(self, feedback, layers, old, new, updates):
        """``(params, feedback)`` after an optimizer step from ``old`` to ``new`` by ``updates``."""
        return new, feedback

    def angles(self, feedback, layers, params) -> "list | None":
        """Per layer with a transport, the angle between the rule's feedback and the forward one."""
        return None


class FeedbackAlignment(Rule):
    kind = "fa"

    def random(self, net, key, dtype=None):
        return feedback_alignment(_draw_transports(net, key, dtype))

    def expected(self, net, params):
        return [jax.tree.map(np.shape, layer.transport(p)) for layer, p in zip(net.layers, params)]

    def carry(self, feedback, l, layer, params, x, delta_above, delta_out):
        # (B^{l+1})ᵀ δ^{l+1}: the layer's own transport with B in place of W; matrices[l] is B^{l+1}
        return layer.carry(layer.with_transport(params, feedback.matrices[l]), x, delta_above)

    def angles(self, feedback, layers, params):
        return [angle(B, layer.transport(p)) for B, layer, p in zip(feedback.matrices, layers, params)
                if jax.tree.leaves(B)]


class KolenPollack(FeedbackAlignment):
    """Feedback alignment whose ``B`` receives the weights' update and decay:
    ``W ← W + u − d W``, ``B ← B + u − d B`` (on the transport; a dense layer's ``b`` is untouched)."""

    kind = "kp"
    learns = True

    def random(self, net, key, dtype=None, decay=1e-4):
        return kolen_pollack(_draw_transports(net, key, dtype), decay)

    def after_update(self, feedback, layers, old, new, updates):
        d = feedback.decay
        params = tuple(
            layer.with_transport(n, jax.tree.map(lambda w, w_old: w - d * w_old, layer.transport(n), layer.transport(o)))
            for layer, n, o in zip(layers, new, old)
        )
        matrices = tuple(jax.tree.map(lambda B, u: B + u - d * B, B, layer.transport(u))
                         for B, layer, u in zip(feedback.matrices, layers, updates))
        return params, feedback.replace(matrices)


class SignSymmetry(Rule):
    kind = "sign"

    def carry(self, feedback, l, layer, params, x, delta_above, delta_out):
        signs = jax.tree.map(jnp.sign, layer.transport(params))  # sign(W^{l+1})ᵀ δ^{l+1}
        return layer.carry(layer.with_transport(params, signs), x, delta_above)

    def angles(self, feedback, layers, params):
        return [angle(jax.tree.map(jnp.sign, layer.transport(p)), layer.transport(p))
                for layer, p in zip(layers, params) if jax.tree.leaves(layer.transport(p))]


class DirectFeedbackAlignment(Rule):
    kind = "dfa"

    def random(self, net, key, dtype=None):
        """One ``B^l`` per layer below the output, LeCun normal as :func:`jbp.init` draws weights
        (fan-in ``n_L``), drawn as ``(size of layer l's output, n_L)`` and shaped as that output."""
        check_key(key)
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
        initializer = jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)
        n_out = _flat_size(net.output_shape)
        hidden = net.out_shapes[:-1]
        keys = jax.random.split(key, max(len(hidden), 1))
        return direct_feedback_alignment(tuple(
            initializer(k, (_flat_size(shape), n_out), dtype).reshape(*shape, n_out) for k, shape in zip(keys, hidden)
        ))

    def expected(self, net, params):
        return [(*shape, _flat_size(net.output_shape)) for shape in net.out_shapes[:-1]]

    def carry(self, feedback, l, layer, params, x, delta_above, delta_out):
        B = feedback.matrices[l - 1]  # B^l, for the layer receiving the error
        n_out = delta_out.size
        # B^l δ^L, written δ^L @ (B^l)ᵀ (reshapes are no-ops for a dense layer's (n_l, n_L))
        return (delta_out.reshape(-1) @ B.reshape(-1, n_out).T).reshape(B.shape[:-1])


RULES = {rule.kind: rule for rule in (Rule(), FeedbackAlignment(), DirectFeedbackAlignment(), SignSymmetry(), KolenPollack())}
"""Every rule by its kind: what :class:`Feedback`'s ``kind`` names. Keys in :data:`KINDS`' order."""


def carry(feedback: "Feedback | None", l: int, layer, params, x: Array, delta_above: Array, delta_out: Array) -> Array:
    """What BP2 multiplies by ``σ'(z^l)``: the error of layer ``l + 1`` (0-based ``l``: ``layer``,
    ``params`` and its input ``x``) carried back by the rule, ``None`` for backprop. One sample."""
    rule = RULES["backprop"] if feedback is None else feedback.rule
    return rule.carry(feedback, l, layer, params, x, delta_above, delta_out)


# --- the public constructors


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
    for l, entry in enumerate(matrices, 1):
        leaves, tree = jax.tree.flatten(entry)
        checked = []
        for B in leaves:
            try:
                dtype = np.dtype(getattr(B, "dtype", None) or np.asarray(B).dtype)
            except (TypeError, ValueError):
                raise TypeError(f"{name}: matrix {l} is not an array of numbers: {type(B).__name__}") from None
            if not np.issubdtype(dtype, np.floating):
                raise TypeError(f"{name}: matrix {l} must be floating point, got {dtype}")
            if np.ndim(B) < (2 if B is entry else 1):  # a bare entry is a matrix (or more axes), as W is
                raise ValueError(f"{name}: matrix {l} must be a matrix, got shape {np.shape(B)}")
            check_finite(B, f"{name}: matrix {l}")
            checked.append(jnp.asarray(B))
        out.append(jax.tree.unflatten(tree, checked))
    return tuple(out)


def feedback_alignment(matrices: Sequence[Any]) -> Feedback:
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


def kolen_pollack(matrices: Sequence[Any], decay: float = 1e-4) -> Feedback:
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


feedback_alignment.random = lambda net, key, dtype=None: RULES["fa"].random(net, key, dtype)
feedback_alignment.random.__doc__ = "Feedback alignment with ``B^l`` drawn as :func:`jbp.init` draws ``W^l``."
direct_feedback_alignment.random = lambda net, key, dtype=None: RULES["dfa"].random(net, key, dtype)
direct_feedback_alignment.random.__doc__ = "Direct feedback alignment with LeCun-normal ``B^l`` of shape ``(n_l, n_L)``."
kolen_pollack.random = lambda net, key, decay=1e-4, dtype=None: RULES["kp"].random(net, key, dtype, decay)
kolen_pollack.random.__doc__ = "Kolen-Pollack starting from ``B^l`` drawn as :func:`jbp.init` draws ``W^l``."


def by_name(name: str, net, key: Array, dtype=None) -> Feedback:
    """The rule a short name stands for (:data:`KINDS`), with random matrices drawn from ``key``."""
    if name not in RULES:
        raise ValueError(f"unknown feedback rule {name!r}; expected one of {', '.join(KINDS)}")
    return RULES[name].random(net, key, dtype)


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
    expected = rule.rule.expected(net, params)
    if expected is None:
        return rule
    what = {"dfa": f"one per layer below the output, of shape (*out_shape, {_flat_size(net.output_shape)})"}.get(
        rule.kind, "one per layer, shaped like W^l")
    if len(rule.matrices) != len(expected):
        raise ValueError(f"{rule.kind} needs {len(expected)} matrices ({what}) for the network {net.name}, "
                         f"got {len(rule.matrices)}")
    dtype = params_dtype(params)
    for l, (B, shape) in enumerate(zip(rule.matrices, expected), 1):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(B)):
            continue
        found = jax.tree.map(np.shape, B)
        if found != shape:
            raise ValueError(f"{rule.kind}: matrix {l} (B^{l}) has shape {found}, expected {shape} "
                             f"for the network {net.name}")
        for leaf in jax.tree.leaves(B):
            if jnp.result_type(leaf) != dtype:
                raise TypeError(f"{rule.kind}: matrix {l} (B^{l}) is {jnp.result_type(leaf)}, the parameters are {dtype}")
    return rule


def after_update(feedback: "Feedback | None", layers, old, new, updates):
    """``(params, feedback)`` after an optimizer step (a learning rule's own change, :class:`KolenPollack`)."""
    if feedback is None:
        return new, feedback
    return feedback.rule.after_update(feedback, layers, old, new, updates)


def angle(u: Any, v: Any) -> Array:
    """The angle in degrees between two pytrees taken as flat vectors."""
    a = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(u)])
    b = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(v)])
    cosine = jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), jnp.finfo(a.dtype).tiny)
    return jnp.degrees(jnp.arccos(jnp.clip(cosine, -1.0, 1.0)))
