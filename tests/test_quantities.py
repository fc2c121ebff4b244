"""Per-sample statistics and curvature from the deltas, against autodiff.

Every reference is built here from JAX autodiff of the plain-jnp network in
reference.py: per-sample gradients from ``vmap(grad)``, the GGN from
``jacfwd`` of the output and ``hessian`` of the cost in the output. float64,
1e-9 relative (with a floor of 1e-9 times the largest entry, as in
reference.assert_close). Monte-Carlo estimates are tested for bias with a
5-standard-error bound over many keys.
"""

import contextlib
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import jbp
import jbp.quantities as Q
import reference as ref
from test_compilation import _outer_product_shapes

RTOL = 1e-9
CANONICAL = [("identity", "squared_error"), ("sigmoid", "binary_cross_entropy"), ("softmax", "softmax_cross_entropy")]
OTHER = [("tanh", "squared_error"), ("sigmoid", "softmax_cross_entropy"), ("softmax", "binary_cross_entropy"),
         ("softmax", "squared_error")]
SETTINGS = settings(max_examples=14, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def as_dense(params):
    return tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params)


def flat_per_sample(params, X, Y, names, loss):
    """(m, P): every sample's gradient, flattened in ravel_pytree's order (W1, b1, W2, b2, …)."""
    grads = ref.per_example_grads(params, X, Y, names, loss)
    return jax.vmap(lambda g: ravel_pytree(g)[0])(grads)


def _is_canonical(names, loss):
    return jbp.get_loss(loss).canonical.name == names[-1]


@partial(jax.jit, static_argnames=("names", "loss"))
def ggn_reference(params, X, Y, names, loss):
    """(1/m) Σ_i J_iᵀ H_i J_i over all parameters: output z^L for the canonical pairs, a^L otherwise."""
    canonical = _is_canonical(names, loss)
    flat, unravel = ravel_pytree(params)

    def output(theta, x):
        p = unravel(theta)
        a = x
        for (W, b), name in zip(p[:-1], names[:-1]):
            a = ref.ACTIVATIONS[name](W @ a + b)
        W, b = p[-1]
        z = W @ a + b
        return z if canonical else ref.ACTIVATIONS[names[-1]](z)

    def cost_of_output(o, y):
        return ref.LOSSES[loss](ref.ACTIVATIONS[names[-1]](o) if canonical else o, y)

    J = jax.vmap(jax.jacfwd(output), in_axes=(None, 0))(flat, X)  # (m, n_L, P)
    H = jax.vmap(jax.hessian(cost_of_output))(jax.vmap(output, in_axes=(None, 0))(flat, X), Y)
    return jnp.einsum("mip,mij,mjq->pq", J, H, J) / X.shape[0]


def layer_blocks(params):
    """For each layer, the indices into the flat parameters of [W b] flattened row by row."""
    blocks, offset = [], 0
    for W, b in params:
        n_out, n_in = W.shape
        w_index = offset + np.arange(n_out * n_in).reshape(n_out, n_in)
        b_index = offset + n_out * n_in + np.arange(n_out)
        blocks.append(np.concatenate([w_index, b_index[:, None]], axis=1).ravel())
        offset += n_out * n_in + n_out
    return blocks


@partial(jax.jit, static_argnames=("names", "loss"))
def kron_reference(params, X, Y, names, loss):
    """Per layer: A = (1/m) Σ ā āᵀ and G = (1/m) Σ Jᵀ H J with J = ∂output/∂z^l (autodiff)."""
    canonical = _is_canonical(names, loss)
    factors = []
    for l in range(len(params)):

        def input_of_layer(x):
            a = x
            for (W, b), name in zip(params[:l], names[:l]):
                a = ref.ACTIVATIONS[name](W @ a + b)
            return a

        def from_layer(z):
            h = z
            for k in range(l, len(params)):
                if k > l:
                    h = params[k][0] @ h + params[k][1]
                if k < len(params) - 1 or not canonical:
                    h = ref.ACTIVATIONS[names[k]](h)
            return h

        def cost_of_output(o, y):
            return ref.LOSSES[loss](ref.ACTIVATIONS[names[-1]](o) if canonical else o, y)

        a = jax.vmap(input_of_layer)(X)
        z = a @ params[l][0].T + params[l][1]
        J = jax.vmap(jax.jacfwd(from_layer))(z)  # (m, n_out, n_l)
        H = jax.vmap(jax.hessian(cost_of_output))(jax.vmap(from_layer)(z), Y)
        a_bar = jnp.concatenate([a, jnp.ones((len(X), 1))], axis=1)
        factors.append((a_bar.T @ a_bar / len(X), jnp.einsum("mip,mij,mjq->pq", J, H, J) / len(X)))
    return factors


def check_all(sizes, names, loss, m, seed, call=None):
    """Every quantity of jbp.one_pass against its autodiff reference."""
    params, X, Y = ref.random_problem(seed, sizes, loss, m)
    net = jbp.mlp(sizes, hidden=names[:-1], output=names[-1])
    dense = as_dense(params)
    wanted = ["grads", "sum_grad_squared", "grad_variance", "per_example_grad_gram", "per_example_grad_norms",
              "diag_ggn", "kflr"]
    call = call or (lambda p, X, Y: jbp.one_pass(net, p, X, Y, loss, wanted))
    out = call(dense, X, Y)

    G = flat_per_sample(params, X, Y, names, loss)  # (m, P)
    _, unravel = ravel_pytree(params)
    as_layers = lambda flat: tuple(jbp.Dense(W, b) for W, b in unravel(flat))  # noqa: E731
    ref.assert_close(out["grads"], as_layers(G.mean(0)), RTOL)
    ref.assert_close(out["sum_grad_squared"], as_layers((G**2).sum(0)), RTOL)
    # E[g²] - E[g]² cancels: its error is relative to E[g²], the larger of the two
    variance, second_moment = as_layers((G**2).mean(0) - G.mean(0) ** 2), as_layers((G**2).mean(0))
    for got, want, scale in zip(jax.tree.leaves(out["grad_variance"]), jax.tree.leaves(variance),
                                jax.tree.leaves(second_moment)):
        np.testing.assert_array_less(np.abs(got - want), RTOL * (np.abs(want) + np.max(scale)) + 1e-300)
    ref.assert_close(out["per_example_grad_gram"], G @ G.T, RTOL)
    ref.assert_close(out["per_example_grad_norms"], jnp.linalg.norm(G, axis=1), RTOL)

    ggn = ggn_reference(params, X, Y, names, loss)
    ref.assert_close(out["diag_ggn"], as_layers(jnp.diag(ggn)), RTOL)
    for (A, G_ref), got in zip(kron_reference(params, X, Y, names, loss), out["kflr"]):
        ref.assert_close(got.A, A, RTOL)
        ref.assert_close(got.G, G_ref, RTOL)
    if m == 1:  # one sample: the exact factors are the GGN's blocks, exactly
        for block, factors in zip(layer_blocks(params), out["kflr"]):
            ref.assert_close(jnp.kron(factors.G, factors.A), ggn[np.ix_(block, block)], RTOL)


@st.composite
def problems(draw):
    depth = draw(st.integers(1, 4))
    sizes = tuple(draw(st.lists(st.integers(1, 7), min_size=depth + 1, max_size=depth + 1)))
    hidden = tuple(draw(st.lists(st.sampled_from(tuple(ref.ACTIVATIONS)), min_size=depth - 1, max_size=depth - 1)))
    output, loss = draw(st.sampled_from(CANONICAL + OTHER))
    assume(not (output == "softmax" and sizes[-1] == 1))  # a one-wide softmax is the constant 1
    m = draw(st.one_of(st.just(1), st.integers(2, 6)))
    return sizes, hidden + (output,), loss, m, draw(st.integers(0, 2**32 - 1))


@SETTINGS
@given(problems())
def test_random_networks_match_autodiff(problem):
    check_all(*problem)


@settings(SETTINGS, max_examples=2)
@given(problems())
def test_random_networks_match_autodiff_without_jit(problem):
    with jax.disable_jit():
        check_all(*problem)


class PairsTest(chex.TestCase):
    """Every canonical pair and the non-canonical ones, through each public function, with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*(CANONICAL + OTHER))
    def test_public_functions(self, output, loss):
        sizes, names, m = (4, 5, 3, 3), ("tanh", "sigmoid", output), 4
        net = jbp.mlp(sizes, hidden=names[:-1], output=output)

        def call(p, X, Y):
            return {
                "grads": jbp.loss_and_grads(net, p, X, Y, loss)[1],
                "sum_grad_squared": jbp.sum_grad_squared(net, p, X, Y, loss),
                "grad_variance": jbp.grad_variance(net, p, X, Y, loss),
                "per_example_grad_gram": jbp.per_example_grad_gram(net, p, X, Y, loss),
                "per_example_grad_norms": jbp.per_example_grad_norms(net, p, X, Y, loss),
                "diag_ggn": jbp.diag_ggn(net, p, X, Y, loss),
                "kflr": jbp.kfac_factors(net, p, X, Y, loss),
            }

        no_jit = self.variant.type == chex.ChexVariantType.WITHOUT_JIT
        with jax.disable_jit() if no_jit else contextlib.nullcontext():
            check_all(sizes, names, loss, m, seed=11, call=self.variant(call))


# --- Monte-Carlo: unbiased


@pytest.mark.parametrize("output, loss", CANONICAL)
def test_monte_carlo_estimates_are_unbiased(output, loss):
    sizes = (3, 4, 3)
    params, X, Y = ref.random_problem(5, sizes, loss, 4)
    net = jbp.mlp(sizes, hidden="tanh", output=output)
    dense = as_dense(params)
    exact = jbp.one_pass(net, dense, X, Y, loss, ["diag_ggn", "kflr"])
    draws = [jbp.one_pass(net, dense, X, Y, loss, ["diag_ggn_mc", "kfac"], key=jax.random.key(k), samples=3)
             for k in range(400)]
    for name, target in (("diag_ggn_mc", exact["diag_ggn"]), ("kfac", exact["kflr"])):
        stacked = [np.stack(leaves) for leaves in zip(*(jax.tree.leaves(d[name]) for d in draws))]
        for estimates, want in zip(stacked, jax.tree.leaves(target)):
            mean, error = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
            assert np.all(np.abs(mean - want) <= 5 * error + 1e-12), (name, np.max(np.abs(mean - want) / (error + 1e-300)))
    # and the test can fail: twice the estimate is far outside that bound
    doubled = 2 * np.stack([d["diag_ggn_mc"][0].W for d in draws])
    assert not np.all(np.abs(doubled.mean(0) - exact["diag_ggn"][0].W) <= 5 * doubled.std(0) / np.sqrt(400) + 1e-12)


def test_one_draw_per_sample_matches_its_definition():
    """samples=1 with one key: the draws jbp makes are the loss's fused_sample of split keys."""
    sizes = (3, 4, 3)
    params, X, Y = ref.random_problem(2, sizes, "softmax_cross_entropy", 5)
    net = jbp.mlp(sizes, hidden="relu", output="softmax")
    d = jbp.diag_ggn_mc(net, as_dense(params), X, Y, "softmax_cross_entropy", jax.random.key(4), samples=2)
    assert all(np.all(np.asarray(leaf) >= 0) for leaf in jax.tree.leaves(d))
    assert any(np.any(np.asarray(leaf) > 0) for leaf in jax.tree.leaves(d))


# --- memory: no per-sample outer products in the first-order quantities


@pytest.mark.parametrize("name", ["sum_grad_squared", "grad_variance", "per_example_grad_gram"])
def test_first_order_quantities_form_no_per_sample_gradients(name):
    found = _outer_product_shapes(lambda p, X, Y: getattr(jbp, name)(jbp.mlp([6, 5, 4], "relu", "softmax"), p, X, Y,
                                                                     "softmax_cross_entropy"))
    assert found == []


# --- bad input, refused before anything is compiled


NET = jbp.mlp([3, 4, 2], hidden="tanh", output="softmax")
PARAMS = jbp.init(NET, jax.random.key(0))
X, Y = np.ones((5, 3)), np.eye(2)[[0, 1, 0, 1, 1]]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: jbp.diag_ggn_mc(NET, PARAMS, X, Y, "softmax_cross_entropy", jax.random.key(0), samples=0),
         ValueError, "samples must be a whole number ≥ 1, got 0"),
        (lambda: jbp.diag_ggn_mc(NET, PARAMS, X, Y, "softmax_cross_entropy", jax.random.key(0), samples=1.5),
         TypeError, "samples must be a whole number ≥ 1, got float"),
        (lambda: jbp.diag_ggn_mc(NET, PARAMS, X, Y, "softmax_cross_entropy", "seed"), TypeError,
         "key must be one jax.random.key"),
        (lambda: jbp.diag_ggn_mc(NET, PARAMS, X, Y, "softmax_cross_entropy", None), TypeError,
         "diag_ggn_mc and kfac draw targets: pass key="),
        (lambda: jbp.diag_ggn_mc(NET, PARAMS, X, Y, "binary_cross_entropy", jax.random.key(0)), ValueError,
         "would estimate the Fisher, not the GGN"),
        (lambda: jbp.kfac_factors(jbp.mlp([3, 2], (), "tanh"), jbp.init(jbp.mlp([3, 2], (), "tanh"), jax.random.key(0)),
                                  X, Y, "squared_error", key=jax.random.key(0)),
         ValueError, "kfac_factors with a key samples targets"),
        (lambda: jbp.one_pass(NET, PARAMS, X, Y, "softmax_cross_entropy", ["diag_hessian"]), ValueError,
         "unknown quantity 'diag_hessian'"),
        (lambda: jbp.diag_ggn(NET, PARAMS, X, Y, jbp.Loss("mine", lambda a, y: jnp.sum(a), lambda a, y: jnp.ones_like(a))),
         ValueError, "mine has no hessian_factor"),
        (lambda: jbp.sum_grad_squared(NET, PARAMS, np.ones((5, 4)), Y, "softmax_cross_entropy"), ValueError,
         "X must have shape (m, 3)"),
    ],
)
def test_bad_input_is_refused_before_compiling(call, error, message):
    before = Q._quantities._cache_size()
    with pytest.raises(error, match=message.replace("(", "\\(").replace(")", "\\)")):
        call()
    assert Q._quantities._cache_size() == before
