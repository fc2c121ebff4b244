"""Shapes that do not fit the network are refused at the call, with a
ValueError (or TypeError) that names the layer and the shapes expected and
found, before anything is traced or compiled."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp

NET = jbp.mlp([2, 3, 2], hidden=jbp.tanh, output=jbp.softmax)
PARAMS = jbp.init(NET, jax.random.key(0))
X = np.ones((4, 2))
Y = np.tile([1.0, 0.0], (4, 1))


def test_a_3_vector_into_a_2_input_network():
    with pytest.raises(ValueError, match=re.escape("x must be one sample of shape (2,)")) as err:
        jbp.forward(NET, PARAMS, jnp.ones(3))
    assert "got shape (3,)" in str(err.value)


def test_a_batch_into_the_per_sample_forward_is_pointed_to_vmap():
    with pytest.raises(ValueError, match="jax.vmap"):
        jbp.forward(NET, PARAMS, X)


def test_Y_of_the_wrong_width():
    with pytest.raises(ValueError, match=re.escape("Y must have shape (m, 2)")) as err:
        jbp.loss_and_grads(NET, PARAMS, X, np.ones((4, 3)), jbp.softmax_cross_entropy)
    assert "got shape (4, 3)" in str(err.value)


def test_X_and_Y_with_different_row_counts():
    with pytest.raises(ValueError, match="same number of rows") as err:
        jbp.loss_and_grads(NET, PARAMS, X, Y[:3], jbp.softmax_cross_entropy)
    assert "(4, 2)" in str(err.value) and "(3, 2)" in str(err.value)


def test_X_of_the_wrong_width_in_a_batch():
    with pytest.raises(ValueError, match=re.escape("X must have shape (m, 2)")):
        jbp.per_example_grads(NET, PARAMS, np.ones((4, 5)), Y, jbp.softmax_cross_entropy)


def test_params_from_another_network_name_the_layer_and_shapes():
    other = jbp.init(jbp.mlp([2, 4, 2]), jax.random.key(1))
    with pytest.raises(ValueError) as err:
        jbp.loss_and_grads(NET, other, X, Y, jbp.softmax_cross_entropy)
    message = str(err.value)
    assert "layer 1" in message and "(4, 2)" in message and "(3, 2)" in message


def test_params_with_too_many_layers():
    deeper = jbp.init(jbp.mlp([2, 3, 3, 2]), jax.random.key(1))
    with pytest.raises(ValueError, match="params have 3 layers, the network \\[2, 3, 2\\] has 2"):
        jbp.forward(NET, deeper, jnp.ones(2))


def test_a_bias_of_the_wrong_shape():
    bad = (PARAMS[0]._replace(b=jnp.zeros(4)), PARAMS[1])
    with pytest.raises(ValueError, match=re.escape("layer 1: b has shape (4,), expected (3,)")):
        jbp.predict(NET, bad, X)


def test_backward_with_a_target_of_the_wrong_width():
    trace = jbp.forward(NET, PARAMS, jnp.ones(2))
    with pytest.raises(ValueError, match=re.escape("y must be one sample of shape (2,)")):
        jbp.backward(NET, PARAMS, trace, jnp.ones(3), jbp.softmax_cross_entropy)


def test_backward_with_a_trace_of_another_network():
    other_net = jbp.mlp([2, 4, 2])
    trace = jbp.forward(other_net, jbp.init(other_net, jax.random.key(1)), jnp.ones(2))
    with pytest.raises(ValueError, match=re.escape("trace layer 1: z has shape (4,), expected (3,)")):
        jbp.backward(NET, PARAMS, trace, jnp.ones(2), jbp.softmax_cross_entropy)


def test_an_empty_batch():
    with pytest.raises(ValueError, match="empty batch"):
        jbp.loss_and_grads(NET, PARAMS, np.ones((0, 2)), np.ones((0, 2)), jbp.softmax_cross_entropy)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: jbp.mlp([784]), "input and output widths"),
        (lambda: jbp.mlp([3, 0, 2]), "positive integer"),
        (lambda: jbp.mlp([3, 4, 4, 2], hidden=[jbp.relu]), "2 hidden layers, but 1"),
        (lambda: jbp.mlp([3, 2], output="sigmoidd"), "unknown activation 'sigmoidd'; expected one of sigmoid, tanh"),
        (lambda: jbp.loss_and_grads(NET, PARAMS, X, Y, "cross_entropy"), "unknown loss 'cross_entropy'; expected one of"),
    ],
)
def test_bad_descriptions(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_not_a_network():
    with pytest.raises(TypeError, match="jbp.mlp"):
        jbp.forward([2, 3, 2], PARAMS, jnp.ones(2))


def test_errors_come_before_compilation():
    """A refused call leaves nothing compiled: the error is raised in Python, first."""
    before = jbp.batch._loss_and_grads._cache_size()
    with pytest.raises(ValueError):
        jbp.loss_and_grads(NET, PARAMS, X, Y[:, :1], jbp.softmax_cross_entropy)
    assert jbp.batch._loss_and_grads._cache_size() == before


def test_integer_inputs_are_cast_to_the_parameters_dtype():
    J_int, grads_int = jbp.loss_and_grads(NET, PARAMS, np.ones((4, 2), dtype=np.int32), Y.astype(np.int8), "softmax_cross_entropy")
    J, grads = jbp.loss_and_grads(NET, PARAMS, X, Y, "softmax_cross_entropy")
    assert J_int.dtype == PARAMS[0].W.dtype
    np.testing.assert_array_equal(J_int, J)
