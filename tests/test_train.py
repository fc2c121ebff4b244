"""jbp.fit against an independent loop of optax steps on autodiff gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbp
import jbp.epochs
import reference as ref

SIZES = (5, 7, 3)
NAMES = ("tanh", "softmax")


def problem(n=23, seed=0):
    params, X, Y = ref.random_problem(seed, SIZES, "softmax_cross_entropy", n)
    return tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params), X, Y


def expected_epochs(params, X, Y, optimizer, key, epochs, batch_size, l2, drop_last=False):
    """The same training, written out: per epoch a permutation from fold_in(key, e),
    minibatches in that order, each step the autodiff gradient of the minibatch
    cost with the L2 share l2·m_b/n, then optax."""
    n = len(X)
    state = optimizer.init(params)
    ref_params = tuple((layer.W, layer.b) for layer in params)
    for epoch in range(epochs):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        starts = range(0, n - batch_size + 1 if drop_last else n, batch_size)
        for start in starts:
            rows = order[start : start + batch_size]
            _, g = ref.value_and_grad(ref_params, X[rows], Y[rows], NAMES, "softmax_cross_entropy", l2 * len(rows) / n)
            grads = tuple(jbp.Dense(W, b) for W, b in g)
            current = tuple(jbp.Dense(W, b) for W, b in ref_params)
            updates, state = optimizer.update(grads, state, current)
            ref_params = tuple(optax.apply_updates(current, updates))
    return tuple(jbp.Dense(W, b) for W, b in ref_params)


@pytest.mark.parametrize("batch_size, drop_last", [(5, False), (5, True), (23, False), (1, False)])
def test_fit_is_the_loop_of_optax_steps_it_describes(batch_size, drop_last):
    params, X, Y = problem()
    net = jbp.mlp(SIZES, hidden=NAMES[0], output=NAMES[1])
    optimizer, key = optax.adam(0.05), jax.random.key(3)
    result = jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=optimizer, epochs=3,
                     batch_size=batch_size, key=key, l2=0.4, drop_last=drop_last)
    expected = expected_epochs(params, X, Y, optimizer, key, 3, batch_size, 0.4, drop_last)
    ref.assert_close(result.params, expected, rtol=1e-9)
    steps_per_epoch = 23 // batch_size if drop_last else -(-23 // batch_size)
    assert int(result.opt_state[0].count) == 3 * steps_per_epoch


def test_history_records_every_epoch_with_validation():
    params, X, Y = problem()
    Y = np.eye(3)[np.argmax(Y, axis=1)]  # class targets
    net = jbp.mlp(SIZES, hidden="tanh", output="softmax")
    seen = []
    result = jbp.fit(net, params, X[:18], Y[:18], loss="softmax_cross_entropy", optimizer=optax.sgd(0.1),
                     epochs=4, batch_size=4, key=jax.random.key(0), validation=(X[18:], Y[18:]),
                     on_epoch=lambda record, p, s: seen.append(record["epoch"]))
    assert seen == [1, 2, 3, 4] and [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    last = result.history[-1]
    assert set(last) == {"epoch", "running_loss", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    expected = jbp.evaluate(net, result.params, X[18:], Y[18:], "softmax_cross_entropy")
    assert last["val_loss"] == pytest.approx(expected["loss"]) and last["val_accuracy"] == expected["accuracy"]
    manual = float(np.mean(np.argmax(jbp.predict(net, result.params, X[:18]), 1) == np.argmax(Y[:18], 1)))
    assert last["accuracy"] == pytest.approx(manual)


def test_same_key_same_bits_other_key_other_result():
    params, X, Y = problem()
    net = jbp.mlp(SIZES, hidden="tanh", output="softmax")
    run = lambda seed: jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=optax.sgd(0.3),  # noqa: E731
                               epochs=2, batch_size=4, key=jax.random.key(seed)).params
    a, b, c = run(0), run(0), run(1)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_an_epoch_compiles_once_and_resuming_matches_an_unbroken_run():
    params, X, Y = problem(n=17)
    net = jbp.mlp(SIZES, hidden="tanh", output="softmax")
    opt, key = optax.adam(0.01), jax.random.key(5)
    common = dict(loss="softmax_cross_entropy", optimizer=opt, batch_size=6, key=key)
    before = jbp.epochs.epoch._cache_size()
    whole = jbp.fit(net, params, X, Y, epochs=6, **common)
    assert jbp.epochs.epoch._cache_size() == before + 1
    half = jbp.fit(net, params, X, Y, epochs=3, **common)
    rest = jbp.fit(net, half.params, X, Y, epochs=6, opt_state=half.opt_state, start_epoch=3,
                   history=half.history, **common)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(rest.params)))
    assert [r["epoch"] for r in rest.history] == list(range(1, 7))


def test_xor_is_learned():
    data = jbp.data.xor()
    net = jbp.mlp([2, 4, 1], hidden=jbp.tanh, output=jbp.sigmoid)
    result = jbp.fit(net, jbp.init(net, jax.random.key(0)), data.train.X, data.train.Y,
                     loss=jbp.binary_cross_entropy, optimizer=optax.adam(0.1), epochs=300, batch_size=4,
                     key=jax.random.key(1))
    outputs = np.asarray(jbp.predict(net, result.params, data.train.X)).ravel()
    assert np.all((outputs > 0.5) == np.array([False, True, True, False])), outputs


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(batch_size=0), ValueError, "batch_size must be between 1 and 23, got 0"),
        (dict(batch_size=24), ValueError, "batch_size must be between 1 and 23, got 24"),
        (dict(epochs=0), ValueError, "epochs must be at least 1, got 0"),
        (dict(epochs=2.5), TypeError, "epochs must be an integer"),
        (dict(l2=-1.0), ValueError, "l2 must be a finite number ≥ 0"),
        (dict(optimizer="adam"), TypeError, "optax.GradientTransformation"),
    ],
)
def test_bad_training_options(change, error, message):
    params, X, Y = problem()
    net = jbp.mlp(SIZES, hidden="tanh", output="softmax")
    options = dict(loss="softmax_cross_entropy", optimizer=optax.sgd(0.1), epochs=1, batch_size=4,
                   key=jax.random.key(0))
    options.update(change)
    with pytest.raises(error, match=message):
        jbp.fit(net, params, X, Y, **options)
