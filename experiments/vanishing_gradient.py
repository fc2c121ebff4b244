"""Nielsen's vanishing gradient (Neural Networks and Deep Learning, chapter 5).

"Why are deep neural networks hard to train?": in a sigmoid network the
hidden layers learn at very different speeds, the ones near the input
slowest. Nielsen measures the speed of learning of hidden layer ``l`` as the
length of the gradient of the cost with respect to its biases,
``‖∂C/∂b^l‖ = ‖(1/m) Σ_i δ_i^l‖`` (BP3), over the first 1,000 training
images, for networks 784-30-30-10, 784-30-30-30-10 and 784-30-30-30-30-10
(his ``network2.py``: sigmoid layers, cross-entropy cost, weights drawn from
N(0, 1/n_in), biases from N(0, 1)). At initialization the book prints

    2 hidden layers   0.07   0.31
    3 hidden layers   0.012  0.060  0.283
    4 hidden layers   0.003  0.017  0.070  0.285

and then follows the same norms over training. His script
(``fig/generate_gradient.py``) trains on those 1,000 images for 500 epochs
with ``SGD(training_data, 1, 1000, 0.1, lmbda=5.0)``: each epoch is one step
on a minibatch of all 1,000 images, η = 0.1, λ = 5 (weight decay
``1 - ηλ/n``), and the norms are taken before each epoch.

Here the same measure comes from jbp's hand-written passes:
``jbp.loss_and_grads`` on the 1,000 images gives ``(1/m) Σ δ_i^l`` as each
layer's bias gradient, and the same call is the training step, so the
speed of learning at epoch ``e`` is the bias part of that epoch's gradient
(the L2 term touches the weights only). Every network is trained in one
compiled ``lax.scan`` over its epochs, ``jax.vmap`` over seeds.

Four variants (``--variants``), the last three showing what changes the picture:

- ``sigmoid-nielsen``: sigmoid, Nielsen's initialization (the book's setting);
- ``sigmoid-glorot4``: sigmoid, Glorot's uniform range times 4
  (``U(±4·sqrt(6/(n_in+n_out)))``, biases 0), the factor for sigmoid units
  of Bengio's group's tutorials after Glorot & Bengio (2010): it makes up
  for ``σ' ≤ 1/4``, so that BP2 no longer shrinks δ about four times a layer;
- ``relu-nielsen``: relu, Nielsen's initialization: ``σ' = 1`` wherever a
  unit is active;
- ``relu-he``: relu, He's initialization (N(0, 2/n_in), biases 0), which
  keeps the size of the signal, forwards and backwards, from layer to layer.

Data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``, pixels / 255 as
Nielsen's loader gives MNIST; the book used MNIST, not installable here),
or scikit-learn's digits (64 inputs) where it is missing or with
``--data digits``. Writes ``results/vanishing_gradient.json`` and ``.png``.
Run: ``python experiments/vanishing_gradient.py`` (one to two minutes on two
cores). A smoke run: ``--data digits --epochs 2 --train 100 --seeds 3
--train-seeds 1 --depths 4 --variants sigmoid-nielsen,relu-he``.
"""

import argparse
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp
from common import pyplot, save

BOOK = {2: [0.07, 0.31], 3: [0.012, 0.060, 0.283], 4: [0.003, 0.017, 0.070, 0.285]}
"""The speed of learning of each hidden layer at initialization, as the book prints it (MNIST)."""

LOSSES = {"cross-entropy": jbp.binary_cross_entropy, "quadratic": jbp.squared_error}


def _scaled(scale: float, mode: str, distribution: str):
    """A ``jax.nn.initializers`` variance-scaling initializer for jbp's ``(n_out, n_in)`` weights."""
    return jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis=-1, out_axis=-2)


def nielsen_init(net: jbp.MLP, key: jax.Array) -> tuple:
    """``network2.py``'s default: weights N(0, 1/n_in), biases N(0, 1)."""
    weight_key, bias_key = jax.random.split(key)
    params = jbp.init(net, weight_key, weight_init=_scaled(1.0, "fan_in", "normal"))
    bias_keys = jax.random.split(bias_key, net.depth)
    return tuple(jbp.Dense(W=layer.W, b=jax.random.normal(k, layer.b.shape, layer.b.dtype))
                 for layer, k in zip(params, bias_keys))


def glorot_times_4(net: jbp.MLP, key: jax.Array) -> tuple:
    """Weights U(±4 sqrt(6 / (n_in + n_out))) (variance 16 · 2/(n_in + n_out)), biases 0."""
    return jbp.init(net, key, weight_init=_scaled(16.0, "fan_avg", "uniform"))


def he_init(net: jbp.MLP, key: jax.Array) -> tuple:
    """Weights N(0, 2/n_in), biases 0 (He et al. 2015)."""
    return jbp.init(net, key, weight_init=_scaled(2.0, "fan_in", "normal"))


VARIANTS = {
    "sigmoid, Nielsen's init": (jbp.sigmoid, nielsen_init),
    "sigmoid, Glorot ×4 init": (jbp.sigmoid, glorot_times_4),
    "relu, Nielsen's init": (jbp.relu, nielsen_init),
    "relu, He init": (jbp.relu, he_init),
}
"""What is compared: the hidden activation and the initialization; the book's setting first."""

SHORT_NAMES = dict(zip(("sigmoid-nielsen", "sigmoid-glorot4", "relu-nielsen", "relu-he"), VARIANTS))
"""The names ``--variants`` takes."""

BOOK_VARIANT = next(iter(VARIANTS))


def speed_of_learning(grads: tuple) -> jax.Array:
    """``‖∂C/∂b^l‖`` of every hidden layer, from a gradient of ``jbp.loss_and_grads`` (BP3: ``∂C/∂b^l = δ^l``)."""
    return jnp.stack([jnp.linalg.norm(layer.b) for layer in grads[:-1]])


def train(net, params, X, Y, loss, epochs: int, eta: float, l2: float):
    """``epochs`` steps of gradient descent on all of ``X`` (Nielsen's epochs: one minibatch of 1,000).

    Each step's ``jbp.loss_and_grads`` gives both the update and the speed of
    learning before it, as ``generate_gradient.py`` records it. Returns the
    trained parameters, the cost ``J`` before each step, shape ``(epochs,)``,
    and the speeds, ``(epochs, hidden layers)``."""
    optimizer = optax.sgd(eta)

    def epoch(carry, _):
        params, state = carry
        J, grads = jbp.loss_and_grads(net, params, X, Y, loss, l2=l2)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), (J, speed_of_learning(grads))

    (params, _), (costs, speeds) = jax.lax.scan(epoch, (params, optimizer.init(params)), None, length=epochs)
    return params, costs, speeds


def accuracy(net, params, X, labels) -> jax.Array:
    """The fraction of rows whose largest output is their label."""
    return jnp.mean(jnp.argmax(jbp.predict(net, params, X), axis=1) == labels)


@partial(jax.jit, static_argnames=("net", "loss", "epochs", "trained"))
def experiment(net, params, X, Y, X_test, labels_test, loss, epochs, trained, eta, l2):
    """One network, every seed at once (``jax.vmap``), compiled as one program.

    ``params`` carry a leading seed axis. Returns the speed of learning at
    initialization for every seed and, for the first ``trained`` seeds
    trained for ``epochs``, the costs and speeds per epoch and the training
    and test accuracy at the end."""
    at_init = jax.vmap(lambda p: speed_of_learning(jbp.loss_and_grads(net, p, X, Y, loss)[1]))(params)

    def one_seed(params):
        params, costs, speeds = train(net, params, X, Y, loss, epochs, eta, l2)
        labels = jnp.argmax(Y, axis=1)
        return costs, speeds, accuracy(net, params, X, labels), accuracy(net, params, X_test, labels_test)

    first = jax.tree.map(lambda leaf: leaf[:trained], params)
    return (at_init, *jax.vmap(one_seed)(first))


def stacked(init, net: jbp.MLP, seeds: int) -> tuple:
    """The parameters ``init`` draws from ``jax.random.key(s)`` for every seed, on a leading seed axis.

    Drawn outside ``jit``: XLA compiles the random bits of one shape once, for every network."""
    draws = [init(net, jax.random.key(seed)) for seed in range(seeds)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *draws)


def load_data(name: str):
    """Fashion-MNIST where installed (or asked for), digits otherwise."""
    if name in ("auto", "fashion-mnist"):
        try:
            return jbp.data.fashion_mnist()
        except FileNotFoundError as err:
            if name == "fashion-mnist":
                raise SystemExit(str(err)) from None
            print(f"{err}; using scikit-learn's digits instead")
    return jbp.data.digits(standardize=False)  # pixels / 16 in [0, 1], as MNIST's are / 255


def four_digits(values) -> list[float]:
    """Numbers rounded to four significant digits, plenty for the curves kept in the JSON."""
    return [float(f"{v:.4g}") for v in values]


def run(data, activation, init, depth: int, args, loss) -> dict:
    X, Y = data.train.X[: args.train], data.train.Y[: args.train]
    net = jbp.mlp([X.shape[1]] + [30] * depth + [Y.shape[1]], hidden=activation, output=jbp.sigmoid)
    started = time.perf_counter()
    outputs = experiment(net, stacked(init, net, args.seeds), X, Y, data.test.X, data.test.labels, loss,
                         args.epochs, args.train_seeds, args.lr, args.l2)
    at_init, costs, speeds, train_accuracy, test_accuracy = map(np.asarray, outputs)
    seconds = time.perf_counter() - started
    curve = speeds.mean(axis=0)  # (epochs, hidden layers), mean over the training seeds
    every = max(1, args.epochs // 25)
    return {
        "sizes": list(net.sizes),
        "at_init_mean": at_init.mean(axis=0).tolist(),
        "at_init_std": at_init.std(axis=0).tolist(),
        "at_init_per_seed": at_init.tolist(),
        "at_init_ratio_first_to_last": float(np.mean(at_init[:, 0] / at_init[:, -1])),
        "training_epochs": list(range(0, args.epochs, every)),
        "training_speeds": [four_digits(row) for row in curve[::every]],
        "training_cost": four_digits(costs.mean(axis=0)[::every]),
        "last_epoch_speeds": curve[-1].tolist(),
        "last_epoch_ratio_first_to_last": float(curve[-1, 0] / curve[-1, -1]),
        "train_accuracy": float(train_accuracy.mean()),
        "test_accuracy": float(test_accuracy.mean()),
        "seconds_with_compiling": seconds,
        "_curve": curve,  # every epoch, for the plot; dropped from the JSON
    }


def plot(results: dict, args, data_name: str):
    """One row per variant: the speeds at initialization per layer, then one panel per depth over training.

    Every panel has the same logarithmic scale, so the spread of one row can be held against another's."""
    plt = pyplot()
    depths = sorted(next(iter(results.values())))
    fig, axes = plt.subplots(len(results), 1 + len(depths), figsize=(4.2 * (1 + len(depths)), 3.3 * len(results)),
                             squeeze=False, sharey=True)
    colours = ["#2A6EA6", "#FFA933", "#FF5555", "#55AA55"]  # the book's first colours, one per hidden layer
    for row, (variant, by_depth) in zip(axes, results.items()):
        ax = row[0]
        for depth, marker in zip(depths, "osD"):
            r = by_depth[depth]
            layers = np.arange(1, depth + 1)
            ax.errorbar(layers, r["at_init_mean"], yerr=r["at_init_std"], marker=marker, capsize=3,
                        label=f"{depth} hidden")
            if variant == BOOK_VARIANT:
                ax.plot(layers, BOOK[depth], marker=marker, linestyle="--", color="grey",
                        label=f"{depth} hidden, the book (MNIST)")
        ax.set(yscale="log", xlabel="hidden layer", ylabel=f"{variant}\n‖∂C/∂bˡ‖", xticks=range(1, 5),
               title=f"at initialization ({args.seeds} seeds, mean ± std)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        for ax, depth in zip(row[1:], depths):
            curve = by_depth[depth]["_curve"]
            for layer in range(depth):
                ax.plot(np.arange(len(curve)), curve[:, layer], color=colours[layer], label=f"hidden layer {layer + 1}")
            ax.set(yscale="log", xlabel="epoch", xlim=(0, max(1, len(curve) - 1)),
                   title=f"{depth} hidden layers, during training")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="best")
    axes[0, 0].set_ylim(5e-6, 3)
    fig.suptitle(f"Speed of learning ‖∂C/∂bˡ‖ of each hidden layer (Nielsen, chapter 5)\n{data_name}, the first "
                 f"{args.train} training images, {args.loss} cost, full-batch steps with η = {args.lr}, "
                 f"λ = {args.l2}; training curves are the mean of {args.train_seeds} seed(s)")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("auto", "fashion-mnist", "digits"), default="auto",
                        help="Fashion-MNIST where installed (auto), or scikit-learn's digits")
    parser.add_argument("--train", type=int, default=1000, help="training images (Nielsen: the first 1,000)")
    parser.add_argument("--epochs", type=int, default=500, help="full-batch epochs (Nielsen: 500)")
    parser.add_argument("--seeds", type=int, default=10, help="initializations measured at epoch 0")
    parser.add_argument("--train-seeds", type=int, default=3, help="of those, how many are trained")
    parser.add_argument("--lr", type=float, default=0.1, help="η (Nielsen: 0.1)")
    parser.add_argument("--l2", type=float, default=5.0, help="λ over the training images (Nielsen: 5)")
    parser.add_argument("--depths", default="2,3,4", help="numbers of hidden layers, from 2, 3, 4")
    parser.add_argument("--variants", default=",".join(SHORT_NAMES),
                        help=f"which to run, from {', '.join(SHORT_NAMES)} (all by default)")
    parser.add_argument("--loss", choices=tuple(LOSSES), default="cross-entropy",
                        help="the cost (Nielsen's network2: cross-entropy)")
    args = parser.parse_args(argv)
    if not 1 <= args.train_seeds <= args.seeds:
        parser.error("--train-seeds must be between 1 and --seeds")
    if args.epochs < 1 or args.train < 1:
        parser.error("--epochs and --train must be at least 1")
    try:
        depths = sorted({int(depth) for depth in args.depths.split(",")})
    except ValueError:
        parser.error(f"--depths takes numbers from 2, 3, 4 separated by commas, got {args.depths!r}")
    if not depths or not set(depths) <= set(BOOK):
        parser.error(f"--depths takes numbers from 2, 3, 4 separated by commas, got {args.depths!r}")

    variants = [SHORT_NAMES.get(name.strip()) for name in args.variants.split(",")]
    if None in variants:
        parser.error(f"--variants takes names from {', '.join(SHORT_NAMES)} separated by commas, got {args.variants!r}")

    data = load_data(args.data)
    args.train = min(args.train, len(data.train.X))
    loss = LOSSES[args.loss]
    print(f"{data.name}: the first {args.train} training images, {args.epochs} epochs of one step each")
    results = {}
    for variant in variants:
        activation, init = VARIANTS[variant]
        results[variant] = {}
        for depth in depths:
            r = results[variant][depth] = run(data, activation, init, depth, args, loss)
            book = f"   book: {BOOK[depth]}" if variant == BOOK_VARIANT else ""
            print(f"{variant:26} {depth} hidden: at init {np.round(r['at_init_mean'], 4).tolist()}{book}")
            print(f"{'':26}           last epoch {np.round(r['last_epoch_speeds'], 5).tolist()}, "
                  f"train accuracy {r['train_accuracy']:.3f}, test {r['test_accuracy']:.3f} "
                  f"({r['seconds_with_compiling']:.1f} s with compiling)")

    fig = plot(results, args, data.name)
    saved = {
        "data": data.name, "n_train": args.train, "epochs": args.epochs, "seeds_at_init": args.seeds,
        "seeds_trained": args.train_seeds, "lr": args.lr, "l2": args.l2, "loss": args.loss,
        "measure": "‖(1/m) Σ_i δ_i^l‖ = ‖∂C/∂b^l‖ over the training images, per hidden layer",
        "book_at_init_mnist": {f"{depth} hidden": v for depth, v in BOOK.items()},
        "variants": {
            variant: {f"{depth} hidden": {k: v for k, v in r.items() if not k.startswith("_")}
                      for depth, r in by_depth.items()}
            for variant, by_depth in results.items()
        },
    }
    save("vanishing_gradient", saved, fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
