"""Coursera's ex4 gradient check (checkNNGradients), with jbp.

The course's set-up: 3 inputs, 5 hidden units, 3 outputs, 5 samples, sigmoid
layers and the regularized cross-entropy summed over the outputs
(``binary_cross_entropy``); weights and inputs from ``debugInitializeWeights``
(sin(1..n)/10, column-major, bias first), labels ``1 + mod(1:m, 3)``. For
λ = 0 and λ = 3 it prints the cost J, the backprop gradient beside the
central differences (ε = 1e-4) as the course's script does, and their
relative difference, in float64.

Writes results/coursera_ex4.json and .png. Run: ``python experiments/coursera_ex4.py``.
"""

import jax
import numpy as np

import jbp
from common import pyplot, save

INPUT, HIDDEN, LABELS, M = 3, 5, 3, 5


def main() -> int:
    results = {}
    with jax.enable_x64(True):
        layer1, _ = jbp.gradcheck.coursera_debug_weights(HIDDEN, INPUT)
        layer2, _ = jbp.gradcheck.coursera_debug_weights(LABELS, HIDDEN)
        _, X = jbp.gradcheck.coursera_debug_weights(M, INPUT - 1)
        labels = 1 + np.arange(1, M + 1) % LABELS  # the course's 1-based labels
        Y = jbp.data.one_hot(labels - 1, LABELS)
        net = jbp.mlp([INPUT, HIDDEN, LABELS], hidden=jbp.sigmoid, output=jbp.sigmoid)
        params = (layer1, layer2)
        for lam in (0.0, 3.0):
            J = float(jbp.cost(net, params, X, Y, jbp.binary_cross_entropy, l2=lam))
            check = jbp.check_grads(net, params, X, Y, jbp.binary_cross_entropy, l2=lam, eps=1e-4)
            # the course unrolls Theta1 then Theta2, each column-major with the bias column first
            unroll = lambda grads: np.concatenate([  # noqa: E731
                np.column_stack([np.asarray(g.b), np.asarray(g.W)]).ravel(order="F") for g in grads])
            numerical, analytic = unroll(check.numerical), unroll(check.analytic)
            print(f"\nλ = {lam:g}: cost J = {J:.6f}")
            print(f"{'numerical':>14} {'backprop':>14}")
            for n, a in zip(numerical, analytic):
                print(f"{n:14.10f} {a:14.10f}")
            print(f"relative difference: {check.relative_difference:.3e} (the course expects < 1e-9)")
            results[f"lambda={lam:g}"] = {"cost": J, "relative_difference": check.relative_difference,
                                          "numerical": numerical.tolist(), "backprop": analytic.tolist()}

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (name, r) in zip(axes, results.items()):
        numerical, analytic = np.array(r["numerical"]), np.array(r["backprop"])
        ax.bar(np.arange(len(analytic)), np.abs(analytic - numerical) + 1e-20, color="C0")
        ax.set(yscale="log", xlabel="parameter (the course's unrolled order)", ylabel="|backprop - finite differences|",
               title=f"{name.replace('lambda', 'λ')}: J = {r['cost']:.6f}, relative difference {r['relative_difference']:.1e}")
    fig.suptitle("checkNNGradients: 3-5-3 sigmoid network, 5 samples, float64, ε = 1e-4")
    save("coursera_ex4", results, fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
