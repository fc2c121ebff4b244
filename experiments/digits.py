"""Sigmoid, tanh and relu networks on the bundled digits, quadratic cost
against cross-entropy.

A 64-64-10 network with sigmoid outputs trained with the quadratic cost
(``squared_error``, BP1 through σ') and with the cross-entropy
(``binary_cross_entropy``, the fused δ = a - y), as Nielsen compares them in
chapter 3; softmax outputs with ``softmax_cross_entropy`` are shown beside.
Plain SGD, batch 32, 30 epochs. For every (activation, cost) pair the learning
rate is chosen from a small grid by the mean validation accuracy over three
seeds; the test accuracy of that choice is reported (mean and spread over
the seeds). The test set is never used to choose anything.

Writes results/digits.json and .png. Run: ``python experiments/digits.py``
(``--quick`` for a short smoke run).
"""

import argparse
import itertools

import jax
import numpy as np
import optax

import jbp
from common import pyplot, save

HIDDEN = ("sigmoid", "tanh", "relu")
COSTS = {
    "quadratic (sigmoid out)": ("sigmoid", "squared_error"),
    "cross-entropy (sigmoid out)": ("sigmoid", "binary_cross_entropy"),
    "softmax cross-entropy": ("softmax", "softmax_cross_entropy"),
}


def run(data, hidden, output, loss, lr, seed, epochs, width):
    net = jbp.mlp([64, width, 10], hidden=hidden, output=output)
    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    result = jbp.fit(net, jbp.init(net, init_key), data.train.X, data.train.Y, loss=loss,
                     optimizer=optax.sgd(lr), epochs=epochs, batch_size=32, key=shuffle_key,
                     validation=(data.validation.X, data.validation.Y))
    test = jbp.evaluate(net, result.params, data.test.X, data.test.Y, loss)["accuracy"]
    return [r["val_accuracy"] for r in result.history], test


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two rates, 3 epochs")
    args = parser.parse_args(argv)
    rates, seeds, epochs, width = ([0.1, 1.0], [0], 3, 16) if args.quick else ([0.03, 0.1, 0.3, 1.0], [0, 1, 2], 30, 64)
    data = jbp.data.digits()

    table = {}
    for hidden, (cost_name, (output, loss)) in itertools.product(HIDDEN, COSTS.items()):
        trials = {lr: [run(data, hidden, output, loss, lr, s, epochs, width) for s in seeds] for lr in rates}
        best = max(rates, key=lambda lr: np.mean([curve[-1] for curve, _ in trials[lr]]))
        tests = [test for _, test in trials[best]]
        table[f"{hidden} | {cost_name}"] = {
            "hidden": hidden, "cost": cost_name, "learning_rate": best,
            "validation_accuracy": float(np.mean([curve[-1] for curve, _ in trials[best]])),
            "test_accuracy_mean": float(np.mean(tests)), "test_accuracy_std": float(np.std(tests)),
            "validation_curve": np.mean([curve for curve, _ in trials[best]], axis=0).tolist(),
            "all_rates": {str(lr): float(np.mean([c[-1] for c, _ in trials[lr]])) for lr in rates},
        }
        row = table[f"{hidden} | {cost_name}"]
        print(f"{hidden:8} {cost_name:28} η = {best:<5} validation {row['validation_accuracy']:.3f}  "
              f"test {row['test_accuracy_mean']:.3f} ± {row['test_accuracy_std']:.3f}")

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    x = np.arange(len(HIDDEN))
    for i, cost_name in enumerate(COSTS):
        rows = [table[f"{h} | {cost_name}"] for h in HIDDEN]
        axes[0].bar(x + (i - 1) * 0.27, [r["test_accuracy_mean"] for r in rows], 0.27,
                    yerr=[r["test_accuracy_std"] for r in rows], label=cost_name)
        for h in HIDDEN:
            axes[1].plot(range(1, epochs + 1), table[f"{h} | {cost_name}"]["validation_curve"],
                         color=f"C{i}", linestyle={"sigmoid": "-", "tanh": "--", "relu": ":"}[h],
                         label=f"{h}, {cost_name}")
    axes[0].set(xticks=x, xticklabels=HIDDEN, ylabel="test accuracy", ylim=(0.9, 1.0),
                title=f"test accuracy (mean ± std over {len(seeds)} seeds, best η on validation)")
    axes[0].legend(loc="upper center", ncol=3, fontsize=8)
    axes[1].set(xlabel="epoch", ylabel="validation accuracy", ylim=(0.6, 1.0), title="validation accuracy per epoch")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(f"digits, 64-{width}-10, SGD, batch 32, {epochs} epochs")
    save("digits_quick" if args.quick else "digits", {"epochs": epochs, "seeds": seeds, "rates": rates, "results": table}, fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
