"""Data parallel training on a mesh of eight simulated CPU devices, and a run that wastes nothing
per epoch. Run by ``tests/test_parallel.py`` in a process of its own, started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the rest of the suite keeps one device).

Tolerances: in float64, a mesh changes only the order in which XLA adds the
partial sums of the gradient, so parameters after several epochs agree with
one device's to 1e-12 (relative to their size).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jbp
from jbp import epochs, metrics, parallel
from jbp.cli import main

LOSS = "softmax_cross_entropy"


def problem(n=100, sizes=(6, 16, 12, 3), seed=0):
    rng = np.random.default_rng(seed)
    net = jbp.mlp(list(sizes), hidden="tanh", output="softmax")
    X, Y = rng.normal(size=(n, sizes[0])), np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)]
    return net, jbp.init(net, jax.random.key(seed)), X, Y


def meshes():
    devices = jax.devices()
    assert len(devices) >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
    return {
        "make_mesh 8 (Explicit)": jax.make_mesh((8,), ("batch",)),
        "make_mesh 4 (Explicit)": jax.make_mesh((4,), ("batch",), devices=devices[:4]),
        "Mesh by hand 4 (Auto)": Mesh(np.array(devices[4:8]), ("batch",)),
        "2 x 4, batch and model": Mesh(np.array(devices).reshape(4, 2), ("batch", "model")),
    }


def assert_same(a, b, rtol=1e-12):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(y)))))


MESHES = ("make_mesh 8 (Explicit)", "make_mesh 4 (Explicit)", "Mesh by hand 4 (Auto)", "2 x 4, batch and model")


@pytest.mark.parametrize("name", MESHES)
def test_fit_on_a_mesh_is_fit_on_one_device(name):
    mesh = meshes()[name]
    net, params, X, Y = problem()  # 100 rows, batches of 16: the last minibatch has 4 rows
    kw = dict(loss=LOSS, optimizer=optax.adam(0.01), epochs=2, batch_size=16, key=jax.random.key(1),
              validation=(X[:20], Y[:20]), l2=0.3)
    one = jbp.fit(net, params, X, Y, **kw)
    many = jbp.fit(net, params, X, Y, mesh=mesh, **kw)
    assert_same(many.params, one.params)
    for a, b in zip(many.history, one.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12) and a["val_accuracy"] == b["val_accuracy"]
    assert many.params[0].W.sharding.is_fully_replicated
    assert set(many.params[0].W.sharding.device_set) == set(mesh.devices.flat)


def test_feedback_rules_and_dp_sgd_on_a_mesh():
    mesh = jax.make_mesh((4,), ("batch",), devices=jax.devices()[:4])
    net, params, X, Y = problem(n=48, sizes=(5, 8, 3))
    kw = dict(loss=LOSS, optimizer=optax.sgd(0.1), epochs=1, batch_size=16, key=jax.random.key(2))
    rule = jbp.kolen_pollack.random(net, jax.random.key(3))
    one = jbp.fit(net, params, X, Y, feedback=rule, **kw)
    many = jbp.fit(net, params, X, Y, feedback=rule, mesh=mesh, **kw)
    assert_same((many.params, many.feedback.matrices), (one.params, one.feedback.matrices))
    private = jbp.dp_sgd(max_norm=0.5, noise_multiplier=1.0, key=jax.random.key(4))
    # train_metrics: a private run records its batch sizes only when asked (outside the guarantee)
    one = jbp.fit(net, params, X, Y, privacy=private, train_metrics=True, **kw)
    many = jbp.fit(net, params, X, Y, privacy=private, mesh=mesh, train_metrics=True, **kw)
    assert_same(many.params, one.params)
    assert many.history[-1]["batch_size_mean"] == one.history[-1]["batch_size_mean"]


def test_the_many_process_path_feeds_the_same_minibatches():
    """The path a mesh over several processes takes (each process gathering only its devices' rows
    of each minibatch on the host), run in one process over eight devices: the same steps."""
    mesh = jax.make_mesh((8,), ("batch",))
    net, params, X, Y = problem(n=100)
    kw = dict(loss=LOSS, optimizer=optax.adam(0.01), epochs=2, batch_size=16, key=jax.random.key(1))
    one = jbp.fit(net, params, X, Y, **kw)
    real = parallel.spans_processes
    try:
        parallel.spans_processes = lambda mesh: True
        many = jbp.fit(net, params, X, Y, mesh=mesh, **kw)
        with pytest.raises(ValueError, match="DP-SGD across several processes"):
            jbp.fit(net, params, X, Y, mesh=mesh, privacy=jbp.dp_sgd(1.0, 1.0, jax.random.key(0)), **kw)
    finally:
        parallel.spans_processes = real
    assert_same(many.params, one.params)
    rows = np.arange(64).reshape(4, 16)
    assert parallel.local_rows(mesh, rows.shape) == slice(0, 16)  # one process holds every device


@pytest.mark.parametrize("explicit", [True, False])
def test_every_public_batch_call_takes_sharded_inputs(explicit):
    """Every call on an Explicit mesh (jax.make_mesh's); the first four on an Auto mesh, too."""
    devices = jax.devices()[:4]
    mesh = jax.make_mesh((4,), ("batch",), devices=devices) if explicit else Mesh(np.array(devices), ("batch",))
    net, params, X, Y = problem(n=12)
    Xs, Ys = (jax.device_put(a, NamedSharding(mesh, P("batch"))) for a in (X, Y))
    calls = {
        "loss_and_grads": lambda X, Y: jbp.loss_and_grads(net, params, X, Y, LOSS, l2=0.5),
        "per_example_grad_norms": lambda X, Y: jbp.per_example_grad_norms(net, params, X, Y, LOSS),
        "per_example_grads": lambda X, Y: jbp.per_example_grads(net, params, X, Y, LOSS),
        "evaluate": lambda X, Y: jbp.evaluate(net, params, X, Y, LOSS),
        "predict": lambda X, Y: jbp.predict(net, params, X),
        "sum_grad_squared": lambda X, Y: jbp.sum_grad_squared(net, params, X, Y, LOSS),
        "grad_variance": lambda X, Y: jbp.grad_variance(net, params, X, Y, LOSS),
        "per_example_grad_gram": lambda X, Y: jbp.per_example_grad_gram(net, params, X, Y, LOSS),
        "diag_ggn": lambda X, Y: jbp.diag_ggn(net, params, X, Y, LOSS),
        "diag_ggn_mc": lambda X, Y: jbp.diag_ggn_mc(net, params, X, Y, LOSS, jax.random.key(5), samples=2),
        "kfac_factors": lambda X, Y: jbp.kfac_factors(net, params, X, Y, LOSS),
        "clipped_grads": lambda X, Y: jbp.clipped_grads(net, params, X, Y, LOSS, max_norm=0.3),
    }
    for name, call in list(calls.items())[: None if explicit else 4]:
        assert_same(call(Xs, Ys), call(X, Y), rtol=1e-12), name


def _collectives(text: str) -> list[str]:
    return re.findall(r"\b(all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(", text)


@pytest.mark.parametrize("explicit", [True, False])
def test_a_step_holds_one_all_reduce_and_no_gather_of_the_batch(explicit):
    devices = jax.devices()
    mesh = jax.make_mesh((8,), ("batch",)) if explicit else Mesh(np.array(devices), ("batch",))
    net, params, X, Y = problem(n=96)
    optimizer = optax.sgd(0.1)
    placed = parallel.place((X, Y, params, optimizer.init(params)), mesh)
    compiled = epochs.epoch.lower(
        net, placed[2], placed[3], placed[0], placed[1], jax.random.key(1), None, loss=jbp.softmax_cross_entropy,
        optimizer=optimizer, batch_size=16, drop_last=False, l2=0.0, mesh=mesh,
    ).compile().as_text()
    assert _collectives(compiled) == ["all-reduce"], _collectives(compiled)
    reduced = next(line for line in compiled.splitlines() if re.search(r"all-reduce(-start)?\(", line))
    for layer in params:  # the one all-reduce carries every W and b (and the minibatch's cost)
        for leaf in layer:
            assert f"[{','.join(map(str, leaf.shape))}]" in reduced


def test_a_whole_run_compiles_once():
    net, params, X, Y = problem(n=90)
    kw = dict(loss=LOSS, optimizer=optax.sgd(0.05), batch_size=16, key=jax.random.key(1), validation=(X[:30], Y[:30]))
    before = epochs.epoch._cache_size(), metrics._evaluate._cache_size()
    jbp.fit(net, params, X, Y, epochs=6, **kw)
    after = epochs.epoch._cache_size(), metrics._evaluate._cache_size()
    assert after[0] - before[0] == 1  # one program for every epoch
    assert after[1] - before[1] <= 2  # the training set's and the validation set's
    jbp.fit(net, params, X, Y, epochs=3, **kw)  # the same shapes again: nothing new
    assert (epochs.epoch._cache_size(), metrics._evaluate._cache_size()) == after


def test_eval_every_and_no_training_set_pass():
    net, params, X, Y = problem(n=64)
    kw = dict(loss=LOSS, optimizer=optax.sgd(0.05), epochs=7, batch_size=16, key=jax.random.key(1),
              validation=(X[:16], Y[:16]))
    every = jbp.fit(net, params, X, Y, **kw)
    some = jbp.fit(net, params, X, Y, eval_every=3, **kw)
    never = jbp.fit(net, params, X, Y, eval_every=0, **kw)
    quiet = jbp.fit(net, params, X, Y, train_metrics=False, **kw)
    assert [r["epoch"] for r in some.history if "loss" in r] == [3, 6, 7]  # and the last
    assert all(set(r) == {"epoch", "running_loss", "seconds"} for r in never.history)
    assert all("loss" not in r and "val_loss" in r for r in quiet.history)
    for r, s in zip(every.history, some.history):
        assert r["running_loss"] == s["running_loss"] and ("loss" not in s or s["loss"] == r["loss"])
    assert_same(never.params, every.params, rtol=0)
    with pytest.raises(ValueError, match="eval_every must be 1"):
        jbp.fit(net, params, X, Y, eval_every=2, patience=2, **kw)
    with pytest.raises(ValueError, match="eval_every must be at least 0"):
        jbp.fit(net, params, X, Y, eval_every=-1, **kw)


def test_mixed_precision_trains_to_float32_accuracy_on_the_digits():
    data = jbp.data.digits()
    net = jbp.mlp([64, 64, 10], hidden="relu", output="softmax")
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    X, Y = data.train.X.astype(np.float32), data.train.Y.astype(np.float32)
    kw = dict(loss=LOSS, optimizer=optax.adam(2e-3), epochs=8, batch_size=32, key=jax.random.key(1))
    test = (data.test.X.astype(np.float32), data.test.Y.astype(np.float32))
    full = jbp.evaluate(net, jbp.fit(net, params, X, Y, **kw).params, *test, LOSS)["accuracy"]
    mixed = jbp.fit(net, params, X, Y, compute_dtype=jnp.bfloat16, **kw)
    assert mixed.params[0].W.dtype == jnp.float32  # the master weights
    accuracy = jbp.evaluate(net, mixed.params, *test, LOSS)["accuracy"]
    assert full > 0.93 and accuracy >= full - 0.01, (full, accuracy)
    half = jbp.init(net, jax.random.key(0), dtype=jnp.bfloat16)  # bfloat16 all through, too
    trained = jbp.fit(net, half, X.astype(jnp.bfloat16), Y.astype(jnp.bfloat16), **kw).params
    assert trained[0].W.dtype == jnp.bfloat16
    assert jbp.evaluate(net, trained, *(a.astype(jnp.bfloat16) for a in test), LOSS)["accuracy"] > 0.9
    with pytest.raises(TypeError, match="compute_dtype must be a floating dtype"):
        jbp.fit(net, params, X, Y, compute_dtype=jnp.int8, **kw)


def test_float16_overflow_is_refused_with_its_reason():
    net = jbp.mlp([4, 8, 2], hidden="relu", output="softmax")
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    X, Y = np.full((8, 4), 3e4, np.float32), np.eye(2, dtype=np.float32)[np.arange(8) % 2]
    with pytest.raises(jbp.train.TrainingDiverged, match="float16 holds numbers up to 65504"):
        jbp.fit(net, params, X, Y, loss=LOSS, optimizer=optax.sgd(0.1), epochs=1, batch_size=8,
                key=jax.random.key(0), compute_dtype=jnp.float16)


def test_bad_meshes_and_batches_are_refused(tmp_path, capsys):
    net, params, X, Y = problem(n=64)
    kw = dict(loss=LOSS, optimizer=optax.sgd(0.1), epochs=1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs an axis named 'batch'.*'data'"):
        jbp.fit(net, params, X, Y, batch_size=16, mesh=jax.make_mesh((4,), ("data",), devices=jax.devices()[:4]), **kw)
    with pytest.raises(TypeError, match="must be a jax.sharding.Mesh"):
        jbp.fit(net, params, X, Y, batch_size=16, mesh=jax.devices(), **kw)
    with pytest.raises(ValueError, match="batch_size 12 does not split over the mesh's 8"):
        jbp.fit(net, params, X, Y, batch_size=12, mesh=jax.make_mesh((8,), ("batch",)), **kw)
    with pytest.raises(ValueError, match="9 devices asked for, but this process has 8"):
        parallel.make_mesh(9)
    assert main(["train", "--sizes", "64,8,10", "--epochs", "1", "--devices", "8", "--batch-size", "60",
                 "--out", str(tmp_path / "run")]) == 2
    assert "--batch-size 60 does not split over 8 devices" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert parallel.make_mesh(3).devices.tolist() == jax.devices()[:3]
