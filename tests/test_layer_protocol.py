"""The layer protocol end to end: a layer written outside the package (``Scale``, ``z = γ ⊙ x + β``)
between two dense layers, through every call that takes ``(net, params, …)``.

Every reference is built here by JAX autodiff (``jax.grad``, ``jax.vmap``, ``jax.jacfwd``) of the
same network written out in plain jnp (:func:`plain_pass`), never through jbp. float64 (conftest),
compared entry by entry to 1e-10 relative with a floor of 1e-10 times the leaf's largest magnitude
(``reference.assert_close``); Monte-Carlo estimates within a few standard errors. Scale's ``γ`` and
``β`` and the dense biases are drawn at random (some ``γ`` negative), so no check is trivial.

Speed: the references are a few compiled programs (:func:`ref_sample`, :func:`ref_batch`,
:func:`ref_core`, :func:`ref_kron`) and everything after them is NumPy; the fits share one optimizer,
data set and batch size, so that they share compiled epochs. Multi-device training runs in a
subprocess with two simulated CPU devices, as ``test_parallel.py`` runs ``mesh_cases.py``.
"""

import os
import pathlib
import subprocess
import sys
import textwrap
from functools import partial

import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree

import reference as ref

# --- the contract: a layer of one's own, and a network with it (exactly as the issue writes it)

import jax, jax.numpy as jnp, jbp

class Scale(jbp.Layer):                      # z = γ ⊙ x + β, written outside the package
    def init(self, key, in_shape, dtype):
        return (jnp.ones(in_shape, dtype), jnp.zeros(in_shape, dtype)), in_shape
    def transform(self, params, x):          # one sample
        gamma, beta = params
        return gamma * x + beta
    def carry(self, params, x, delta):       # ∂C/∂x from δ = ∂C/∂z
        return params[0] * delta
    def grads(self, params, x, delta):       # ∂C/∂params, one sample
        return (delta * x, delta)

net = jbp.network(jbp.dense(8, activation=jbp.tanh), Scale(activation=jbp.tanh),
                  jbp.dense(3, activation=jbp.softmax), input_shape=(5,))
params = jbp.init(net, jax.random.key(0))   # a tuple, one entry per layer

# --- what the tests share

HERE = pathlib.Path(__file__).parent
LOSS = "softmax_cross_entropy"
RTOL = 1e-10
M = 6  # rows of the batch tests
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
HYPOTHESIS = settings(max_examples=3, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def maybe_jit(f, jit):
    """``f`` itself, or ``f`` compiled as a whole (the public calls then see traced arguments)."""
    return jax.jit(f) if jit else f


def numpy(tree):
    """Every leaf as a NumPy array (what the tests compute with after the references)."""
    return jax.tree.map(np.asarray, tree)


def make_net(width=8, act="tanh"):
    """The contract's network with another width before Scale and another activation on Scale."""
    return jbp.network(jbp.dense(width, activation=jbp.tanh), Scale(activation=jbp.get_activation(act)),
                       jbp.dense(3, activation=jbp.softmax), input_shape=(5,))


def perturbed(p, seed):
    """``p`` with Scale's γ, β and the dense biases drawn at random (γ around 0.5, some negative)."""
    rng = np.random.default_rng(seed)
    (W1, b1), (gamma, beta), (W3, b3) = p
    draw = lambda scale, like, shift=0.0: jnp.asarray(shift + scale * rng.normal(size=np.shape(like)))  # noqa: E731
    return (jbp.Dense(W1, draw(0.3, b1)), (draw(1.0, gamma, 0.5), draw(0.3, beta)), jbp.Dense(W3, draw(0.3, b3)))


def random_params(width, seed):
    """Parameters of ``make_net(width, …)`` drawn in NumPy (LeCun-scaled weights), perturbed as above."""
    rng = np.random.default_rng(seed)
    like = (jbp.Dense(jnp.asarray(rng.normal(size=(width, 5)) / np.sqrt(5)), np.zeros(width)),
            (np.ones(width), np.zeros(width)),
            jbp.Dense(jnp.asarray(rng.normal(size=(3, width)) / np.sqrt(width)), np.zeros(3)))
    return perturbed(like, seed + 1)


def problem(width=8, act="tanh", m=M, seed=0):
    """A network, perturbed parameters, inputs ``(m, 5)`` and one-hot targets ``(m, 3)``."""
    if (width, act) == (8, "tanh"):
        n, p = net, perturbed(params, seed + 1)
    else:
        n, p = make_net(width, act), random_params(width, seed + 1)
    rng = np.random.default_rng(seed + 2)
    X = rng.normal(size=(m, 5))
    Y = np.eye(3)[rng.integers(0, 3, m)]
    return n, p, X, Y


# --- the reference: the same network in plain jnp, differentiated by JAX


def plain_pass(p, x, act="tanh", eps=None):
    """One sample: ``(z^1, z^2, z^3)`` and ``(a^0, …, a^3)``. ``eps`` is added to every ``z``, so that
    the gradient of the cost in ``eps`` at zero is ``δ^l = ∂C/∂z^l``."""
    (W1, b1), (gamma, beta), (W3, b3) = p
    e = (0.0, 0.0, 0.0) if eps is None else eps
    z1 = W1 @ x + b1 + e[0]
    a1 = jnp.tanh(z1)
    z2 = gamma * a1 + beta + e[1]
    a2 = ref.ACTIVATIONS[act](z2)
    z3 = W3 @ a2 + b3 + e[2]
    return (z1, z2, z3), (x, a1, a2, ref.ACTIVATIONS["softmax"](z3))


def plain_cost(p, x, y, act="tanh", eps=None):
    """One sample's cross-entropy ``-Σ y log softmax(z^3)``."""
    zs, _ = plain_pass(p, x, act, eps)
    return -jnp.sum(y * jax.nn.log_softmax(zs[-1]))


def decayed_norm(p):
    """``Σ ‖W‖²`` over the dense layers only: Scale's γ and β are not decayed."""
    return sum(float(np.sum(np.asarray(p[l][0]) ** 2)) for l in (0, 2))


def plain_J(p, X, Y, act="tanh", l2=0.0):
    """Coursera's ``J = mean C + λ/(2m) Σ ‖W‖²`` over the dense ``W``."""
    costs = jax.vmap(partial(plain_cost, act=act), in_axes=(None, 0, 0))(p, X, Y)
    return jnp.mean(costs) + l2 / (2 * X.shape[0]) * (jnp.sum(p[0][0] ** 2) + jnp.sum(p[2][0] ** 2))


def offsets_at_zero(p, x, act):
    return tuple(jnp.zeros_like(z) for z in plain_pass(p, x, act)[0])


def softmax_hessian(z):
    """The cross-entropy's Hessian in ``z^L``: ``diag(p) − p pᵀ``."""
    prob = ref.ACTIVATIONS["softmax"](z)
    return jnp.diag(prob) - jnp.outer(prob, prob)


@partial(jax.jit, static_argnames="act")
def ref_sample(p, x, y, act="tanh"):
    """One sample: ``zs``, ``activations``, ``∂C/∂θ`` (jax.grad) and ``δ^l = ∂C/∂z^l`` (jax.grad in the offsets)."""
    zs, acts = plain_pass(p, x, act)
    deltas = jax.grad(lambda eps: plain_cost(p, x, y, act, eps))(offsets_at_zero(p, x, act))
    return zs, acts, jax.grad(plain_cost)(p, x, y, act), deltas


@partial(jax.jit, static_argnames="act")
def ref_batch(p, X, Y, l2=0.0, act="tanh"):
    """A batch: ``J`` and its gradient, the per-sample gradients (as a tree and flat, ``(m, P)`` in
    ``jax.tree.leaves`` order W1 b1 γ β W3 b3), the outputs, and every sample's GGN ``J_iᵀ H_i J_i``
    with ``J_i = ∂z^L/∂θ`` (jacfwd over the flat parameters), ``(m, P, P)``."""
    J, grads = jax.value_and_grad(plain_J)(p, X, Y, act, l2)
    per_sample = jax.vmap(jax.grad(partial(plain_cost, act=act)), in_axes=(None, 0, 0))(p, X, Y)
    flat, unravel = ravel_pytree(p)
    out = lambda theta, x: plain_pass(unravel(theta), x, act)[0][-1]  # noqa: E731
    jacobians = jax.vmap(jax.jacfwd(out), in_axes=(None, 0))(flat, X)  # (m, 3, P)
    z = jax.vmap(out, in_axes=(None, 0))(flat, X)
    H = jax.vmap(softmax_hessian)(z)
    return {
        "J": J, "grads": grads, "per_sample": per_sample,
        "flat": jax.vmap(lambda g: ravel_pytree(g)[0])(per_sample),
        "outputs": jax.vmap(lambda x: plain_pass(p, x, act)[1][-1])(X),
        "ggn": jnp.einsum("mip,mij,mjq->mpq", jacobians, H, jacobians),
        "hessian_by_autodiff": jax.vmap(jax.hessian(lambda z, y: -jnp.sum(y * jax.nn.log_softmax(z))))(z, Y),
        "hessian": H,
    }


@partial(jax.jit, static_argnames="act")
def ref_core(p, X, Y, l2, act):
    """What the hypothesis test compares, alone: ``J``, its gradient, the per-sample gradients and the
    GGN's diagonal ``(1/m) Σ_i diag(J_iᵀ H_i J_i)`` (flat)."""
    J, grads = jax.value_and_grad(plain_J)(p, X, Y, act, l2)
    per_sample = jax.vmap(jax.grad(partial(plain_cost, act=act)), in_axes=(None, 0, 0))(p, X, Y)
    flat, unravel = ravel_pytree(p)
    out = lambda theta, x: plain_pass(unravel(theta), x, act)[0][-1]  # noqa: E731
    jacobians = jax.vmap(jax.jacfwd(out), in_axes=(None, 0))(flat, X)  # (m, 3, P)
    H = jax.vmap(softmax_hessian)(jax.vmap(out, in_axes=(None, 0))(flat, X))
    return J, grads, per_sample, jnp.einsum("mip,mij,mjp->p", jacobians, H, jacobians) / X.shape[0]


@jax.jit
def ref_kron(p, X):
    """The dense layers' KFLR factors: ``A = (1/m) Σ ā āᵀ`` and ``G = (1/m) Σ J_zᵀ H J_z`` with
    ``J_z = ∂z^L/∂z^l`` (jacfwd in the offsets), for layers 1 and 3."""
    def per_sample(x):
        zs, acts = plain_pass(p, x)
        J = jax.jacfwd(lambda eps: plain_pass(p, x, "tanh", eps)[0][-1])(offsets_at_zero(p, x, "tanh"))
        return acts, J, softmax_hessian(zs[-1])

    acts, jacobians, H = jax.vmap(per_sample)(X)
    m = X.shape[0]
    out = {}
    for l in (0, 2):
        a_bar = jnp.concatenate([acts[l], jnp.ones((m, 1))], axis=1)
        out[l] = (a_bar.T @ a_bar / m, jnp.einsum("mip,mij,mjq->pq", jacobians[l], H, jacobians[l]) / m)
    return out


def tree_like(p, flat):
    """A flat NumPy vector in ``jax.tree.leaves`` order, shaped as ``p``."""
    leaves, treedef = jax.tree.flatten(p)
    cuts = np.cumsum([np.size(leaf) for leaf in leaves])[:-1]
    return jax.tree.unflatten(treedef, [part.reshape(np.shape(leaf)) for part, leaf in zip(np.split(flat, cuts), leaves)])


def blocks(p):
    """Indices into the flat parameters: per dense layer ``[W b]`` row by row, for Scale ``γ`` then ``β``."""
    offsets = np.cumsum([0] + [np.size(leaf) for leaf in jax.tree.leaves(p)])

    def dense_block(first_leaf, W):
        n_out, n_in = np.shape(W)
        w_index = offsets[first_leaf] + np.arange(n_out * n_in).reshape(n_out, n_in)
        b_index = offsets[first_leaf + 1] + np.arange(n_out)
        return np.concatenate([w_index, b_index[:, None]], axis=1).ravel()

    return [dense_block(0, p[0].W), np.arange(offsets[2], offsets[4]), dense_block(4, p[2].W)]


def first_order(p, G):
    """From the flat per-sample gradients ``G`` (m, P): what jbp's first-order quantities must be."""
    return {
        "grads": tree_like(p, G.mean(0)),
        "per_example_grad_norms": np.linalg.norm(G, axis=1),
        "per_example_grad_gram": G @ G.T,
        "sum_grad_squared": tree_like(p, (G**2).sum(0)),
        "grad_variance": tree_like(p, (G**2).mean(0) - G.mean(0) ** 2),
        "second_moment": tree_like(p, (G**2).mean(0)),
    }


def assert_variance_close(got, want_variance, second_moment):
    """``E[g²] − E[g]²`` cancels: its error is relative to ``E[g²]``, the larger of the two."""
    for g, w, s in zip(jax.tree.leaves(got), jax.tree.leaves(want_variance), jax.tree.leaves(second_moment)):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_array_less(np.abs(np.asarray(g) - w), RTOL * (np.abs(w) + np.max(s)) + 1e-300)


def assert_identical(a, b):
    """The same tree, shapes, dtypes and bits."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def assert_finite_like(got, like):
    assert jax.tree.structure(got) == jax.tree.structure(like)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(like)):
        assert np.shape(g) == np.shape(w) and np.asarray(g).dtype == np.asarray(w).dtype
        assert np.all(np.isfinite(np.asarray(g)))


def largest_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- the network itself


def test_the_network_is_built_from_the_layers_and_init_draws_each_layers_params():
    assert type(net) is jbp.Network and net.depth == 3  # not an MLP: one layer is not dense
    assert net.in_shapes == ((5,), (8,), (8,)) and net.out_shapes == ((8,), (8,), (3,))
    assert isinstance(params, tuple) and len(params) == 3
    assert isinstance(params[0], jbp.Dense) and isinstance(params[2], jbp.Dense)
    gamma, beta = params[1]
    np.testing.assert_array_equal(gamma, np.ones(8))
    np.testing.assert_array_equal(beta, np.zeros(8))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
    assert net == make_net(8, "tanh") and hash(net) == hash(make_net(8, "tanh")) and net != make_net(8, "relu")


# --- one sample: forward, backward, deltas


@JIT
def test_forward_backward_and_deltas_are_autodiffs(jit):
    _, p, X, Y = problem()

    def passes(p, x, y):
        trace = jbp.forward(net, p, x)
        return trace, jbp.backward(net, p, trace, y, LOSS), jbp.deltas(net, p, trace, y, LOSS)

    for x, y in zip(X[:3], Y[:3]):
        trace, (grads, deltas), alone = numpy(maybe_jit(passes, jit)(p, x, y))
        zs, acts, want_grads, want_deltas = numpy(ref_sample(p, x, y))
        ref.assert_close(trace.zs, zs, RTOL)
        ref.assert_close(trace.activations, acts, RTOL)
        assert jax.tree.structure(grads) == jax.tree.structure(p)  # (Dense, (γ, β), Dense)
        ref.assert_close(grads, want_grads, RTOL)
        ref.assert_close(deltas, want_deltas, RTOL)
        ref.assert_close(alone, want_deltas, RTOL)


# --- the batch


@JIT
@pytest.mark.parametrize("l2", [0.0, 0.7])
def test_loss_and_grads_and_cost_with_the_l2_on_dense_weights_only(jit, l2):
    _, p, X, Y = problem()
    J, grads, cost = numpy(maybe_jit(lambda p, X, Y: (*jbp.loss_and_grads(net, p, X, Y, LOSS, l2),
                                                      jbp.cost(net, p, X, Y, LOSS, l2)), jit)(p, X, Y))
    want, unpenalized = numpy(ref_batch(p, X, Y, l2)), numpy(ref_batch(p, X, Y, 0.0))
    assert J == pytest.approx(float(want["J"]), rel=RTOL)
    assert cost == pytest.approx(float(want["J"]), rel=RTOL)
    ref.assert_close(grads, want["grads"], RTOL)
    # the penalty is λ/(2m) Σ‖W‖² over the dense W: Scale's γ, β are not decayed
    assert J - unpenalized["J"] == pytest.approx(l2 / (2 * M) * decayed_norm(p), rel=1e-9, abs=1e-14)
    ref.assert_close(grads[1], unpenalized["grads"][1], RTOL)
    for l in (0, 2):
        np.testing.assert_allclose(grads[l].W - unpenalized["grads"][l].W, l2 / M * np.asarray(p[l].W),
                                   rtol=1e-9, atol=1e-13)


def test_loss_and_grads_with_a_traced_l2_inside_jit():
    _, p, X, Y = problem()
    J, grads = numpy(jax.jit(lambda p, l2: jbp.loss_and_grads(net, p, X, Y, LOSS, l2))(p, 0.7))
    want = numpy(ref_batch(p, X, Y, 0.7))
    assert J == pytest.approx(float(want["J"]), rel=RTOL)
    ref.assert_close(grads, want["grads"], RTOL)


@JIT
def test_predict_and_evaluate(jit):
    _, p, X, _ = problem()
    want = numpy(ref_batch(p, X, np.eye(3)[np.zeros(M, int)]))["outputs"]
    ref.assert_close(maybe_jit(lambda p, X: jbp.predict(net, p, X), jit)(p, X), want, RTOL)
    # three rows labelled against what the network says, so that the accuracy is 1/2, not 0 or 1 by chance
    labels = np.argmax(want, axis=1)
    labels[:3] = (labels[:3] + 1) % 3
    Y = np.eye(3)[labels]
    result = jbp.evaluate(net, p, X, Y, LOSS)
    assert result["loss"] == pytest.approx(float(ref_batch(p, X, Y)["J"]), rel=RTOL)
    assert result["accuracy"] == pytest.approx(0.5)


@JIT
def test_per_example_first_order_quantities(jit):
    _, p, X, Y = problem()

    def call(p, X, Y):
        return {
            "per_example_grads": jbp.per_example_grads(net, p, X, Y, LOSS),
            "per_example_grad_norms": jbp.per_example_grad_norms(net, p, X, Y, LOSS),
            "sum_grad_squared": jbp.sum_grad_squared(net, p, X, Y, LOSS),
            "grad_variance": jbp.grad_variance(net, p, X, Y, LOSS),
            "per_example_grad_gram": jbp.per_example_grad_gram(net, p, X, Y, LOSS),
        }

    out = numpy(maybe_jit(call, jit)(p, X, Y))
    reference = numpy(ref_batch(p, X, Y))
    want = first_order(p, reference["flat"])
    ref.assert_close(out["per_example_grads"], reference["per_sample"], RTOL)
    for name in ("per_example_grad_norms", "per_example_grad_gram", "sum_grad_squared"):
        ref.assert_close(out[name], want[name], RTOL)
    assert_variance_close(out["grad_variance"], want["grad_variance"], want["second_moment"])
    assert np.max(out["grad_variance"][1][0]) > 1e-6  # Scale's γ: a spread there is to be found


# --- curvature


@JIT
def test_diag_ggn_is_the_exact_ggns_diagonal(jit):
    _, p, X, Y = problem()
    got = maybe_jit(lambda p, X, Y: jbp.diag_ggn(net, p, X, Y, LOSS), jit)(p, X, Y)
    reference = numpy(ref_batch(p, X, Y))
    ref.assert_close(got, tree_like(p, np.diag(reference["ggn"].mean(0))), RTOL)
    ref.assert_close(reference["hessian"], reference["hessian_by_autodiff"], RTOL)  # diag(p) − p pᵀ is the loss's


def test_diag_ggn_mc_is_an_unbiased_estimate():
    _, p, X, Y = problem()
    exact = tree_like(p, np.diag(numpy(ref_batch(p, X, Y))["ggn"].mean(0)))
    draws = [numpy(jbp.diag_ggn_mc(net, p, X, Y, LOSS, jax.random.key(k), samples=4000)) for k in range(16)]
    # 4000 draws per row: close to the exact diagonal, and yet an estimate, not the exact value
    for got, want in zip(jax.tree.leaves(draws[0]), jax.tree.leaves(exact)):
        np.testing.assert_allclose(got, want, rtol=0.15, atol=0.03 * np.max(want))
        assert not np.allclose(got, want, rtol=1e-6, atol=0)
    # no bias: the mean over independent keys lies within 5 standard errors of the exact diagonal
    for estimates, want in zip(zip(*(jax.tree.leaves(d) for d in draws)), jax.tree.leaves(exact)):
        estimates = np.stack(estimates)
        mean, error = estimates.mean(0), estimates.std(0) / np.sqrt(len(estimates))
        assert np.all(np.abs(mean - want) <= 5 * error + 1e-12), np.max(np.abs(mean - want) / (error + 1e-300))
        # and the bound can fail: 1.1 times the estimate lies outside it
        assert not np.all(np.abs(1.1 * mean - want) <= 5 * 1.1 * error + 1e-12)


@JIT
def test_kflr_factors_are_the_ggn_blocks_for_one_sample(jit):
    _, p, X, Y = problem(m=1, seed=4)
    factors = numpy(maybe_jit(lambda p, X, Y: jbp.kfac_factors(net, p, X, Y, LOSS), jit)(p, X, Y))
    ggn = numpy(ref_batch(p, X, Y))["ggn"][0]
    assert all(isinstance(f, jbp.KronFactors) for f in factors)
    for l, (block, f) in enumerate(zip(blocks(p), factors), 1):
        ref.assert_close(np.kron(f.G, f.A), ggn[np.ix_(block, block)], RTOL)
        assert np.max(np.abs(f.G)) > 1e-6, l
    # Scale, with no Kronecker structure: A = [[1]] and G its whole block over (γ, β)
    np.testing.assert_array_equal(factors[1].A, np.ones((1, 1)))
    assert factors[1].G.shape == (16, 16)


@JIT
def test_kflr_factors_over_a_batch(jit):
    _, p, X, Y = problem()
    factors = numpy(maybe_jit(lambda p, X, Y: jbp.kfac_factors(net, p, X, Y, LOSS), jit)(p, X, Y))
    # Scale: kron(G, [[1]]) is the batch's average of its GGN blocks
    scale_block = blocks(p)[1]
    np.testing.assert_array_equal(factors[1].A, np.ones((1, 1)))
    ggn = numpy(ref_batch(p, X, Y))["ggn"].mean(0)
    ref.assert_close(np.kron(factors[1].G, factors[1].A), ggn[np.ix_(scale_block, scale_block)], RTOL)
    # dense layers: A = (1/m) Σ ā āᵀ, G = (1/m) Σ J_zᵀ H J_z
    for l, (A, G) in numpy(ref_kron(p, X)).items():
        ref.assert_close(factors[l].A, A, RTOL)
        ref.assert_close(factors[l].G, G, RTOL)


def test_one_pass_with_every_name():
    """(Under jit, one_pass runs in every jitted test of the quantities above, which call it.)"""
    _, p, X, Y = problem()
    out = numpy(jbp.one_pass(net, p, X, Y, LOSS, jbp.QUANTITIES, key=jax.random.key(5), samples=4000))
    assert set(out) == set(jbp.QUANTITIES) | {"loss"}
    reference = numpy(ref_batch(p, X, Y))
    want = first_order(p, reference["flat"])
    assert out["loss"] == pytest.approx(float(reference["J"]), rel=RTOL)
    for name in ("grads", "sum_grad_squared", "per_example_grad_gram", "per_example_grad_norms"):
        ref.assert_close(out[name], want[name], RTOL)
    assert_variance_close(out["grad_variance"], want["grad_variance"], want["second_moment"])
    ggn = reference["ggn"].mean(0)
    ref.assert_close(out["diag_ggn"], tree_like(p, np.diag(ggn)), RTOL)
    scale_block = blocks(p)[1]
    ref.assert_close(out["kflr"][1].G, ggn[np.ix_(scale_block, scale_block)], RTOL)
    for l, (A, G) in numpy(ref_kron(p, X)).items():
        ref.assert_close(out["kflr"][l].A, A, RTOL)
        ref.assert_close(out["kflr"][l].G, G, RTOL)
    # the sampled ones: near the exact ones (4000 draws per row)
    for got, exact in zip(jax.tree.leaves(out["diag_ggn_mc"]), jax.tree.leaves(out["diag_ggn"])):
        np.testing.assert_allclose(got, exact, rtol=0.15, atol=0.03 * np.max(exact))
    for got, exact in zip(out["kfac"], out["kflr"]):
        np.testing.assert_array_equal(got.A, exact.A)  # A holds no draw
        np.testing.assert_allclose(got.G, exact.G, rtol=0, atol=0.05 * np.max(np.abs(exact.G)))


# --- private training's clipped gradient, and finite differences


@JIT
def test_clipped_grads_are_autodiffs_clipped_per_sample(jit):
    _, p, X, Y = problem()
    reference = numpy(ref_batch(p, X, Y))
    G = reference["flat"]
    norms = np.linalg.norm(G, axis=1)
    max_norm = float(np.median(norms))  # about half the rows clipped
    J, grads = numpy(maybe_jit(lambda p, X, Y: jbp.clipped_grads(net, p, X, Y, LOSS, max_norm), jit)(p, X, Y))
    factors = np.minimum(1.0, max_norm / norms)
    assert 0 < np.sum(factors < 1) < M
    assert J == pytest.approx(float(reference["J"]), rel=RTOL)
    ref.assert_close(grads, tree_like(p, (factors[:, None] * G).mean(0)), RTOL)


def test_check_grads_names_scales_arrays():
    _, p, X, Y = problem()
    check = jbp.check_grads(net, p, X, Y, LOSS, l2=0.7)
    assert check.relative_difference < 1e-8 and check.verdict == "right" and check.wrong == ()
    names = [c.name for c in check.layers]
    assert names == ["layer 1 W", "layer 1 b", "layer 2 [0]", "layer 2 [1]", "layer 3 W", "layer 3 b"], names
    assert all(c.relative_difference < 1e-7 and c.max_abs_difference < 1e-8 for c in check.layers)
    ref.assert_close(numpy(check.analytic), numpy(ref_batch(p, X, Y, 0.7))["grads"], RTOL)
    ref.assert_close(numpy(check.numerical), numpy(check.analytic), 1e-6)


# --- hypothesis: other widths before Scale, other activations on it


@HYPOTHESIS
@given(width=st.integers(1, 6), act=st.sampled_from(["tanh", "sigmoid", "relu"]), seed=st.integers(0, 2**16))
def test_random_scale_networks_match_autodiff(width, act, seed):
    n, p, X, Y = problem(width, act, m=4, seed=seed)
    J_ref, grads_ref, per_sample_ref, diagonal_ref = numpy(ref_core(p, X, Y, 0.3, act))
    J, grads = numpy(jbp.loss_and_grads(n, p, X, Y, LOSS, 0.3))
    assert J == pytest.approx(float(J_ref), rel=RTOL)
    ref.assert_close(grads, grads_ref, RTOL)
    ref.assert_close(numpy(jbp.per_example_grads(n, p, X, Y, LOSS)), per_sample_ref, RTOL)
    ref.assert_close(numpy(jbp.diag_ggn(n, p, X, Y, LOSS)), tree_like(p, diagonal_ref), RTOL)


# --- feedback rules through the Scale layer


def tanh_derivative(z):
    return 1 - np.tanh(z) ** 2


@JIT
@pytest.mark.parametrize("kind", ["fa", "fa, random B for Scale", "sign", "dfa"])
def test_feedback_deltas_through_scale_by_hand(jit, kind):
    _, p, X, Y = problem()
    rule = jbp.feedback.by_name(kind.split(",")[0], net, jax.random.key(7))
    if kind == "fa, random B for Scale":  # by_name draws Scale's B as init draws γ and β: ones, zeros
        rng = np.random.default_rng(8)
        rule = jbp.feedback_alignment((rule.matrices[0], (rng.normal(size=8), rng.normal(size=8)), rule.matrices[2]))
    x, y = X[1], Y[1]
    got = numpy(maybe_jit(lambda p, x, y, rule: jbp.deltas(net, p, jbp.forward(net, p, x), y, LOSS, feedback=rule),
                          jit)(p, x, y, rule))
    # by hand: BP1 fused, δ³ = softmax(z³) − y; then BP2 with the rule's carriers
    zs, acts, _, backprop_deltas = numpy(ref_sample(p, x, y))
    d3 = acts[-1] - y
    B = numpy(rule.matrices)
    if kind == "dfa":  # δ^l = (B^l δ³) ⊙ σ'(z^l): the output error straight to every layer below
        want = (B[0] @ d3 * tanh_derivative(zs[0]), B[1] @ d3 * tanh_derivative(zs[1]), d3)
    else:
        if kind == "sign":  # sign(W³)ᵀ δ³, and Scale carries with sign(γ)
            through_3, through_scale = np.sign(np.asarray(p[2].W)), np.sign(np.asarray(p[1][0]))
            assert np.any(through_scale < 0)  # so that sign(γ) is no γ
        else:  # (B³)ᵀ δ³, and Scale carries with B's γ: B[0] ⊙ δ
            through_3, through_scale = B[2], B[1][0]
        d2 = (through_3.T @ d3) * tanh_derivative(zs[1])
        want = ((through_scale * d2) * tanh_derivative(zs[0]), d2, d3)
    ref.assert_close(got, want, RTOL)
    assert np.max(np.abs(got[0] - backprop_deltas[0])) > 1e-6  # not backprop's


# --- training


def separable(n, seed=0):
    """Inputs ``(n, 5)`` and one-hot labels of a linear rule: separable."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    labels = np.argmax(X @ rng.normal(size=(5, 3)), axis=1)
    return X, np.eye(3)[labels]


# one optimizer, data set and batch size for every fit, so that they share compiled epochs
FIT = dict(loss=LOSS, optimizer=optax.adam(0.05), epochs=4, batch_size=20, key=jax.random.key(2))
DATA = separable(200)
START = perturbed(params, 1)


def test_fit_lowers_the_loss():
    X, Y = DATA
    result = jbp.fit(net, START, X, Y, **FIT)
    losses = [r["loss"] for r in result.history]
    start = float(ref_batch(START, X, Y)["J"])
    assert losses[-1] < losses[0] < start and losses[-1] < 0.5 * start, (start, losses)
    assert result.history[-1]["accuracy"] > 0.85
    assert_finite_like(result.params, START)
    assert losses[-1] == pytest.approx(float(ref_batch(result.params, X, Y)["J"]), rel=1e-9)


def test_private_fit_runs():
    X, Y = DATA
    # δ = 1e-3 must lie below 1/n; batches of 190 expected out of 200 are padded to one size (n), so
    # the epoch compiles one branch, not six
    private = jbp.dp_sgd(1.0, 0.5, key=jax.random.key(1), delta=1e-3)
    result = jbp.fit(net, START, X, Y, loss=LOSS, optimizer=FIT["optimizer"], epochs=2, batch_size=190, privacy=private)
    assert_finite_like(result.params, START)
    assert largest_difference(result.params, START) > 1e-3
    epsilons = [r["epsilon"] for r in result.history]
    assert len(epsilons) == 2 and 0 < epsilons[0] < epsilons[1] < np.inf
    assert "loss" not in result.history[-1]  # a private run publishes no training statistics by default


@pytest.mark.parametrize("name", jbp.feedback.KINDS)
def test_fit_with_every_feedback_rule(name):
    X, Y = DATA
    rule = jbp.feedback.by_name(name, net, jax.random.key(3))
    kw = dict(FIT, epochs=2)
    result = jbp.fit(net, START, X, Y, feedback=rule, **kw)
    assert_finite_like(result.params, START)
    plain = jbp.fit(net, START, X, Y, **kw)
    if name == "backprop":
        assert_identical(result.params, plain.params)
        assert_identical(result.opt_state, plain.opt_state)
    else:
        assert all(np.isfinite(r["loss"]) for r in result.history)
        assert largest_difference(result.params, plain.params) > 1e-6
        assert "update_angles" in result.history[-1]
    if name == "kp":  # its matrices learn, Scale's included
        assert_finite_like(result.feedback.matrices, rule.matrices)
        assert largest_difference(result.feedback.matrices[1], rule.matrices[1]) > 1e-6


MESH_FIT = dict(FIT, epochs=2)


def fit_on_a_mesh(devices, expected):
    """fit on a mesh of ``devices`` devices, checked against ``expected``, the parameters fit gives on
    one device (to 1e-12 in float64: a mesh changes only the order of the gradient's partial sums)."""
    assert len(jax.devices()) >= devices, jax.devices()
    mesh = jbp.parallel.make_mesh(devices)
    assert mesh.devices.size == devices
    X, Y = DATA
    many = jbp.fit(net, START, X, Y, mesh=mesh, **MESH_FIT)
    assert jax.tree.structure(many.params) == jax.tree.structure(START)
    for a, b in zip(jax.tree.leaves(many.params), expected):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, float(np.max(np.abs(b)))))
    assert set(many.params[1][0].sharding.device_set) == set(mesh.devices.flat)  # Scale's γ, replicated


def test_fit_on_two_simulated_devices_is_fit_on_one(tmp_path):
    """XLA's simulated devices are fixed when jax starts: the mesh runs in a fresh interpreter, and
    compares with the parameters trained here on one device."""
    X, Y = DATA
    one = jbp.fit(net, START, X, Y, **MESH_FIT)
    assert largest_difference(one.params, START) > 1e-3  # it trained
    np.savez(tmp_path / "one.npz", *map(np.asarray, jax.tree.leaves(one.params)))
    script = textwrap.dedent(f"""
        import sys
        import jax
        import numpy as np
        jax.config.update("jax_enable_x64", True)
        sys.path.insert(0, {str(HERE)!r})
        import test_layer_protocol
        with np.load({str(tmp_path / "one.npz")!r}) as one:
            expected = [one[f"arr_{{i}}"] for i in range(len(one.files))]
        test_layer_protocol.fit_on_a_mesh(2, expected)
        print("two devices: the same parameters")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "two devices: the same parameters" in done.stdout


# --- checkpoints


def test_checkpoint_round_trip_and_another_architecture_refused(tmp_path):
    X, Y = DATA
    optimizer = FIT["optimizer"]
    trained = jbp.fit(net, START, X, Y, **dict(FIT, epochs=1))
    path = tmp_path / "scale.ckpt"
    jbp.checkpoint.save(path, params=trained.params, opt_state=trained.opt_state, epoch=1, key=jax.random.key(9),
                        config={"layers": repr(net)}, history=trained.history)
    back = jbp.checkpoint.load(path, params_like=params, opt_state_like=optimizer.init(params))
    assert_identical(back.params, trained.params)
    assert_identical(back.opt_state, trained.opt_state)
    assert back.epoch == 1 and back.config == {"layers": repr(net)} and back.history == trained.history
    assert isinstance(back.params[0], jbp.Dense) and isinstance(back.params[1], tuple)
    # a dense network's template is refused, and so is a Scale over another width
    dense_only = tuple(jbp.Dense(np.zeros((n_out, n_in)), np.zeros(n_out)) for n_in, n_out in ((5, 8), (8, 3)))
    narrower = random_params(6, 0)
    for like in (dense_only, narrower):
        with pytest.raises(jbp.checkpoint.CheckpointError, match="another architecture"):
            jbp.checkpoint.load(path, params_like=like, opt_state_like=optimizer.init(like))


def test_the_worked_example_refuses_a_network_with_other_layers():
    with pytest.raises(TypeError, match="written for dense networks"):
        jbp.explain(net, params, jnp.ones(5), jnp.array([1.0, 0.0, 0.0]), "softmax_cross_entropy")


def test_a_layer_without_its_activation_is_refused_at_the_network():
    class Forgetful(Scale):
        def __init__(self, width):  # forgets super().__init__
            self.width = width

    with pytest.raises(TypeError, match=r"layer 2 \(Forgetful\) has no activation"):
        jbp.network(jbp.dense(4), Forgetful(4), input_shape=(3,))
