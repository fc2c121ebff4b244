"""Private training: clipped gradients from the deltas against clip-then-average of
vmap(grad), the noise's scale, Poisson sampling, the accountant against dp-accounting
and Opacus, and DP-SGD through fit and the command."""

import json
import math

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jbp
import reference as ref
from jbp.cli import main
from test_compilation import _outer_product_shapes

PAIRS = [("softmax", "softmax_cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "squared_error"),
         ("tanh", "squared_error"), ("softmax", "binary_cross_entropy")]


def as_dense(params):
    return tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params)


def clip_then_average(params, X, Y, names, loss, max_norm):
    """The definition, with autodiff: per-sample gradients (vmap of grad), each clipped, averaged."""
    grads = ref.per_example_grads(params, X, Y, names, loss)
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(len(X), -1) ** 2, axis=1) for g in jax.tree.leaves(grads)))
    factors = jnp.minimum(1.0, max_norm / norms)
    clipped = jax.tree.map(lambda g: jnp.mean(g * factors.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0), grads)
    return tuple(jbp.Dense(W, b) for W, b in clipped), norms


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3), st.sampled_from(PAIRS), st.integers(2, 9), st.integers(0, 2**31))
def test_clipped_grads_equal_clip_then_average_of_vmap_grad(depth, pair, m, seed):
    output, loss = pair
    rng = np.random.default_rng(seed)
    sizes = tuple(int(w) for w in rng.integers(2, 7, depth + 1))
    names = tuple(rng.choice(["tanh", "sigmoid", "relu", "elu"], depth - 1)) + (output,)
    params, X, Y = ref.random_problem(seed, sizes, loss, m)
    _, norms = clip_then_average(params, X, Y, names, loss, 1.0)
    max_norm = float(np.median(norms))  # some samples clipped, some not
    expected, _ = clip_then_average(params, X, Y, names, loss, max_norm)
    assert np.any(norms > max_norm * 1.001) and np.any(norms < max_norm * 0.999)
    net = jbp.mlp(sizes, hidden=names[:-1], output=output)
    J, grads = jbp.clipped_grads(net, as_dense(params), X, Y, loss, max_norm)
    ref.assert_close(grads, expected, rtol=1e-9)
    J_plain, _ = jbp.loss_and_grads(net, as_dense(params), X, Y, loss)
    np.testing.assert_allclose(J, J_plain, rtol=1e-12)


def test_clipped_grads_form_no_per_sample_gradients():
    net = jbp.mlp([6, 5, 4], "relu", "softmax")
    assert _outer_product_shapes(lambda p, X, Y: jbp.clipped_grads(net, p, X, Y, "softmax_cross_entropy", 0.5)) == []


# --- the noise


def test_the_noise_has_the_scale_it_is_given_and_its_key_fixes_it():
    stddev, shape = 0.37, (300, 200)
    noise = jbp.dp_noise(stddev, jax.random.key(5))
    zeros = {"w": jnp.zeros(shape)}
    state = noise.init(zeros)
    draws = []
    for _ in range(5):
        updates, state = noise.update(zeros, state)
        draws.append(np.asarray(updates["w"]))
    sample = np.concatenate([d.ravel() for d in draws])  # 300,000 draws
    # the sample standard deviation's own standard error is stddev / √(2N): 5 of them as the bound
    assert abs(sample.std() - stddev) < 5 * stddev / math.sqrt(2 * sample.size)
    assert abs(sample.mean()) < 5 * stddev / math.sqrt(sample.size)
    assert not np.array_equal(draws[0], draws[1])  # a new draw every step
    again, _ = noise.update(zeros, noise.init(zeros))
    np.testing.assert_array_equal(again["w"], draws[0])  # the same key and step, the same noise


# --- Poisson sampling inside fit


def test_with_every_sample_and_no_noise_dp_sgd_is_full_batch_descent():
    """q = 1, σ = 0 and a clipping norm no gradient reaches: every step takes all n rows, and the
    private epoch must equal plain full-batch gradient descent, bit for bit up to summation order."""
    net = jbp.mlp([4, 6, 3], hidden="tanh", output="softmax")
    params = jbp.init(net, jax.random.key(0))
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(30, 4)), np.eye(3)[rng.integers(0, 3, 30)]
    common = dict(loss="softmax_cross_entropy", optimizer=optax.sgd(0.3), epochs=4, batch_size=30, key=jax.random.key(1))
    private = jbp.fit(net, params, X, Y, privacy=jbp.dp_sgd(1e6, 0.0), train_metrics=True, **common)
    plain = jbp.fit(net, params, X, Y, **common)
    ref.assert_close(private.params, plain.params, rtol=1e-12)
    assert [r["batch_size_mean"] for r in private.history] == [30.0] * 4  # asked for: outside the guarantee


def test_poisson_batches_have_the_binomial_mean_and_variance():
    net = jbp.mlp([3, 2], hidden=(), output="softmax")
    params = jbp.init(net, jax.random.key(0))
    n, B = 400, 40
    X, Y = np.ones((n, 3)), np.eye(2)[np.arange(n) % 2]
    from jbp.privacy import poisson_epoch, private_optimizer

    privacy = jbp.dp_sgd(1.0, 1.0, jax.random.key(3))
    optimizer = private_optimizer(privacy, optax.sgd(0.0), B)
    counts = []
    for epoch in range(40):
        *_, epoch_counts = poisson_epoch(net, params, optimizer.init(params), jnp.asarray(X), jnp.asarray(Y, jnp.float64),
                                          jax.random.key(epoch), jnp.asarray(1.0), loss=jbp.softmax_cross_entropy,
                                          optimizer=optimizer, batch_size=B, l2=0.0)
        counts.extend(np.asarray(epoch_counts).tolist())
    counts = np.array(counts)  # 400 steps
    q = B / n
    mean, variance = n * q, n * q * (1 - q)
    assert abs(counts.mean() - mean) < 5 * math.sqrt(variance / len(counts))
    assert abs(counts.var() / variance - 1) < 5 * math.sqrt(2 / len(counts))


# --- the accountant


def test_epsilon_is_dp_accountings_and_opacus():
    q, sigma, steps, delta = 256 / 60000, 1.1, 2344, 1e-5
    accountant = dp_accounting.rdp.RdpAccountant()
    for _ in range(4):  # composed in pieces here, in one go in jbp
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps // 4)
    assert jbp.privacy.epsilon(sigma, q, steps, delta) == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
    # Opacus 1.6's RDP accountant on the same mechanism printed 1.098773
    assert jbp.privacy.epsilon(sigma, q, steps, delta) == pytest.approx(1.098773, abs=5e-7)
    sigma_for_1 = jbp.privacy.noise_for_epsilon(1.0, q, steps, delta)
    assert jbp.privacy.epsilon(sigma_for_1, q, steps, delta) <= 1.0 + 1e-6
    assert jbp.privacy.epsilon(sigma_for_1 * 0.99, q, steps, delta) > 1.0
    assert jbp.privacy.epsilon(0.0, q, steps, delta) == math.inf and jbp.privacy.epsilon(1.0, q, 0, delta) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: jbp.dp_sgd(0.0, 1.0, jax.random.key(0)), "max_norm must be a finite number > 0, got 0.0"),
        (lambda: jbp.dp_sgd(float("inf"), 1.0, jax.random.key(0)), "max_norm must be a finite number > 0, got inf"),
        (lambda: jbp.dp_sgd(1.0, -0.5, jax.random.key(0)), "noise_multiplier must be a finite number ≥ 0, got -0.5"),
        (lambda: jbp.dp_sgd(1.0, 1.0, jax.random.key(0), delta=1.5), r"delta must lie in \(0, 1\), got 1.5"),
        (lambda: jbp.dp_sgd(1.0, 1.0, 7), "key must be one jax.random.key"),
        (lambda: jbp.privacy.epsilon(1.0, 1.2, 10, 1e-5), r"the sampling rate must lie in \(0, 1\], got 1.2"),
        (lambda: jbp.privacy.epsilon(1.0, 0.0, 10, 1e-5), r"the sampling rate must lie in \(0, 1\], got 0.0"),
        (lambda: jbp.privacy.noise_for_epsilon(0.0, 0.1, 10, 1e-5), "the target epsilon must be a finite number > 0"),
        (lambda: jbp.privacy.noise_for_epsilon(1.0, 0.1, 10, 0.0), r"delta must lie in \(0, 1\)"),
        (lambda: jbp.clipped_grads(jbp.mlp([2, 2], (), "softmax"), jbp.init(jbp.mlp([2, 2], (), "softmax"), jax.random.key(0)),
                                   np.ones((2, 2)), np.eye(2), "softmax_cross_entropy", float("nan")),
         "max_norm must be a finite number > 0, got nan"),
    ],
)
def test_bad_privacy_options_are_refused(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


# --- the command


def test_dp_training_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "dp"
    assert main(["train", "--dp-clip", "1", "--dp-noise", "1", "--epochs", "10", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["optimizer"] == "sgd" and config["dp_delta"] == 1e-5  # the DP defaults
    assert summary["test_accuracy"] >= 0.85, summary  # it learns, with the command's defaults
    q = config["batch_size"] / 1257
    expected = jbp.privacy.epsilon(1.0, q, 10 * round(1257 / config["batch_size"]), 1e-5)
    assert summary["epsilon"] == pytest.approx(expected, rel=1e-9) and f"ε = {summary['epsilon']:.3g}" in printed
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(a["epsilon"] < b["epsilon"] for a, b in zip(lines, lines[1:]))


def test_a_resumed_reproducible_dp_run_ends_where_an_unbroken_one_does(tmp_path):
    """Bit for bit only with --dp-reproducible (not private): a default run's noise comes from the OS."""
    common = ["--dp-clip", "0.5", "--dp-noise", "1.2", "--dp-reproducible", "--no-progress"]
    assert main(["train", *common, "--epochs", "6", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "3", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "6", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "params.npz") as a, np.load(tmp_path / "split" / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)  # the same samples, clips and noise
    for name in ("summary.json",):
        assert json.loads((tmp_path / "straight" / name).read_text())["epsilon"] == \
            json.loads((tmp_path / "split" / name).read_text())["epsilon"]


def test_a_target_epsilon_chooses_the_noise_for_the_run(tmp_path):
    assert main(["train", "--dp-clip", "1", "--dp-epsilon", "4", "--epochs", "5", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    q, steps = config["batch_size"] / 1257, 5 * round(1257 / config["batch_size"])
    assert config["dp_noise"] == pytest.approx(jbp.privacy.noise_for_epsilon(4.0, q, steps, 1e-5), rel=1e-9)
    assert 3.9 <= summary["epsilon"] <= 4.0 + 1e-6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dp-clip", "0"], "argument --dp-clip: must be a finite number > 0"),
        (["--dp-clip", "1", "--dp-noise", "-1"], "argument --dp-noise: must be a finite number ≥ 0"),
        (["--dp-clip", "1", "--dp-delta", "1"], "argument --dp-delta: must lie in (0, 1), got 1"),
        (["--dp-clip", "1", "--dp-epsilon", "0"], "argument --dp-epsilon: must be a finite number > 0"),
        (["--dp-clip", "1", "--dp-noise", "1", "--dp-epsilon", "2"], "give --dp-noise or --dp-epsilon, not both"),
        (["--dp-noise", "1"], "--dp-noise, --dp-epsilon, --dp-delta and --dp-reproducible go with --dp-clip"),
        (["--dp-reproducible"], "--dp-noise, --dp-epsilon, --dp-delta and --dp-reproducible go with --dp-clip"),
    ],
)
def test_bad_dp_options_are_one_line(args, message, capsys):
    try:
        status = main(["train", *args])
    except SystemExit as exit_:
        status = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0], err
