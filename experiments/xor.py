"""A 2-2-1 network learning XOR.

The smallest network that can represent XOR: two tanh hidden units and a
sigmoid output, cross-entropy cost, plain SGD (η = 0.5) on the four points,
2,000 epochs, from twenty random initializations. Some starts fall into the
well-known local minimum where one point stays misclassified; the script
counts how many solve it and plots the cost curves and the decision surface
of the first network that does.

Writes results/xor.json and .png. Run: ``python experiments/xor.py``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp
from common import pyplot, save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2000)
    args = parser.parse_args(argv)

    data = jbp.data.xor()
    X, Y = data.train.X, data.train.Y
    net = jbp.mlp([2, 2, 1], hidden=jbp.tanh, output=jbp.sigmoid)
    runs = []
    for seed in range(args.seeds):
        init_key, shuffle_key = jax.random.split(jax.random.key(seed))
        result = jbp.fit(net, jbp.init(net, init_key), X, Y, loss=jbp.binary_cross_entropy,
                         optimizer=optax.sgd(0.5), epochs=args.epochs, batch_size=4, key=shuffle_key)
        outputs = np.asarray(jbp.predict(net, result.params, X)).ravel()
        solved = bool(np.all((outputs > 0.5) == (Y.ravel() > 0.5)))
        runs.append({"seed": seed, "solved": solved, "outputs": outputs.tolist(),
                     "costs": [r["loss"] for r in result.history], "params": result.params})
        print(f"seed {seed:2}: outputs {[f'{o:.3f}' for o in outputs]}  {'solved' if solved else 'stuck'}")
    solved = [r for r in runs if r["solved"]]
    print(f"{len(solved)} of {len(runs)} initializations solve XOR")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in runs:
        axes[0].plot(r["costs"], color="C0" if r["solved"] else "C3", alpha=0.6, lw=1)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy (mean per sample)", yscale="log",
                title=f"{len(solved)} of {len(runs)} starts solve it (blue); red: stuck")
    if solved:
        grid = np.linspace(-0.25, 1.25, 121)
        xx, yy = np.meshgrid(grid, grid)
        surface = jbp.predict(net, solved[0]["params"], jnp.asarray(np.c_[xx.ravel(), yy.ravel()], jnp.float32))
        image = axes[1].contourf(xx, yy, np.asarray(surface).reshape(xx.shape), levels=20, cmap="RdBu_r")
        fig.colorbar(image, ax=axes[1], label="network output a")
        axes[1].scatter(X[:, 0], X[:, 1], c=Y.ravel(), cmap="RdBu_r", edgecolors="k", s=120)
        axes[1].set(xlabel="x1", ylabel="x2", title=f"decision surface, seed {solved[0]['seed']}")
    fig.suptitle("2-2-1 network (tanh hidden, sigmoid output) on XOR, SGD η = 0.5")
    for r in runs:  # keep the file small: the final parameters, and the cost every 50 epochs
        r["params"] = [{"W": np.asarray(layer.W).tolist(), "b": np.asarray(layer.b).tolist()} for layer in r["params"]]
        r["costs_every_50_epochs"] = r.pop("costs")[49::50]
    save("xor", {"epochs": args.epochs, "solved": len(solved), "runs": runs}, fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
