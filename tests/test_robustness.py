"""Nothing silently wrong: bad values refused at the call, extreme values kept
finite, divergence caught with the last finite parameters kept, and random
inputs thrown at the public functions."""

import re
from datetime import timedelta

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jbp

NET = jbp.mlp([3, 4, 2], hidden=jbp.tanh, output=jbp.softmax)
PARAMS = jbp.init(NET, jax.random.key(0))
X = np.ones((5, 3))
Y = np.tile([1.0, 0.0], (5, 1))


# --- values refused at the call, before anything is compiled


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinity_in_inputs_names_rows(bad):
    X_bad = X.copy()
    X_bad[2, 1] = bad
    X_bad[4, 0] = bad
    with pytest.raises(ValueError, match=re.escape("X holds NaN or infinity in 2 row(s); the first is row 2")):
        jbp.loss_and_grads(NET, PARAMS, X_bad, Y, "softmax_cross_entropy")


def test_nan_in_targets_and_in_one_sample():
    Y_bad = Y.copy()
    Y_bad[3, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape("Y holds NaN or infinity in 1 row(s); the first is row 3")):
        jbp.cost(NET, PARAMS, X, Y_bad, "softmax_cross_entropy")
    with pytest.raises(ValueError, match="x holds NaN or infinity"):
        jbp.forward(NET, PARAMS, np.array([0.0, np.nan, 1.0]))


def test_nan_in_parameters():
    bad = (PARAMS[0]._replace(W=PARAMS[0].W.at[1, 1].set(jnp.nan)), PARAMS[1])
    with pytest.raises(ValueError, match="layer 1: W holds NaN or infinity"):
        jbp.predict(NET, bad, X)


def test_binary_cross_entropy_targets_outside_0_1():
    net = jbp.mlp([3, 2], hidden=(), output="sigmoid")
    params = jbp.init(net, jax.random.key(0))
    with pytest.raises(ValueError, match=re.escape("binary_cross_entropy needs targets in [0, 1]; 1 row(s) are not, the first is row 1")):
        jbp.loss_and_grads(net, params, X[:2], np.array([[0.0, 1.0], [1.5, 0.0]]), "binary_cross_entropy")


def test_softmax_cross_entropy_rows_that_do_not_sum_to_1():
    with pytest.raises(ValueError, match="needs each target row to be ≥ 0 and sum to 1.*2 row\\(s\\) are not, the first is row 0, which sums to 2"):
        jbp.loss_and_grads(NET, PARAMS, X[:3], np.array([[1.0, 1.0], [0.3, 0.7], [-0.5, 1.5]]), "softmax_cross_entropy")


def test_integer_labels_become_one_hot_and_out_of_range_labels_are_refused():
    labels = np.array([0, 1, 1, 0, 1])
    J_labels, _ = jbp.loss_and_grads(NET, PARAMS, X, labels, "softmax_cross_entropy")
    J_onehot, _ = jbp.loss_and_grads(NET, PARAMS, X, np.eye(2)[labels], "softmax_cross_entropy")
    assert float(J_labels) == float(J_onehot)
    with pytest.raises(ValueError, match=re.escape("class labels must lie in [0, 2) for 2 output(s); 2 do not, the first is 2 at row 1")):
        jbp.loss_and_grads(NET, PARAMS, X, np.array([0, 2, 1, -1, 0]), "softmax_cross_entropy")


def test_integer_and_boolean_inputs_are_converted():
    J_bool, _ = jbp.loss_and_grads(NET, PARAMS, X.astype(bool), Y.astype(bool), "softmax_cross_entropy")
    J_float, _ = jbp.loss_and_grads(NET, PARAMS, X, Y, "softmax_cross_entropy")
    assert float(J_bool) == float(J_float) and J_bool.dtype == PARAMS[0].W.dtype


@pytest.mark.parametrize("value", [np.array([["a", "b", "c"]] * 5), X.astype(complex), np.array([[None] * 3] * 5)])
def test_non_numbers_are_a_type_error(value):
    with pytest.raises(TypeError, match="X must"):
        jbp.loss_and_grads(NET, PARAMS, value, Y, "softmax_cross_entropy")


@pytest.mark.parametrize("key", [0, None, "seed", np.zeros(3, np.uint32)])
def test_a_key_that_is_not_a_key(key):
    with pytest.raises(TypeError, match="key must be one jax.random.key"):
        jbp.init(NET, key)
    with pytest.raises(TypeError, match="key must be one jax.random.key"):
        jbp.fit(NET, PARAMS, X, Y, loss="softmax_cross_entropy", optimizer=optax.sgd(0.1), epochs=1,
                batch_size=5, key=key)


def test_negative_l2():
    with pytest.raises(ValueError, match="l2 must be a finite number ≥ 0, got -0.5"):
        jbp.loss_and_grads(NET, PARAMS, X, Y, "softmax_cross_entropy", l2=-0.5)


@pytest.mark.parametrize("output", ["identity", "relu", "tanh", "elu", "leaky_relu", "softplus"])
def test_cross_entropy_on_an_output_it_cannot_take_the_log_of(output):
    net = jbp.mlp([3, 2], hidden=(), output=output)
    params = jbp.init(net, jax.random.key(0))
    with pytest.raises(ValueError, match=f"binary_cross_entropy takes logarithms of the outputs, which {output}"):
        jbp.loss_and_grads(net, params, X, np.zeros((5, 2)), "binary_cross_entropy")


def test_overflow_is_a_floating_point_error_not_a_silent_inf():
    net = jbp.mlp([3, 2], hidden=(), output="identity")
    params = (jbp.Dense(W=jnp.full((2, 3), 1e30, jnp.float32), b=jnp.zeros(2, jnp.float32)),)
    with pytest.raises(FloatingPointError, match="loss_and_grads overflowed"):
        jbp.loss_and_grads(net, params, X * 1e10, np.zeros((5, 2)), "squared_error")


def test_checks_are_shape_only_inside_jit():
    """Under jit the value checks are skipped (tracers), so they cost nothing in the step."""
    step = jax.jit(lambda X, Y: jbp.loss_and_grads(NET, PARAMS, X, Y, "softmax_cross_entropy")[0])
    X_bad = X.copy()
    X_bad[0, 0] = np.nan
    assert np.isnan(step(X_bad, Y))  # no host round trip was made to look at values
    with pytest.raises(ValueError, match="X must have shape"):
        step(np.ones((5, 4)), Y)


# --- extreme pre-activations stay finite


def _stable_reference(name, z, y, x):
    """float64 numpy, stable forms: cost and (dW, db) of a one-layer canonical pair."""
    z, y, x = (np.asarray(v, np.float64) for v in (z, y, x))
    if name == "squared_error":
        a, C = z, 0.5 * np.sum((z - y) ** 2, axis=1)
    elif name == "binary_cross_entropy":
        a = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))), np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
        C = np.sum(np.logaddexp(0, z) - y * z, axis=1)
    else:
        shifted = z - z.max(axis=1, keepdims=True)
        a = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        C = -np.sum(y * (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))), axis=1)
    delta = a - y
    m = len(z)
    return C.mean(), delta.T @ x / m, delta.mean(axis=0)


@pytest.mark.parametrize("loss", ["squared_error", "binary_cross_entropy", "softmax_cross_entropy"])
@pytest.mark.parametrize("scale", [1.0, 1e2, 1e3, 1e4])
def test_canonical_pairs_at_extreme_preactivations_in_float32(loss, scale):
    output = jbp.get_loss(loss).canonical
    net = jbp.mlp([2, 4], hidden=(), output=output)
    b = np.array([1.0, -1.0, 0.5, -0.25], np.float32) * scale  # z from -1e4 to 1e4
    params = (jbp.Dense(W=jnp.asarray(np.array([[0.5, -0.5], [1, 1], [0, 2], [-1, 0]], np.float32)), b=jnp.asarray(b)),)
    x = np.array([[0.3, -0.7], [1.0, 2.0], [-1.5, 0.25]], np.float32)
    y = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float32)
    J, grads = jbp.loss_and_grads(net, params, x, y, loss)
    assert J.dtype == jnp.float32
    z = x.astype(np.float64) @ np.asarray(params[0].W, np.float64).T + b.astype(np.float64)
    J_ref, dW_ref, db_ref = _stable_reference(loss, z, y, x)
    np.testing.assert_allclose(float(J), J_ref, rtol=1e-5)
    np.testing.assert_allclose(grads[0].W, dW_ref, rtol=1e-5, atol=1e-5 * np.abs(dW_ref).max())
    np.testing.assert_allclose(grads[0].b, db_ref, rtol=1e-5, atol=1e-5 * np.abs(db_ref).max())


@pytest.mark.parametrize("hidden", list(jbp.ACTIVATIONS))
def test_every_activation_saturated_in_float32_stays_finite(hidden):
    net = jbp.mlp([2, 3, 2], hidden=hidden, output="softmax")
    params = (jbp.Dense(W=jnp.zeros((3, 2), jnp.float32), b=jnp.array([1e4, -1e4, 30.0], jnp.float32)),
              jbp.Dense(W=jnp.full((2, 3), 1e-3, jnp.float32), b=jnp.zeros(2, jnp.float32)))
    J, grads = jbp.loss_and_grads(net, params, np.ones((2, 2), np.float32), np.eye(2, dtype=np.float32), "softmax_cross_entropy")
    assert np.isfinite(float(J)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    act = jbp.get_activation(hidden)
    z = jnp.array([-1e4, -88.0, 0.0, 88.0, 1e4], jnp.float32)
    a = act.fn(z)
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(act.backward(z, a, jnp.ones(5, jnp.float32))))


# --- divergence


def _problem():
    rng = np.random.default_rng(0)
    return rng.normal(size=(23, 3)), np.eye(2)[rng.integers(0, 2, 23)]


@pytest.mark.parametrize("explode_at, epoch, step", [(40, 9, 1), (42, 9, 3)])
def test_divergence_stops_with_the_last_finite_parameters(explode_at, epoch, step):
    """From update number `explode_at` on the learning rate is infinite: the
    run stops there, naming the epoch and step, and hands back the parameters
    from just before it."""
    Xs, Ys = _problem()
    schedule = lambda count: jnp.where(count < explode_at, 0.05, jnp.inf)  # noqa: E731
    options = dict(loss="softmax_cross_entropy", batch_size=5, key=jax.random.key(1))
    with pytest.raises(jbp.TrainingDiverged, match=f"epoch {epoch}, step {step}") as err:
        jbp.fit(NET, PARAMS, Xs, Ys, optimizer=optax.sgd(schedule), epochs=20, **options)
    assert (err.value.epoch, err.value.step) == (epoch, step)
    assert len(err.value.history) == epoch - 1
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(err.value.params))
    finished = jbp.fit(NET, PARAMS, Xs, Ys, optimizer=optax.sgd(0.05), epochs=epoch - 1, **options).params
    same = all(np.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(jax.tree.leaves(err.value.params), jax.tree.leaves(finished)))
    assert same == (step == 1)  # at step 1 nothing of the epoch was applied; at step 3, two steps were


def test_a_huge_learning_rate_diverges_cleanly():
    Xs, Ys = _problem()
    net = jbp.mlp([3, 16, 2], hidden="relu", output="identity")
    with pytest.raises(jbp.TrainingDiverged) as err:
        jbp.fit(net, jbp.init(net, jax.random.key(0), dtype=jnp.float32), Xs, Ys, loss="squared_error",
                optimizer=optax.sgd(1e6), epochs=50, batch_size=5, key=jax.random.key(0))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(err.value.params))


# --- fuzzing

FUNCTIONS = ("loss_and_grads", "cost", "per_example_grads", "per_example_grad_norms", "predict", "forward", "backward", "evaluate")
DOCUMENTED = (ValueError, TypeError, FloatingPointError)


def _valid_targets(draw, loss, m, n):
    """Targets the loss can take, drawn as data a user would have."""
    if loss == "binary_cross_entropy":
        return np.asarray(draw(st.lists(st.floats(0, 1), min_size=m * n, max_size=m * n))).reshape(m, n)
    if loss == "softmax_cross_entropy":
        return np.eye(n)[draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m))].reshape(m, n)
    return np.asarray(draw(st.lists(st.floats(-1e3, 1e3), min_size=m * n, max_size=m * n))).reshape(m, n)


@st.composite
def calls(draw):
    """Mostly well-formed calls (so that the computation runs), with wrong
    shapes, dtypes, empty batches, NaN, infinity and huge values mixed in."""
    depth = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    names = list(jbp.ACTIVATIONS)
    net = jbp.mlp(sizes, hidden=draw(st.lists(st.sampled_from(names), min_size=depth - 1, max_size=depth - 1)),
                  output=draw(st.sampled_from(names)))
    loss = draw(st.sampled_from(list(jbp.LOSSES)))
    dtype = draw(st.sampled_from([np.float32] * 4 + [np.float64] * 4 + [np.int32, np.bool_, np.complex64, np.uint8]))
    m = draw(st.sampled_from([1, 2, 3, 5, 5, 5, 0]))
    x_shape = draw(st.sampled_from([(m, sizes[0])] * 6 + [(m, sizes[0] + 1), (sizes[0],), (m,), ()]))
    plain = st.floats(-1e4, 1e4)
    special = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0])
    values = draw(st.sampled_from([plain, plain, plain, st.one_of(plain, special)]))
    X_ = np.asarray(draw(st.lists(values, min_size=int(np.prod(x_shape)), max_size=int(np.prod(x_shape))))).reshape(x_shape)
    kind = draw(st.sampled_from(["valid"] * 3 + ["labels", "random", "wrong shape"]))
    if kind == "valid":
        Y_ = _valid_targets(draw, loss, m, sizes[-1])
    elif kind == "labels":
        Y_ = np.asarray(draw(st.lists(st.integers(-1, sizes[-1] + 1), min_size=m, max_size=m)), np.int64)
    else:
        y_shape = (m, sizes[-1]) if kind == "random" else draw(st.sampled_from([(m + 1, sizes[-1]), (m, sizes[-1] + 1)]))
        Y_ = np.asarray(draw(st.lists(values, min_size=int(np.prod(y_shape)), max_size=int(np.prod(y_shape))))).reshape(y_shape)
    with np.errstate(invalid="ignore", over="ignore"):
        X_ = X_.astype(dtype)
        Y_ = Y_ if kind == "labels" else Y_.astype(dtype)
    return net, loss, X_, Y_, draw(st.sampled_from(FUNCTIONS)), draw(st.sampled_from([0.0, 0.5, 0.5, -1.0])), draw(st.integers(0, 99))


def _call(name, net, params, X_, Y_, loss, l2):
    if name in ("loss_and_grads", "cost"):
        return getattr(jbp, name)(net, params, X_, Y_, loss, l2=l2)
    if name == "predict":
        return jbp.predict(net, params, X_)
    x, y = (v[0] if np.ndim(v) >= 1 and len(v) else v for v in (X_, Y_))  # one sample, as the per-sample passes take
    if name == "forward":
        return jbp.forward(net, params, x)
    if name == "backward":
        return jbp.backward(net, params, jbp.forward(net, params, x), y, loss)
    if name == "evaluate":
        return jbp.evaluate(net, params, X_, Y_, loss)
    return getattr(jbp, name)(net, params, X_, Y_, loss)


@settings(max_examples=100, deadline=timedelta(seconds=60), derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(calls())
def test_fuzz_public_functions_return_finite_results_or_documented_errors(call):
    net, loss, X_, Y_, name, l2, seed = call
    params = jbp.init(net, jax.random.key(seed))
    try:
        result = _call(name, net, params, X_, Y_, loss, l2)
    except DOCUMENTED as err:
        assert str(err), "an error without a message"
        return
    values = result.values() if isinstance(result, dict) else jax.tree.leaves(result)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in values), (name, result)
    if name in ("loss_and_grads", "per_example_grads"):
        grads = result[1] if name == "loss_and_grads" else result
        lead = () if name == "loss_and_grads" else (len(X_),)
        assert [g.W.shape for g in grads] == [lead + p.W.shape for p in params]
    if name == "predict":
        assert np.asarray(result).shape == (len(X_), net.sizes[-1])
    if name == "per_example_grad_norms":
        assert np.asarray(result).shape == (len(X_),)
