"""jbp.explain: the numbers it prints are the passes' numbers, each beside its equation."""

import io

import jax
import jax.numpy as jnp
import numpy as np

import jbp
import reference as ref


def test_explain_prints_every_equation_with_the_passes_numbers():
    sizes = (3, 4, 4, 2)
    params, X, Y = ref.random_problem(0, sizes, "binary_cross_entropy", 1)
    params = tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params)
    net = jbp.mlp(sizes, hidden=["tanh", "elu"], output="softmax")
    text = io.StringIO()
    e = jbp.explain(net, params, X[0], Y[0], "binary_cross_entropy", learning_rate=0.1, file=text)
    out = text.getvalue()
    for line in ("z^1 = W^1 a^0 + b^1", "a^2 = elu(z^2)", "a^3 = softmax(z^3)", "∇_a C = ∇_a binary_cross_entropy",
                 "BP1  δ^3 = ∇_a C ⊙ σ'(z^3)", "BP2  δ^2 = ((W^3)^T δ^3) ⊙ σ'(z^2)", "BP2  δ^1",
                 "BP3  ∂C/∂b^1 = δ^1", "BP4  ∂C/∂W^3 = δ^3 (a^2)^T", "W^2⁺ = W^2 - η ∂C/∂W^2", "b^3⁺"):
        assert line in out, line
    # against autodiff of the independent reference
    grads_ref = jax.tree.map(lambda g: g[0], ref.per_example_grads(
        tuple((p.W, p.b) for p in params), X, Y, ("tanh", "elu", "softmax"), "binary_cross_entropy"))
    ref.assert_close(e.grads, grads_ref)
    np.testing.assert_allclose(e.updated[2].W, params[2].W - 0.1 * grads_ref[2][0], rtol=1e-12)
    assert f"{e.cost:.9g}" in out


def test_canonical_pair_says_sigma_prime_cancels():
    net = jbp.mlp([2, 3], hidden=(), output="sigmoid")
    params = jbp.init(net, jax.random.key(0))
    text = io.StringIO()
    e = jbp.explain(net, params, jnp.ones(2), jnp.array([0.0, 1.0, 0.0]), "binary_cross_entropy", file=text)
    assert "BP1  δ^1 = a^1 - y  (sigmoid with binary_cross_entropy: σ' cancels)" in text.getvalue()
    np.testing.assert_allclose(e.deltas[0], e.activations[-1] - np.array([0.0, 1.0, 0.0]), rtol=1e-12)
    assert e.updated is None and "Gradient descent" not in text.getvalue()
