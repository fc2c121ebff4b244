"""Numbers a run keeps: loss domains, a stable softmax with binary
cross-entropy, every number checked finite (metrics, optimizer state), user
activations with the wrong shapes, and every optimizer the command offers
checkpointed and resumed bit for bit."""

import json
from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbp
from jbp.cli import main, make_optimizer, optimizers


# --- which outputs a loss takes


def test_softplus_outputs_with_softmax_cross_entropy_are_refused():
    net = jbp.mlp([3, 2], hidden=(), output="softplus")
    params = jbp.init(net, jax.random.key(0))
    with pytest.raises(ValueError, match="softmax_cross_entropy takes logarithms of the outputs, which softplus"):
        jbp.loss_and_grads(net, params, np.ones((2, 3)), np.eye(2), "softmax_cross_entropy")
    # why it is refused: outputs above 1 make the cost negative, with no minimum
    a = jax.nn.softplus(jnp.array([3.0, 3.0]))
    assert float(jbp.softmax_cross_entropy.fn(a, jnp.array([1.0, 0.0]))) < 0


def test_sigmoid_outputs_with_softmax_cross_entropy_are_allowed_and_non_negative():
    net = jbp.mlp([3, 4], hidden=(), output="sigmoid")
    params = jbp.init(net, jax.random.key(1))
    X = jax.random.normal(jax.random.key(2), (50, 3)) * 5
    Y = jax.nn.one_hot(jnp.arange(50) % 4, 4)
    J, _ = jbp.loss_and_grads(net, params, X, Y, "softmax_cross_entropy")
    assert float(J) > 0  # every output in (0, 1): each -log a > 0


# --- softmax outputs with binary cross-entropy, stable from z


def _decimal_reference(z, y):
    """C and ∂C/∂z of binary cross-entropy on softmax(z), written naively in decimals with
    enough digits (60 beyond the e^-gap that 1 - a_k becomes)."""
    with localcontext() as ctx:
        ctx.prec = 60 + int(np.ptp(z) / 2.3)
        z = [Decimal(float(v)) for v in z]
        y = [Decimal(float(v)) for v in y]
        top = max(z)
        e = [(v - top).exp() for v in z]
        s = sum(e)
        p = [v / s for v in e]
        C = -sum(yk * pk.ln() + (1 - yk) * (1 - pk).ln() for yk, pk in zip(y, p))
        g = [-yk / pk + (1 - yk) / (1 - pk) for yk, pk in zip(y, p)]
        gp = sum(gk * pk for gk, pk in zip(g, p))
        delta = [pj * (gj - gp) for pj, gj in zip(p, g)]
        return float(C), np.array([float(d) for d in delta])


@pytest.mark.parametrize("gap", [0.0, 1.0, 10.0, 30.0, 37.0, 60.0, 100.0, 700.0])
def test_softmax_binary_cross_entropy_is_computed_stably(gap):
    """Within 1e-6 of a many-digit reference, relative to max(|C|, 1), at every logit gap; the
    naive float64 formula loses digits by a gap of 30 and overflows beyond about 37."""
    z = np.array([gap, 0.0, -1.5, gap / 2])
    for y in (np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0, 0.0]), np.array([0.3, 0.2, 0.9, 0.0])):
        C_ref, delta_ref = _decimal_reference(z, y)
        C = float(jbp.output_cost(jbp.softmax, jbp.binary_cross_entropy, jnp.asarray(z), None, jnp.asarray(y)))
        delta = np.asarray(jbp.output_delta(jbp.softmax, jbp.binary_cross_entropy, jnp.asarray(z),
                                            jax.nn.softmax(jnp.asarray(z)), jnp.asarray(y)))
        assert abs(C - C_ref) <= 1e-6 * max(abs(C_ref), 1), (gap, y, C, C_ref)
        np.testing.assert_allclose(delta, delta_ref, rtol=1e-9, atol=1e-12)


def test_softmax_binary_cross_entropy_at_a_gap_of_ten_thousand_is_finite():
    z, y = jnp.array([1e4, 0.0, -1.5, 5e3]), jnp.array([1.0, 0.0, 0.0, 0.0])
    C = jbp.output_cost(jbp.softmax, jbp.binary_cross_entropy, z, None, y)
    delta = jbp.output_delta(jbp.softmax, jbp.binary_cross_entropy, z, jax.nn.softmax(z), y)
    assert float(C) == 0.0 and np.all(np.isfinite(delta)) and np.allclose(delta, 0.0)


def test_softmax_binary_cross_entropy_in_float32_stays_finite_and_close():
    net = jbp.mlp([2, 3], hidden=(), output="softmax")
    params = (jbp.Dense(W=jnp.array([[20, 0], [0, 20], [-20, 0]], jnp.float32), b=jnp.zeros(3, jnp.float32)),)
    X = np.array([[40.0, -40.0], [-3.0, 5.0], [0.01, 0.02]], np.float32)
    Y = np.array([[0, 1, 0], [1, 0, 1], [0.5, 0.5, 0]], np.float32)
    J, grads = jbp.loss_and_grads(net, params, X, Y, "binary_cross_entropy")
    assert np.isfinite(float(J)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    z = np.asarray(X, np.float64) @ np.asarray(params[0].W, np.float64).T
    C_ref = np.mean([_decimal_reference(zi, yi)[0] for zi, yi in zip(z, Y)])
    assert abs(float(J) - C_ref) <= 1e-5 * max(abs(C_ref), 1)


# --- every number a run keeps is finite


def test_an_infinite_validation_loss_stops_the_run_naming_it():
    net = jbp.mlp([2, 2], hidden=(), output="identity")
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    X = np.ones((8, 2), np.float32)
    with pytest.raises(jbp.TrainingDiverged, match="after epoch 1 the val_loss overflowed to inf"):
        jbp.fit(net, params, X, np.zeros((8, 2), np.float32), loss="squared_error", optimizer=optax.sgd(0.01),
                epochs=2, batch_size=4, key=jax.random.key(0),
                validation=(np.full((2, 2), 3e19, np.float32), np.zeros((2, 2), np.float32)))


def test_adam_second_moment_overflow_is_caught():
    """Gradients of about 1e23 square to infinity in Adam's float32 ν while the loss and the
    parameters stay finite (the update is m/√ν = 0): training would stall unnoticed."""
    net = jbp.mlp([1, 1], hidden=(), output="identity")
    params = (jbp.Dense(W=jnp.array([[1e-23]], jnp.float32), b=jnp.zeros(1, jnp.float32)),)
    X, Y = np.full((4, 1), 1e23, np.float32), np.zeros((4, 1), np.float32)
    J, grads = jbp.loss_and_grads(net, params, X, Y, "squared_error")
    opt = optax.adam(1e-3)
    _, state = opt.update(grads, opt.init(params), params)
    assert np.isfinite(float(J)) and np.isinf(np.asarray(state[0].nu[0].W)).any()  # the situation is real
    with pytest.raises(jbp.TrainingDiverged, match="optimizer's state overflowed") as caught:
        jbp.fit(net, params, X, Y, loss="squared_error", optimizer=opt, epochs=1, batch_size=4, key=jax.random.key(0))
    assert caught.value.step == 1 and np.array_equal(caught.value.params[0].W, params[0].W)


# --- an activation of one's own, shapes checked once


def test_an_activation_whose_derivative_has_the_wrong_shape_is_refused_at_mlp():
    calls = []

    def derivative(z, a):
        calls.append(z.shape)
        return jnp.ones((z.shape[0], z.shape[0]))  # a matrix: g * σ' would broadcast to (n, n)

    bad = jbp.elementwise("outer", jnp.tanh, derivative)
    with pytest.raises(ValueError, match=r"layer 1: activation 'outer': backward\(z, a, g\) returns \(5, 5\) float(32|64) "
                                         r"for z of shape \(5,\); expected shape \(5,\)"):
        jbp.mlp([3, 5, 2], hidden=bad, output="softmax")
    wrong_fn = jbp.elementwise("sum", lambda z: jnp.sum(z), lambda z, a: jnp.ones_like(z))
    with pytest.raises(ValueError, match=r"layer 2: activation 'sum': fn\(z\) returns \(\) float(32|64)"):
        jbp.mlp([3, 5, 2], hidden="tanh", output=wrong_fn)
    failing = jbp.elementwise("fails", lambda z: z @ jnp.ones((3, 3)), lambda z, a: z)
    with pytest.raises(ValueError, match=r"activation 'fails': it fails on a vector of shape \(4,\)"):
        jbp.mlp([2, 4, 1], hidden=failing)
    fine = jbp.elementwise("fine", jnp.tanh, lambda z, a: (calls.append(z.shape), 1 - a**2)[1])
    calls.clear()
    for _ in range(3):
        jbp.mlp([3, 7, 2], hidden=fine)
    assert calls == [(7,)], "looked at once per width, not once per use"


# --- every optimizer the command offers: checkpoint, resume, the same bits


def _train(net, opt, params, state, epochs, start, X, Y, key):
    return jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=opt, epochs=epochs, batch_size=8,
                   key=key, opt_state=state, start_epoch=start)


@pytest.mark.parametrize("name", optimizers())
def test_every_optimizer_checkpoints_and_resumes_bit_for_bit(tmp_path, name):
    net = jbp.mlp([4, 5, 3], hidden="tanh", output="softmax")
    X = jax.random.normal(jax.random.key(1), (24, 4), jnp.float32)
    Y = jax.nn.one_hot(jnp.arange(24) % 3, 3, dtype=jnp.float32)
    key = jax.random.key(2)
    opt = make_optimizer(name, 1e-3, key=jax.random.key(3))
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    straight = _train(net, opt, params, None, 4, 0, X, Y, key)
    half = _train(net, opt, params, None, 2, 0, X, Y, key)
    path = tmp_path / "c.ckpt"
    jbp.checkpoint.save(path, params=half.params, opt_state=half.opt_state, epoch=2, key=key, config={},
                        history=half.history)
    template = make_optimizer(name, 1e-3, key=jax.random.key(99)).init(params)
    loaded = jbp.checkpoint.load(path, params_like=params, opt_state_like=template)
    resumed = _train(net, opt, loaded.params, loaded.opt_state, 4, 2, X, Y, loaded.key)
    for a, b in zip(jax.tree.leaves((straight.params, straight.opt_state)), jax.tree.leaves((resumed.params, resumed.opt_state))):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.array_equal(np.asarray(a), np.asarray(b)), name


def test_noisy_sgd_runs_checkpoints_and_resumes_from_the_command(tmp_path):
    common = ["--optimizer", "noisy_sgd", "--lr", "0.05", "--no-progress"]
    assert main(["train", *common, "--epochs", "4", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "4", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "params.npz") as a, np.load(tmp_path / "split" / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
