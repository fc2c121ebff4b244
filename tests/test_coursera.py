"""Coursera ex4's checkNNGradients, reproduced: 3 inputs, 5 hidden, 3 outputs,
5 samples, sigmoid layers, the regularized cross-entropy cost, λ = 0 and 3.
jbp's gradient against central differences (jbp.check_grads) in float64."""

import jax.numpy as jnp
import numpy as np
import pytest

import jbp

INPUT, HIDDEN, LABELS, M = 3, 5, 3, 5


def debug_initialize_weights(fan_out, fan_in):
    """The course's debugInitializeWeights: sin(1..n)/10, filled column-major
    into a (fan_out, 1 + fan_in) matrix whose first column is the bias."""
    n = fan_out * (1 + fan_in)
    return np.sin(np.arange(1, n + 1)).reshape((fan_out, 1 + fan_in), order="F") / 10


def test_jbp_reproduces_debug_initialize_weights():
    for fan_out, fan_in in ((5, 3), (3, 5), (5, 2)):
        layer, theta = jbp.gradcheck.coursera_debug_weights(fan_out, fan_in)
        np.testing.assert_allclose(theta, debug_initialize_weights(fan_out, fan_in), rtol=0, atol=1e-16)
        np.testing.assert_array_equal(layer.b, theta[:, 0])
        np.testing.assert_array_equal(layer.W, theta[:, 1:])


def course_problem():
    theta1 = debug_initialize_weights(HIDDEN, INPUT)
    theta2 = debug_initialize_weights(LABELS, HIDDEN)
    X = debug_initialize_weights(M, INPUT - 1)  # (5, 3)
    y = 1 + np.arange(1, M + 1) % LABELS  # 1-based labels: 2 3 1 2 3
    Y = np.eye(LABELS)[y - 1]
    return theta1, theta2, X, Y


def nn_cost_function(theta1, theta2, X, Y, lam):
    """ex4's nnCostFunction, in numpy with the bias columns, as the course writes it."""
    m = X.shape[0]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    a1 = np.hstack([np.ones((m, 1)), X])
    a2 = np.hstack([np.ones((m, 1)), sigmoid(a1 @ theta1.T)])
    h = sigmoid(a2 @ theta2.T)
    J = -np.sum(Y * np.log(h) + (1 - Y) * np.log(1 - h)) / m
    return J + lam / (2 * m) * (np.sum(theta1[:, 1:] ** 2) + np.sum(theta2[:, 1:] ** 2))


def as_jbp(theta):
    return jbp.Dense(W=jnp.asarray(theta[:, 1:]), b=jnp.asarray(theta[:, 0]))


@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_check_nn_gradients(lam):
    theta1, theta2, X, Y = course_problem()
    net = jbp.mlp([INPUT, HIDDEN, LABELS], hidden=jbp.sigmoid, output=jbp.sigmoid)
    params = (as_jbp(theta1), as_jbp(theta2))

    J = jbp.cost(net, params, X, Y, jbp.binary_cross_entropy, l2=lam)
    np.testing.assert_allclose(J, nn_cost_function(theta1, theta2, X, Y, lam), rtol=1e-12)

    check = jbp.check_grads(net, params, X, Y, jbp.binary_cross_entropy, l2=lam)
    assert check.relative_difference < 1e-9, check.relative_difference
    for analytic, numerical in zip(check.analytic, check.numerical):
        np.testing.assert_allclose(analytic.W, numerical.W, atol=1e-9)
        np.testing.assert_allclose(analytic.b, numerical.b, atol=1e-9)


def test_the_course_printed_figures():
    """The first five entries of the gradient as the course's handout prints
    them for checkNNGradients (λ = 0), numerical and backprop columns alike."""
    theta1, theta2, X, Y = course_problem()
    check = jbp.check_grads(jbp.mlp([INPUT, HIDDEN, LABELS]), (as_jbp(theta1), as_jbp(theta2)), X, Y,
                            jbp.binary_cross_entropy)
    # unrolled as the course does: Theta1 column-major, bias column first
    first = np.column_stack([check.analytic[0].b, check.analytic[0].W]).ravel(order="F")[:5]
    np.testing.assert_allclose(first, [-9.2783e-03, 8.8991e-03, -8.3601e-03, 7.6281e-03, -6.7480e-03], atol=5e-8)


def test_a_wrong_gradient_is_caught():
    """The checker can fail: one entry off by 1e-4 moves the difference from ~2e-11 past 1e-6."""
    theta1, theta2, X, Y = course_problem()
    params = (as_jbp(theta1), as_jbp(theta2))
    net = jbp.mlp([INPUT, HIDDEN, LABELS])
    check = jbp.check_grads(net, params, X, Y, jbp.binary_cross_entropy)
    wrong = (check.analytic[0]._replace(W=check.analytic[0].W.at[2, 1].add(1e-4)), check.analytic[1])
    assert jbp.relative_difference(check.numerical, wrong) > 1e-6
