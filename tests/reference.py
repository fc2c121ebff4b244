"""An independent reference: the same network written as plain jnp formulas,
differentiated by JAX's autodiff. Nothing here calls jbp's passes; only the
names of activations and losses are shared."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "sigmoid": lambda z: 1 / (1 + jnp.exp(-z)),
    "tanh": jnp.tanh,
    "relu": lambda z: jnp.maximum(z, 0),
    "leaky_relu": lambda z: jnp.where(z > 0, z, 0.01 * z),
    "softplus": lambda z: jnp.log1p(jnp.exp(z)),
    "elu": lambda z: jnp.where(z > 0, z, jnp.exp(z) - 1),
    "identity": lambda z: z,
    "softmax": lambda z: jnp.exp(z - z.max(-1, keepdims=True))
    / jnp.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True),
}

LOSSES = {
    "squared_error": lambda a, y: 0.5 * jnp.sum((y - a) ** 2, axis=-1),
    "binary_cross_entropy": lambda a, y: -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log(1 - a), axis=-1),
    "softmax_cross_entropy": lambda a, y: -jnp.sum(y * jnp.log(a), axis=-1),
}

# The output activations on whose range each loss is defined (cross-entropies
# take logarithms of outputs that must lie in (0, 1); softplus outputs exceed 1,
# where -y log a turns negative). Every activation serves as a hidden one with
# every loss.
OUTPUTS_FOR_LOSS = {
    "squared_error": tuple(ACTIVATIONS),
    "binary_cross_entropy": ("sigmoid", "softmax"),
    "softmax_cross_entropy": ("sigmoid", "softmax"),
}


def forward(params, X, names):
    """The network's output for a batch X of shape (m, n_0): a = σ(X W^T + b)."""
    a = X
    for (W, b), name in zip(params, names):
        a = ACTIVATIONS[name](a @ W.T + b)
    return a


def cost(params, X, Y, names, loss, l2):
    """Coursera's J = mean_i C_i + l2/(2m) Σ ||W||²."""
    m = X.shape[0]
    data = jnp.mean(LOSSES[loss](forward(params, X, names), Y))
    return data + l2 / (2 * m) * sum(jnp.sum(W**2) for W, _ in params)


@partial(jax.jit, static_argnames=("names", "loss"))
def value_and_grad(params, X, Y, names, loss, l2):
    return jax.value_and_grad(cost)(params, X, Y, names, loss, l2)


@partial(jax.jit, static_argnames=("names", "loss"))
def per_example_grads(params, X, Y, names, loss):
    def sample_cost(p, x, y):
        return LOSSES[loss](forward(p, x[None], names), y[None])[0]

    return jax.vmap(jax.grad(sample_cost), in_axes=(None, 0, 0))(params, X, Y)


def random_problem(seed, sizes, loss, m):
    """Parameters (tuples (W, b), nonzero biases), inputs and valid targets."""
    rng = np.random.default_rng(seed)
    params = tuple(
        (rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), 0.5 * rng.normal(size=n_out))
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    )
    X = rng.normal(size=(m, sizes[0]))
    n_out = sizes[-1]
    if loss == "squared_error":
        Y = rng.normal(size=(m, n_out))
    elif loss == "binary_cross_entropy":
        Y = rng.uniform(size=(m, n_out))
    else:  # a probability vector per row
        Y = rng.dirichlet(np.ones(n_out), size=m)
    return params, X, Y


def assert_close(actual, expected, rtol=1e-10):
    """Elementwise |actual - expected| <= rtol (|expected| + max|expected|) on every
    leaf: relative to each entry, with a floor at rtol times the leaf's largest
    magnitude so that entries that cancel to nearly zero do not demand more
    than float64 can give."""
    actual_leaves = jax.tree.leaves(actual)
    expected_leaves = jax.tree.leaves(expected)
    assert len(actual_leaves) == len(expected_leaves)
    for got, want in zip(actual_leaves, expected_leaves):
        chex.assert_equal_shape((got, want))
        chex.assert_tree_all_finite(got)
        scale = float(np.max(np.abs(want))) if np.size(want) else 0.0
        chex.assert_trees_all_close(got, want, rtol=rtol, atol=rtol * scale)
