"""experiments/vanishing_gradient.py runs on a small setting, and measures what it says it measures."""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp

EXPERIMENTS = pathlib.Path(__file__).parents[1] / "experiments"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    """The experiment module, importing its helpers from experiments/ and writing into a temporary folder."""
    pytest.importorskip("sklearn", reason="the smoke run uses scikit-learn's digits (the datasets extra)")
    pytest.importorskip("matplotlib", reason="the experiment draws its figure with matplotlib (the plots extra)")
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    common = load("common")
    monkeypatch.setitem(sys.modules, "common", common)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return load("vanishing_gradient"), tmp_path


def test_smoke_run_writes_results_and_the_sigmoid_gradient_vanishes(experiment):
    vanishing_gradient, results = experiment
    args = ["--data", "digits", "--epochs", "2", "--train", "100", "--seeds", "3", "--train-seeds", "1", "--depths", "4",
            "--variants", "sigmoid-nielsen,relu-he"]
    assert vanishing_gradient.main(args) == 0
    saved = json.loads((results / "vanishing_gradient.json").read_text())
    assert (results / "vanishing_gradient.png").read_bytes()[:4] == b"\x89PNG"
    assert saved["data"] == "digits" and saved["n_train"] == 100 and saved["epochs"] == 2
    assert list(saved["variants"]) == ["sigmoid, Nielsen's init", "relu, He init"]
    for variant in saved["variants"].values():
        assert set(variant) == {"4 hidden"}
        deep = variant["4 hidden"]
        assert len(deep["at_init_per_seed"]) == 3 and all(len(row) == 4 for row in deep["at_init_per_seed"])
        assert np.array(deep["training_speeds"]).shape == (2, 4) and 0 <= deep["test_accuracy"] <= 1

    sigmoid = saved["variants"]["sigmoid, Nielsen's init"]["4 hidden"]["at_init_mean"]
    he = saved["variants"]["relu, He init"]["4 hidden"]["at_init_mean"]
    # Nielsen's picture: each sigmoid layer learns several times slower than the one above it ...
    assert all(lower * 2 < upper for lower, upper in zip(sigmoid, sigmoid[1:])), sigmoid
    assert sigmoid[0] / sigmoid[-1] < 0.05
    # ... and relu with He's scaling keeps the four layers within a small factor of one another.
    assert he[0] / he[-1] > 0.2, he


def test_speed_of_learning_is_the_mean_delta_of_jbp_backward(experiment):
    """The norm the experiment reports is ‖(1/m) Σ_i δ_i^l‖ with δ from jbp's one-sample passes."""
    vanishing_gradient, _ = experiment
    data = jbp.data.digits(standardize=False)
    X, Y = data.train.X[:20], data.train.Y[:20]
    net = jbp.mlp([64, 30, 30, 30, 30, 10], hidden=jbp.sigmoid, output=jbp.sigmoid)  # the smoke run's shapes
    params = vanishing_gradient.nielsen_init(net, jax.random.key(0))
    _, grads = jbp.loss_and_grads(net, params, X, Y, jbp.binary_cross_entropy)
    measured = np.asarray(vanishing_gradient.speed_of_learning(grads))

    deltas = [jbp.backward(net, params, jbp.forward(net, params, x), y, jbp.binary_cross_entropy)[1] for x, y in zip(X, Y)]
    by_hand = [np.linalg.norm(np.mean([d[l] for d in deltas], axis=0)) for l in range(4)]
    np.testing.assert_allclose(measured, by_hand, rtol=1e-9)


def test_initializations_have_the_scales_they_claim():
    """Nielsen's N(0, 1/n_in) weights and N(0, 1) biases, Glorot ×4, He: their sample variances."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        vanishing_gradient = load("vanishing_gradient")
    finally:
        sys.path.remove(str(EXPERIMENTS))
    net = jbp.mlp([64, 30, 30, 30, 30, 10], hidden=jbp.sigmoid, output=jbp.sigmoid)  # the smoke run's shapes
    keys = [jax.random.key(seed) for seed in range(4)]
    first_layers = lambda init: jnp.stack([init(net, key)[0].W for key in keys])  # 4 × 1,920 weights
    assert float(jnp.var(first_layers(vanishing_gradient.nielsen_init))) == pytest.approx(1 / 64, rel=0.1)
    biases = jnp.concatenate([b for key in keys for _, b in vanishing_gradient.nielsen_init(net, key)])
    assert float(jnp.var(biases)) == pytest.approx(1.0, rel=0.25)
    glorot = first_layers(vanishing_gradient.glorot_times_4)
    assert float(jnp.var(glorot)) == pytest.approx(16 * 2 / (64 + 30), rel=0.1)
    assert float(jnp.abs(glorot).max()) <= 4 * (6 / (64 + 30)) ** 0.5
    assert float(jnp.var(first_layers(vanishing_gradient.he_init))) == pytest.approx(2 / 64, rel=0.1)
    assert not any(jnp.any(b) for init in (vanishing_gradient.glorot_times_4, vanishing_gradient.he_init)
                   for _, b in init(net, keys[0]))
