"""Nielsen's learning slowdown (Neural Networks and Deep Learning, chapter 3).

One sigmoid neuron, input 1, target 0, trained for 300 epochs from a good
start (w = 0.6, b = 0.9) and a bad one (w = 2, b = 2), with the quadratic cost
(η = 0.15) and with the cross-entropy (η = 0.005), the book's rates.

With the quadratic cost BP1 keeps the factor σ'(z) = a(1 - a), which is tiny
when the neuron starts saturated at a ≈ 0.98: from the bad start the cost
hardly moves for the first ~100 epochs. With the cross-entropy the factor
cancels (δ = a - y) and the bad start learns at once, fastest where it is
most wrong. jbp shows both because sigmoid + squared_error goes through BP1
as written, while sigmoid + binary_cross_entropy is a fused canonical pair.

Writes results/learning_slowdown.json and .png. Run:
``python experiments/learning_slowdown.py``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp
from common import pyplot, save

STARTS = {"good start (w = 0.6, b = 0.9)": (0.6, 0.9), "bad start (w = 2, b = 2)": (2.0, 2.0)}
COSTS = {"quadratic, η = 0.15": (jbp.squared_error, 0.15), "cross-entropy, η = 0.005": (jbp.binary_cross_entropy, 0.005)}


def train(w: float, b: float, loss, eta: float, epochs: int):
    """Cost after each epoch (epoch 0 first) and the output a at the end."""
    net = jbp.mlp([1, 1], hidden=(), output=jbp.sigmoid)
    params = (jbp.Dense(W=jnp.array([[w]]), b=jnp.array([b])),)
    X, Y = np.ones((1, 1)), np.zeros((1, 1))
    result = jbp.fit(net, params, X, Y, loss=loss, optimizer=optax.sgd(eta), epochs=epochs,
                     batch_size=1, key=jax.random.key(0))
    costs = [float(jbp.cost(net, params, X, Y, loss))] + [r["loss"] for r in result.history]
    return costs, float(jbp.predict(net, result.params, X)[0, 0])


def epochs_to_halve(costs):
    """The first epoch at which the cost is half its starting value, or None."""
    below = np.flatnonzero(np.asarray(costs) <= costs[0] / 2)
    return int(below[0]) if below.size else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=300)
    args = parser.parse_args(argv)

    runs = {}
    for start, (w, b) in STARTS.items():
        for cost_name, (loss, eta) in COSTS.items():
            costs, output = train(w, b, loss, eta, args.epochs)
            runs[f"{cost_name} | {start}"] = {
                "costs": costs, "final_output": output, "epochs_to_halve_cost": epochs_to_halve(costs),
                "relative_drop_in_first_50_epochs": 1 - costs[min(50, args.epochs)] / costs[0],
            }
            print(f"{cost_name:26} {start:30} cost {costs[0]:.4f} → {costs[-1]:.4f}, "
                  f"{runs[f'{cost_name} | {start}']['relative_drop_in_first_50_epochs']:.1%} of it lost in 50 epochs, "
                  f"halved after {epochs_to_halve(costs)}, final output a = {output:.3f}")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, cost_name in zip(axes, COSTS):
        for start in STARTS:
            ax.plot(runs[f"{cost_name} | {start}"]["costs"], label=start)
        ax.set(title=cost_name, xlabel="epoch", ylabel="cost")
        ax.legend()
    fig.suptitle("One sigmoid neuron, input 1, target 0 (Nielsen, chapter 3)")
    save("learning_slowdown", {"epochs": args.epochs, "runs": runs}, fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
