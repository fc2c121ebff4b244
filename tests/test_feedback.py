"""Credit-assignment rules: each rule's update against a NumPy reference written here from
the equations, feedback alignment with B = W as backprop, the angles, Kolen-Pollack's
learning, bad rules refused, and the rules through fit and the command."""

import json

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

SIGMA = {"tanh": (np.tanh, lambda z: 1 - np.tanh(z) ** 2),
         "sigmoid": (lambda z: 1 / (1 + np.exp(-z)), lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2)}


def numpy_update(params, X, Y, hidden, kind, matrices, l2=0.0):
    """The rule's update written from the equations in NumPy: softmax outputs with cross-entropy
    (δ^L = a − y), BP2 as the rule says, BP3/BP4 averaged, Coursera's L2 on the weights."""
    m = len(X)
    grads = [[np.zeros_like(W), np.zeros_like(b)] for W, b in params]
    for x, y in zip(X, Y):
        a, zs, acts = x, [], [x]
        for l, (W, b) in enumerate(params):
            z = W @ a + b
            zs.append(z)
            if l < len(params) - 1:
                a = SIGMA[hidden][0](z)
            else:
                a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            acts.append(a)
        deltas = [None] * len(params)
        deltas[-1] = acts[-1] - y  # BP1, fused
        for l in range(len(params) - 2, -1, -1):  # 0-based layer l receives the error
            W_above = params[l + 1][0]
            if kind == "backprop":
                back = W_above.T @ deltas[l + 1]
            elif kind in ("fa", "kp"):
                back = matrices[l + 1].T @ deltas[l + 1]
            elif kind == "sign":
                back = np.sign(W_above).T @ deltas[l + 1]
            else:  # dfa: B^l δ^L, one matrix per hidden layer
                back = matrices[l] @ deltas[-1]
            deltas[l] = back * SIGMA[hidden][1](zs[l])  # BP2
        for l in range(len(params)):
            grads[l][0] += np.outer(deltas[l], acts[l]) / m  # BP4
            grads[l][1] += deltas[l] / m  # BP3
    for l, (W, _) in enumerate(params):
        grads[l][0] += l2 / m * W
    return grads


def rule_of(kind, matrices):
    return {"backprop": lambda: jbp.backprop(), "fa": lambda: jbp.feedback_alignment(matrices),
            "kp": lambda: jbp.kolen_pollack(matrices), "sign": lambda: jbp.sign_symmetry(),
            "dfa": lambda: jbp.direct_feedback_alignment(matrices)}[kind]()


@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["backprop", "fa", "dfa", "sign", "kp"]), st.integers(2, 4), st.sampled_from(["tanh", "sigmoid"]),
       st.integers(1, 6), st.sampled_from([0.0, 0.8]), st.integers(0, 2**31))
def test_every_rule_is_its_equation(kind, depth, hidden, m, l2, seed):
    rng = np.random.default_rng(seed)
    sizes = tuple(int(w) for w in rng.integers(2, 7, depth + 1))
    params, X, Y = ref.random_problem(seed, sizes, "softmax_cross_entropy", m)
    if kind == "dfa":
        matrices = [rng.normal(size=(n, sizes[-1])) for n in sizes[1:-1]]
    else:
        matrices = [rng.normal(size=W.shape) for W, _ in params]
    net = jbp.mlp(sizes, hidden=hidden, output="softmax")
    dense = tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params)
    _, grads = jbp.loss_and_grads(net, dense, X, Y, "softmax_cross_entropy", l2=l2, feedback=rule_of(kind, matrices))
    expected = numpy_update(params, X, Y, hidden, kind, matrices, l2)
    ref.assert_close(grads, tuple(jbp.Dense(W, b) for W, b in expected), rtol=1e-10)
    # one sample through deltas and backward, too
    trace = jbp.forward(net, dense, X[0])
    one, deltas = jbp.backward(net, dense, trace, Y[0], "softmax_cross_entropy", feedback=rule_of(kind, matrices))
    single = numpy_update(params, X[:1], Y[:1], hidden, kind, matrices)
    ref.assert_close(one, tuple(jbp.Dense(W, b) for W, b in single), rtol=1e-10)
    ref.assert_close(jbp.deltas(net, dense, trace, Y[0], "softmax_cross_entropy", feedback=rule_of(kind, matrices)),
                     deltas, rtol=1e-14)


def test_feedback_alignment_with_the_forward_weights_is_backprop_exactly():
    net = jbp.mlp([5, 7, 6, 3], hidden="tanh", output="softmax")
    params = jbp.init(net, jax.random.key(0))
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(9, 5)), np.eye(3)[rng.integers(0, 3, 9)]
    _, backprop = jbp.loss_and_grads(net, params, X, Y, "softmax_cross_entropy")
    for rule in (jbp.feedback_alignment([layer.W for layer in params]), jbp.kolen_pollack([layer.W for layer in params]),
                 jbp.backprop()):
        _, grads = jbp.loss_and_grads(net, params, X, Y, "softmax_cross_entropy", feedback=rule)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(backprop)):
            np.testing.assert_array_equal(a, b)


def test_the_recorded_angles_are_the_angles_to_autodiffs_gradient():
    net = jbp.mlp([6, 8, 8, 4], hidden="tanh", output="softmax")
    params = jbp.init(net, jax.random.key(0))
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(40, 6)), np.eye(4)[rng.integers(0, 4, 40)]
    rule = jbp.feedback_alignment.random(net, jax.random.key(5))
    result = jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=optax.sgd(0.1), epochs=2,
                     batch_size=8, key=jax.random.key(3), feedback=rule)
    trained = result.params
    names = ("tanh", "tanh", "softmax")
    as_pairs = tuple((np.asarray(layer.W), np.asarray(layer.b)) for layer in trained)
    true = ref.value_and_grad(as_pairs, X, Y, names, "softmax_cross_entropy", 0.0)[1]  # jax.grad of the reference
    update = numpy_update(as_pairs, X, Y, "tanh", "fa", [np.asarray(B) for B in rule.matrices])
    for l, (recorded, (gW, gb), (uW, ub)) in enumerate(zip(result.history[-1]["update_angles"], true, update)):
        g, u = np.concatenate([np.ravel(gW), gb]), np.concatenate([np.ravel(uW), ub])
        expected = np.degrees(np.arccos(np.clip(g @ u / np.linalg.norm(g) / np.linalg.norm(u), -1, 1)))
        assert recorded == pytest.approx(expected, abs=1e-6), l
    assert result.history[-1]["update_angles"][-1] == pytest.approx(0.0, abs=1e-5)  # BP1, BP3, BP4: the same for all
    B_angles = result.history[-1]["feedback_angles"]
    for B, layer, recorded in zip(rule.matrices, trained, B_angles):
        b, w = np.ravel(B), np.ravel(layer.W)
        assert recorded == pytest.approx(np.degrees(np.arccos(b @ w / np.linalg.norm(b) / np.linalg.norm(w))), abs=1e-6)


def test_kolen_pollack_shrinks_the_difference_by_its_decay_every_step():
    net = jbp.mlp([4, 6, 3], hidden="tanh", output="softmax")
    params = jbp.init(net, jax.random.key(0))
    rule = jbp.kolen_pollack.random(net, jax.random.key(9), decay=0.05)
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(16, 4)), np.eye(3)[rng.integers(0, 3, 16)]
    result = jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=optax.adam(0.01), epochs=1,
                     batch_size=16, key=jax.random.key(1), feedback=rule)  # one step
    for B_new, W_new, B, W in zip(result.feedback.matrices, result.params, rule.matrices, params):
        np.testing.assert_allclose(B_new - W_new.W, 0.95 * (B - W.W), rtol=1e-10, atol=1e-12)
    long = jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=optax.adam(0.01), epochs=150,
                   batch_size=16, key=jax.random.key(1), feedback=rule)
    first, last = long.history[0]["feedback_angles"], long.history[-1]["feedback_angles"]
    assert all(b < a / 10 for a, b in zip(first[1:], last[1:])), (first, last)  # B has come to W


@pytest.mark.parametrize(
    "rule, error, message",
    [
        (lambda p: jbp.feedback_alignment([l.W for l in p][:1]), ValueError, "fa needs 2 matrices"),
        (lambda p: jbp.feedback_alignment([p[0].W, p[0].W]), ValueError, r"matrix 2 \(B\^2\) has shape \(5, 4\), expected \(3, 5\)"),
        (lambda p: jbp.feedback_alignment([p[0].W, p[1].W.astype(jnp.float32)]), TypeError, r"matrix 2 \(B\^2\) is float32"),
        (lambda p: jbp.feedback_alignment([p[0].W, p[1].W.at[0, 0].set(jnp.nan)]), ValueError, "matrix 2 holds NaN"),
        (lambda p: jbp.feedback_alignment([p[0].W, np.ones((3, 5), int)]), TypeError, "matrix 2 must be floating point"),
        (lambda p: jbp.direct_feedback_alignment([np.ones((5, 2))]), ValueError, r"matrix 1 \(B\^1\) has shape \(5, 2\), expected \(5, 3\)"),
        (lambda p: jbp.direct_feedback_alignment([np.ones((5, 3)), np.ones((5, 3))]), ValueError, "dfa needs 1 matrices"),
        (lambda p: jbp.kolen_pollack([l.W for l in p], decay=1.0), ValueError, r"decay must lie in \[0, 1\)"),
        (lambda p: "fa", TypeError, "feedback must be a rule"),
    ],
)
def test_bad_rules_are_refused_before_compiling(rule, error, message):
    net = jbp.mlp([4, 5, 3], hidden="tanh", output="softmax")
    params = jbp.init(net, jax.random.key(0))
    before = jbp.batch._loss_and_grads._cache_size()
    with pytest.raises(error, match=message):
        jbp.loss_and_grads(net, params, np.ones((2, 4)), np.eye(3)[:2], "softmax_cross_entropy", feedback=rule(params))
    assert jbp.batch._loss_and_grads._cache_size() == before


def test_rules_from_the_command_line_resume_exactly(tmp_path):
    for rule in ("kp", "dfa"):
        common = ["--rule", rule, "--sizes", "64,32,32,10", "--no-progress"]
        assert main(["train", *common, "--epochs", "4", "--out", str(tmp_path / f"{rule}-straight")]) == 0
        assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / f"{rule}-split")]) == 0
        assert main(["train", "--resume", str(tmp_path / f"{rule}-split"), "--epochs", "4", "--no-progress"]) == 0
        with np.load(tmp_path / f"{rule}-straight" / "params.npz") as a, np.load(tmp_path / f"{rule}-split" / "params.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in a.files), rule
        lines = [json.loads(line) for line in (tmp_path / f"{rule}-split" / "metrics.jsonl").read_text().splitlines()]
        assert len(lines) == 4 and all(len(r["update_angles"]) == 3 for r in lines)
        assert ("feedback_angles" in lines[-1]) == (rule == "kp")
    run = jbp.load_run(tmp_path / "kp-split")
    assert run.feedback.kind == "kp" and not np.array_equal(run.feedback.matrices[1],
                                                            jbp.load_run(tmp_path / "dfa-split").params[1].W)
