"""Compiled once per shape; the batch gradient is one contraction over the
batch axis, with no per-sample outer products in the program."""

import chex
import jax
import jax.extend
import numpy as np

import jbp

NET = jbp.mlp([6, 5, 4], hidden=jbp.relu, output=jbp.softmax)
PARAMS = jbp.init(NET, jax.random.key(0))
M = 9


def batch(seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(M, 6)), np.eye(4)[rng.integers(0, 4, M)]


def test_a_jitted_training_step_traces_once():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, X, Y):
        _, grads = jbp.loss_and_grads(NET, params, X, Y, jbp.softmax_cross_entropy, l2=0.1)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

    params = PARAMS
    for seed in range(4):
        params = step(params, *batch(seed))  # a second trace would raise
    chex.clear_trace_counter()


def test_loss_and_grads_compiles_once_per_shape_whatever_the_l2():
    """Two programs at most per shape: λ = 0 (no penalty computed) and any other λ."""
    cache = jbp.batch._loss_and_grads
    rng = np.random.default_rng(0)
    Y = np.eye(4)[rng.integers(0, 4, 13)]  # 13 rows: a shape no other test uses
    before = cache._cache_size()
    for l2 in (0.5, 3.0, 0.01, 0.0, 0.0):
        jbp.loss_and_grads(NET, PARAMS, rng.normal(size=(13, 6)), Y, jbp.softmax_cross_entropy, l2=l2)
    assert cache._cache_size() == before + 2


def _intermediate_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(var.aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _intermediate_shapes(sub)


def _outer_product_shapes(fn):
    """Every (M, n_out, n_in) array the traced program would create."""
    X, Y = batch(1)
    jaxpr = jax.make_jaxpr(fn)(PARAMS, X, Y).jaxpr
    stacks = {(M, layer.W.shape[0], layer.W.shape[1]) for layer in PARAMS}
    return [shape for shape in _intermediate_shapes(jaxpr) if shape in stacks]


def test_batch_gradient_has_no_per_sample_outer_products():
    found = _outer_product_shapes(lambda p, X, Y: jbp.loss_and_grads(NET, p, X, Y, "softmax_cross_entropy"))
    assert found == []


def test_grad_norms_have_no_per_sample_outer_products():
    found = _outer_product_shapes(lambda p, X, Y: jbp.per_example_grad_norms(NET, p, X, Y, "softmax_cross_entropy"))
    assert found == []


def test_the_shape_probe_does_see_outer_products_where_they_are():
    """The probe can fail: per_example_grads does build (M, n_out, n_in) arrays."""
    found = _outer_product_shapes(lambda p, X, Y: jbp.per_example_grads(NET, p, X, Y, "softmax_cross_entropy"))
    assert (M, 5, 6) in found and (M, 4, 5) in found
