"""The dense layer, all of its mathematics in one place.

Column-vector convention, as in the notes: ``W`` of shape ``(n_out, n_in)``, ``b`` of ``(n_out,)``.

=========================  ==========================================  ==================================
what                       equation                                    code (one sample / a batch)
=========================  ==========================================  ==================================
forward                    ``z = W a + b``                             ``a @ Wᵀ + b``
BP2's transport            ``Wᵀ δ``                                    ``δ @ W``
BP3, BP4                   ``∂C/∂b = δ``, ``∂C/∂W = δ aᵀ``             ``outer(δ, a)``
batch gradient             ``Σ_i δ_i a_iᵀ``                            ``Dᵀ A`` (one matmul)
per-sample norm²           ``‖δ aᵀ‖² + ‖δ‖² = ‖δ‖²(‖a‖² + 1)``         no ``m × n_out × n_in`` array
sum of squares             ``Σ_i (δ_i a_iᵀ)²``                         ``(D⊙D)ᵀ (A⊙A)``
Gram matrix                ``⟨g_i, g_j⟩ = ⟨δ_i, δ_j⟩(⟨a_i, a_j⟩ + 1)``  ``(D Dᵀ) ⊙ (A Aᵀ + 1)``
clipped sum                ``Σ_i c_i δ_i a_iᵀ``                        ``(c ⊙ D)ᵀ A``
diagonal GGN               ``Σ_i (Σ_c Δ_ic²) (a_i²)ᵀ``                 ``Sᵀ (A⊙A)``, ``S = Σ_c Δ²``
Kronecker factors          ``A = Σ ā āᵀ``, ``G = Σ Δ Δᵀ``              ``Āᵀ Ā``, ``Δᵀ Δ``, ``ā = [a; 1]``
initializer                LeCun normal ``W`` (variance ``1/n_in``),
                           ``b = 0``
L2 and weight decay        ``W`` only, never ``b``
=========================  ==========================================  ==================================

``a @ Wᵀ`` and ``δ @ W`` are the same numbers as ``W a`` and ``Wᵀ δ`` for one sample; under
``vmap`` they are products laid out sample-first, ``(m, n)``, as every pass reads them, with no
transpose (in bfloat16 and float16 XLA otherwise transposes the ``(n, m)`` result and the step
runs slower).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jbp.activations import Activation
from jbp.contract import contract, gram
from jbp.layers.base import Layer

Array = jax.Array


class Dense(NamedTuple):
    """The parameters of one dense layer, ``z = W a + b``.

    A ``NamedTuple``, hence a pytree: a tuple of ``Dense`` is what optax
    updates and what ``jax.tree.map`` walks, and gradients have the same type.

    Attributes:
      W: weights, shape ``(n_out, n_in)``; row ``j`` feeds neuron ``j``.
      b: biases, shape ``(n_out,)``.
    """

    W: Array
    b: Array


def lecun_normal() -> Any:
    """The weights' initializer: a truncated normal of variance ``1/n_in`` (the scale Nielsen's
    ``network2.py`` uses), on ``(n_out, n_in)``."""
    return jax.nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)


def _with_ones(a: Array) -> Array:
    """``ā = [a; 1]`` for a batch ``(m, n)`` → ``(m, n + 1)``."""
    return jnp.concatenate([a, jnp.ones((a.shape[0], 1), a.dtype)], axis=1)


class DenseLayer(Layer):
    """``z = W a + b`` on a vector of ``n_in`` numbers, ``n_out = units``; build it with :func:`dense`."""

    def __init__(self, units: int, activation: "Activation | str | None" = None, weight_init: Any = None):
        super().__init__(activation)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"dense: units must be a positive integer, got {units!r}")
        self.units, self.weight_init = int(units), weight_init

    def shapes(self, in_shape: tuple, dtype: Any) -> tuple[Dense, tuple]:
        if len(in_shape) != 1:
            raise ValueError(f"dense({self.units}) takes a vector, got an input of shape {tuple(in_shape)}; "
                             "put flatten() before it")
        (n_in,) = in_shape
        return Dense(jax.ShapeDtypeStruct((self.units, n_in), dtype), jax.ShapeDtypeStruct((self.units,), dtype)), (self.units,)

    def init(self, key: Array, in_shape: tuple, dtype: Any) -> tuple[Dense, tuple]:
        self.shapes(in_shape, dtype)  # refuses an input that is not a vector
        (n_in,) = in_shape
        initializer = self.weight_init or lecun_normal()
        return Dense(W=initializer(key, (self.units, n_in), dtype), b=jnp.zeros((self.units,), dtype)), (self.units,)

    def transform(self, params: Dense, x: Array) -> Array:
        return x @ params.W.T + params.b  # z = W a + b

    def carry(self, params: Dense, x: Array, delta: Array) -> Array:
        return delta @ params.W  # Wᵀ δ

    def grads(self, params: Dense, x: Array, delta: Array) -> Dense:
        return Dense(W=jnp.outer(delta, x), b=delta)  # BP4, BP3

    def decayed(self, params: Dense) -> Dense:
        return Dense(W=True, b=False)

    def transport(self, params: Dense) -> Array:
        return params.W

    def with_transport(self, params: Dense, transport: Array) -> Dense:
        return Dense(W=transport, b=params.b)

    # --- the batch, as contractions over the deltas D (m, n_out) and inputs A (m, n_in)

    def per_example_grads(self, params: Dense, X: Array, D: Array) -> Dense:
        return Dense(W=jnp.einsum("bo,bi->boi", D, X), b=D)

    def batch_grads(self, params: Dense, X: Array, D: Array) -> Dense:
        return Dense(W=contract(D, X), b=jnp.sum(D, axis=0))  # Δ = Dᵀ A

    def per_example_sq_norms(self, params: Dense, X: Array, D: Array) -> Array:
        return jnp.sum(D**2, axis=1) * (jnp.sum(X**2, axis=1) + 1)  # ‖δ‖²(‖a‖² + 1)

    def sum_grad_squared(self, params: Dense, X: Array, D: Array) -> Dense:
        return Dense(W=contract(D**2, X**2), b=jnp.sum(D**2, axis=0))

    def gram(self, params: Dense, X: Array, D: Array) -> Array:
        return gram(D, D) * (gram(X, X) + 1)

    def diag_ggn(self, params: Dense, X: Array, Dc: Array) -> Dense:
        squares = jnp.sum(Dc**2, axis=2)  # Σ_c Δ², (m, n_out)
        return Dense(W=contract(squares, X**2), b=jnp.sum(squares, axis=0))

    def kron_factors(self, params: Dense, X: Array, Dc: Array) -> tuple[Array, Array]:
        flat = jnp.swapaxes(Dc, 1, 2).reshape(-1, Dc.shape[1])  # (m · c, n_out)
        return contract(_with_ones(X), _with_ones(X)), contract(flat, flat)

    def __repr__(self) -> str:
        init = "" if self.weight_init is None else f", weight_init={self.weight_init!r}"
        return f"dense({self.units}, activation={self.activation.name}{init})"


def dense(units: int, activation: "Activation | str | None" = None, *, weight_init: Any = None) -> DenseLayer:
    """A dense layer of ``units`` outputs, ``z = W a + b``, ``a ↦ σ(z)``; params :class:`Dense`.

    Args:
      units: ``n_out``.
      activation: ``σ`` (an :class:`~jbp.Activation` or its name); identity by default.
      weight_init: any ``jax.nn.initializers`` initializer for ``W``, called with
        ``(key, (n_out, n_in), dtype)``; LeCun normal by default.

    Example:
      >>> import jbp
      >>> jbp.dense(10, activation=jbp.softmax)
      dense(10, activation=softmax)
    """
    return DenseLayer(units, activation, weight_init)
