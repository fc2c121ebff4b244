"""jbp's hand-written gradients against JAX autodiff of an independent
reference (tests/reference.py), in float64.

Tolerance: every entry agrees to 1e-10 relative, with a floor of 1e-10 times
the largest entry of its array (see reference.assert_close); costs agree to
1e-10 relative.
"""

import contextlib
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import jbp
import reference as ref

NAMES = tuple(ref.ACTIVATIONS)
LOSS_NAMES = tuple(ref.LOSSES)
HYPOTHESIS = settings(
    max_examples=int(os.environ.get("JBP_HYPOTHESIS_EXAMPLES", 30)),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)


def as_dense(params):
    return tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params)


def output_for(hidden, loss):
    """The activation itself if the loss is defined on its range, else the loss's canonical one."""
    if hidden in ref.OUTPUTS_FOR_LOSS[loss]:
        return hidden
    return jbp.get_loss(loss).canonical.name


def check_against_reference(sizes, names, loss, l2, m, seed):
    """loss_and_grads, per_example_grads and per_example_grad_norms against autodiff."""
    params, X, Y = ref.random_problem(seed, sizes, loss, m)
    net = jbp.mlp(sizes, hidden=names[:-1], output=names[-1])
    dense = as_dense(params)

    J, grads = jbp.loss_and_grads(net, dense, X, Y, loss, l2=l2)
    J_ref, grads_ref = ref.value_and_grad(params, X, Y, names, loss, l2)
    np.testing.assert_allclose(J, J_ref, rtol=1e-10)
    ref.assert_close(grads, grads_ref)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, dense)

    per_example = jbp.per_example_grads(net, dense, X, Y, loss)
    per_example_ref = ref.per_example_grads(params, X, Y, names, loss)
    ref.assert_close(per_example, per_example_ref)

    norms = jbp.per_example_grad_norms(net, dense, X, Y, loss)
    norms_ref = jnp.sqrt(sum(jnp.sum(g.reshape(m, -1) ** 2, axis=1) for g in jax.tree.leaves(per_example_ref)))
    chex.assert_shape(norms, (m,))
    ref.assert_close(norms, norms_ref)


class GridTest(chex.TestCase):
    """Every activation (as hidden layers, and as the output where the loss
    is defined on its range) with every loss, batch 1 and 7, L2 off and on,
    with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(hidden=NAMES, loss=LOSS_NAMES)
    def test_loss_and_grads_match_autodiff(self, hidden, loss):
        output = output_for(hidden, loss)
        names = (hidden, hidden, output)
        sizes = (4, 6, 5, 3)
        net = jbp.mlp(sizes, hidden=names[:-1], output=output)
        seed = NAMES.index(hidden) * 10 + LOSS_NAMES.index(loss)
        for m in (1, 7):
            for l2 in (0.0, 0.7):
                params, X, Y = ref.random_problem(seed, sizes, loss, m)
                dense = as_dense(params)
                call = self.variant(lambda p, X, Y: jbp.loss_and_grads(net, p, X, Y, loss, l2=l2))
                no_jit = self.variant.type == chex.ChexVariantType.WITHOUT_JIT
                with jax.disable_jit() if no_jit else contextlib.nullcontext():
                    J, grads = call(dense, X, Y)
                J_ref, grads_ref = ref.value_and_grad(params, X, Y, names, loss, l2)
                np.testing.assert_allclose(J, J_ref, rtol=1e-10)
                ref.assert_close(grads, grads_ref)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(hidden=NAMES, loss=LOSS_NAMES)
    def test_per_sample_backward_matches_autodiff(self, hidden, loss):
        output = output_for(hidden, loss)
        names = (hidden, output)
        sizes = (3, 5, 4)
        net = jbp.mlp(sizes, hidden=hidden, output=output)
        params, X, Y = ref.random_problem(7, sizes, loss, 1)
        dense, x, y = as_dense(params), X[0], Y[0]

        def one_sample(p, x, y):
            trace = jbp.forward(net, p, x)
            return jbp.backward(net, p, trace, y, jbp.get_loss(loss))

        no_jit = self.variant.type == chex.ChexVariantType.WITHOUT_JIT
        with jax.disable_jit() if no_jit else contextlib.nullcontext():
            grads, deltas = self.variant(one_sample)(dense, x, y)
        grads_ref = jax.tree.map(lambda g: g[0], ref.per_example_grads(params, X, Y, names, loss))
        ref.assert_close(grads, grads_ref)
        # δ^l = ∂C/∂z^l, and ∂C/∂b^l = δ^l (BP3): the deltas are the bias gradients.
        ref.assert_close(deltas, tuple(layer.b for layer in grads))
        chex.assert_shape(deltas, [(5,), (4,)])


@st.composite
def architectures(draw):
    depth = draw(st.integers(1, 5))
    sizes = tuple(draw(st.lists(st.integers(1, 40), min_size=depth + 1, max_size=depth + 1)))
    hidden = tuple(draw(st.lists(st.sampled_from(NAMES), min_size=depth - 1, max_size=depth - 1)))
    loss = draw(st.sampled_from(LOSS_NAMES))
    output = draw(st.sampled_from(ref.OUTPUTS_FOR_LOSS[loss]))
    # A one-wide softmax is the constant 1, where log(1 - a) is -inf.
    assume(not (loss == "binary_cross_entropy" and output == "softmax" and sizes[-1] == 1))
    m = draw(st.one_of(st.just(1), st.integers(2, 16)))
    l2 = draw(st.one_of(st.just(0.0), st.floats(0.01, 5.0)))
    seed = draw(st.integers(0, 2**32 - 1))
    return sizes, hidden + (output,), loss, l2, m, seed


@HYPOTHESIS
@given(architectures())
def test_random_networks_match_autodiff(problem):
    check_against_reference(*problem)


@settings(HYPOTHESIS, max_examples=max(HYPOTHESIS.max_examples // 10, 1))
@given(architectures())
def test_random_networks_match_autodiff_without_jit(problem):
    with jax.disable_jit():
        check_against_reference(*problem)


def test_user_defined_activation_is_used_at_once():
    """swish built from fn and σ' alone, then trained through as a built-in one is."""
    swish = jbp.elementwise(
        "swish",
        lambda z: z * jax.nn.sigmoid(z),
        lambda z, a: a + jax.nn.sigmoid(z) * (1 - a),
    )
    sizes = (3, 8, 2)
    params, X, Y = ref.random_problem(3, sizes, "softmax_cross_entropy", 5)
    net = jbp.mlp(sizes, hidden=swish, output=jbp.softmax)
    J, grads = jbp.loss_and_grads(net, as_dense(params), X, Y, jbp.softmax_cross_entropy, l2=0.2)

    def swish_cost(params):
        (W1, b1), (W2, b2) = params
        z1 = X @ W1.T + b1
        h = z1 / (1 + jnp.exp(-z1))
        logits = h @ W2.T + b2
        log_p = logits - jax.scipy.special.logsumexp(logits, axis=1, keepdims=True)
        return -jnp.mean(jnp.sum(Y * log_p, axis=1)) + 0.2 / (2 * 5) * (jnp.sum(W1**2) + jnp.sum(W2**2))

    J_ref, grads_ref = jax.value_and_grad(swish_cost)(params)
    np.testing.assert_allclose(J, J_ref, rtol=1e-10)
    ref.assert_close(grads, grads_ref)


def test_each_backward_step_is_the_vector_jacobian_product():
    """σ's backward step, alone, against jax.vjp of the reference σ."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=7) * 3
    g = rng.normal(size=7)
    for name in NAMES:
        act = jbp.get_activation(name)
        a = act.fn(z)
        np.testing.assert_allclose(a, ref.ACTIVATIONS[name](z), rtol=1e-12, err_msg=name)
        _, vjp = jax.vjp(ref.ACTIVATIONS[name], z)
        np.testing.assert_allclose(act.backward(z, a, g), vjp(g)[0], rtol=1e-12, atol=1e-15, err_msg=name)


def test_each_loss_gradient_is_autodiff_of_its_cost():
    """∇_a C, alone, against jax.grad of the reference C; and the canonical
    pair's cost from z against C(σ(z), y)."""
    rng = np.random.default_rng(1)
    a = rng.uniform(0.05, 0.95, size=6)
    y = rng.dirichlet(np.ones(6))
    z = rng.normal(size=6) * 2
    for name in LOSS_NAMES:
        loss = jbp.get_loss(name)
        np.testing.assert_allclose(loss.fn(a, y), ref.LOSSES[name](a, y), rtol=1e-12)
        np.testing.assert_allclose(loss.grad(a, y), jax.grad(ref.LOSSES[name])(a, y), rtol=1e-12)
        sigma = ref.ACTIVATIONS[loss.canonical.name]
        np.testing.assert_allclose(loss.cost_from_z(z, y), ref.LOSSES[name](sigma(z), y), rtol=1e-12)
        fused = jax.grad(lambda z: ref.LOSSES[name](sigma(z), y))(z)
        np.testing.assert_allclose(jbp.output_delta(loss.canonical, loss, z, sigma(z), y), fused, rtol=1e-12)
