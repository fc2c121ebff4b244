"""jbp.check_grads layer by layer, and `jbp gradcheck`'s table and exit status.

A correct network is right in every layer; a hand-written derivative that is
wrong (a user's activation, as jbp.elementwise allows) is found wrong in the
layer that uses it and every layer below it (BP2 carries the error down), and
right above it. Which layers must be wrong is decided here from the chain
rule's structure and checked against jax.grad of the independent reference,
not read from the code under test."""

import jax.numpy as jnp
import numpy as np
import pytest

import jbp
import jbp.activations
import reference as ref
from jbp.cli import main
from jbp.gradcheck import GradCheck, LayerCheck, verdict

SIZES = (3, 4, 4, 2)
# tanh with a derivative twice too large: σ'(z) = 2 (1 - a²). Its forward pass is right.
bad_tanh = jbp.elementwise("bad_tanh", jnp.tanh, lambda z, a: 2 * (1 - a**2))


def problem(seed=0, loss="softmax_cross_entropy", m=5):
    params, X, Y = ref.random_problem(seed, SIZES, loss, m)
    return tuple(jbp.Dense(jnp.asarray(W), jnp.asarray(b)) for W, b in params), jnp.asarray(X), jnp.asarray(Y)


def reference_grads(params, X, Y, names, loss):
    """jax.grad of the reference network, written with plain jnp formulas."""
    _, grads = ref.value_and_grad(tuple((p.W, p.b) for p in params), X, Y, names, loss, 0.0)
    return grads


@pytest.mark.parametrize("hidden, output, loss", [
    (("tanh", "elu"), "softmax", "softmax_cross_entropy"),
    (("sigmoid", "softplus"), "sigmoid", "binary_cross_entropy"),
    (("leaky_relu", "tanh"), "identity", "squared_error"),
])
def test_a_correct_network_is_right_in_every_layer(hidden, output, loss):
    params, X, Y = problem(1, loss)
    check = jbp.check_grads(jbp.mlp(SIZES, hidden=list(hidden), output=output), params, X, Y, loss)
    assert [c.name for c in check.layers] == ["layer 1 W", "layer 1 b", "layer 2 W", "layer 2 b",
                                               "layer 3 W", "layer 3 b"]
    assert all(c.verdict == "right" and c.relative_difference < 1e-7 for c in check.layers), check.layers
    assert check.wrong == () and check.verdict == "right"
    # the numerical gradient, the check's yardstick, agrees with autodiff of the reference too
    expected = reference_grads(params, X, Y, hidden + (output,), loss)
    for numerical, (W, b) in zip(check.numerical, expected):
        np.testing.assert_allclose(numerical.W, W, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(numerical.b, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("broken_layer", [1, 2])
def test_a_wrong_derivative_is_wrong_in_its_layer_and_below_only(broken_layer):
    hidden = [bad_tanh if l == broken_layer else "tanh" for l in (1, 2)]
    net = jbp.mlp(SIZES, hidden=hidden, output="softmax")
    params, X, Y = problem(2)
    check = jbp.check_grads(net, params, X, Y, "softmax_cross_entropy")
    # what autodiff of the true network says: backprop through the bad derivative departs from it in the
    # broken layer and the layers below, and agrees above
    expected = reference_grads(params, X, Y, ("tanh", "tanh", "softmax"), "softmax_cross_entropy")
    for l, (analytic, (W, b)) in enumerate(zip(check.analytic, expected), 1):
        agrees = np.allclose(analytic.W, W, rtol=1e-8, atol=1e-12) and np.allclose(analytic.b, b, rtol=1e-8, atol=1e-12)
        assert agrees == (l > broken_layer), l
    verdicts = {c.name: c.verdict for c in check.layers}
    for l in (1, 2, 3):
        for field in "Wb":
            assert verdicts[f"layer {l} {field}"] == ("wrong" if l <= broken_layer else "right"), (l, verdicts)
    assert check.wrong == tuple(f"layer {l} {f}" for l in range(1, broken_layer + 1) for f in "Wb")
    # a derivative twice too large doubles δ in the broken layer and below: ‖n - 2n‖ / ‖n + 2n‖ = 1/3
    for c in check.layers:
        if c.layer <= broken_layer:
            assert abs(c.relative_difference - 1 / 3) < 1e-6, c


def test_verdicts_follow_the_usual_reading():
    assert [verdict(r) for r in (0.0, 9e-8, 2e-7, 9e-5, 2e-4, 9e-3, 2e-2, 1.0, float("inf"), float("nan"))] == [
        "right", "right", "marginal", "marginal", "suspicious", "suspicious", "wrong", "wrong", "wrong", "wrong"]


def test_the_result_keeps_its_old_fields():
    params, X, Y = problem(3)
    check = jbp.check_grads(jbp.mlp(SIZES, hidden="tanh", output="softmax"), params, X, Y, "softmax_cross_entropy")
    assert check[:3] == (check.relative_difference, check.analytic, check.numerical)
    old = GradCheck(check.relative_difference, check.analytic, check.numerical)  # built as before
    assert old.layers == () and old.wrong == ()
    assert all(isinstance(c, LayerCheck) for c in check.layers)


def table_rows(out):
    """name → (relative error, verdict) from the printed table."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[-1] in ("right", "marginal", "suspicious", "wrong") and parts[0] in (
                "layer", "whole"):
            name = " ".join(parts[:-3])
            rows[name] = (float(parts[-3]), parts[-1])
    return rows


def test_the_command_prints_a_table_and_passes(capsys):
    assert main(["gradcheck", "--sizes", "3,4,4,2", "--hidden", "tanh,elu", "--output", "softmax",
                 "--loss", "softmax_cross_entropy"]) == 0
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == ["layer 1 W", "layer 1 b", "layer 2 W", "layer 2 b", "layer 3 W", "layer 3 b", "whole"]
    assert all(v == "right" and r < 1e-7 for r, v in rows.values()), rows
    assert "above 1e-2: wrong" in out and "1e-4 to 1e-2: suspicious" in out and "below 1e-7: right" in out
    assert "1e-7 to 1e-4: fine in float32" in out


def test_the_command_exits_1_and_names_the_wrong_layers(monkeypatch, capsys):
    monkeypatch.setitem(jbp.activations.ACTIVATIONS, "bad_tanh", bad_tanh)
    status = main(["gradcheck", "--sizes", "3,4,4,2", "--hidden", "tanh,bad_tanh", "--output", "softmax",
                   "--loss", "softmax_cross_entropy", "--tolerance", "1"])  # the whole passes; layers do not
    out = capsys.readouterr().out
    assert status == 1
    rows = table_rows(out)
    assert {name for name, (_, v) in rows.items() if v == "wrong"} == {"layer 1 W", "layer 1 b", "layer 2 W",
                                                                      "layer 2 b", "whole"}
    assert rows["layer 3 W"][1] == rows["layer 3 b"][1] == "right"
    assert "wrong: layer 1 W, layer 1 b, layer 2 W, layer 2 b" in out
