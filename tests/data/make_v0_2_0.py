"""Writes what jbp 0.2.0 (commit c9b5a25) computes on fixed networks, in float64: the layer redesign
must reproduce every number bit for bit (tests/test_v0_2_0.py). Also writes a run folder and a
checkpoint from 0.2.0, which later versions must load, evaluate, predict and resume.

Run from the repository root with jbp 0.2.0 installed: ``python tests/data/make_v0_2_0.py``.
It is kept to show where the stored numbers came from; running it on a later version would only
overwrite 0.2.0's outputs with that version's.
"""

import pathlib
import subprocess
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jbp  # noqa: E402

HERE = pathlib.Path(__file__).parent
CASES = {  # name: (sizes, hidden, output, loss)
    "sigmoid_bce": ([4, 6, 5, 3], "sigmoid", "sigmoid", "binary_cross_entropy"),
    "tanh_softmax": ([5, 7, 4], "tanh", "softmax", "softmax_cross_entropy"),
    "relu_squared": ([3, 8, 6, 2], ["relu", "elu"], "identity", "squared_error"),
    "one_output": ([4, 5, 1], "softplus", "sigmoid", "binary_cross_entropy"),
}


def data(sizes, seed):
    kx, ky = jax.random.split(jax.random.key(seed))
    X = jax.random.normal(kx, (6, sizes[0]), jnp.float64)
    labels = jax.random.randint(ky, (6,), 0, max(sizes[-1], 2))
    Y = labels[:, None].astype(jnp.float64) if sizes[-1] == 1 else jax.nn.one_hot(labels, sizes[-1], dtype=jnp.float64)
    return X, Y


def flat(prefix, tree, out):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)


def outputs(name, sizes, hidden, output, loss, seed):
    out = {}
    net = jbp.mlp(sizes, hidden=hidden, output=output)
    params = jbp.init(net, jax.random.key(seed), dtype=jnp.float64)
    X, Y = data(sizes, seed + 100)
    flat("params", params, out)
    trace = jbp.forward(net, params, X[0])
    flat("forward", trace, out)
    flat("backward", jbp.backward(net, params, trace, Y[0], loss), out)
    flat("loss_and_grads", jbp.loss_and_grads(net, params, X, Y, loss, l2=0.3), out)
    flat("loss_and_grads_l2_0", jbp.loss_and_grads(net, params, X, Y, loss), out)
    out["cost"] = np.asarray(jbp.cost(net, params, X, Y, loss, l2=0.3))
    out["predict"] = np.asarray(jbp.predict(net, params, X))
    flat("per_example_grads", jbp.per_example_grads(net, params, X, Y, loss), out)
    out["per_example_grad_norms"] = np.asarray(jbp.per_example_grad_norms(net, params, X, Y, loss))
    names = ["grads", "sum_grad_squared", "grad_variance", "per_example_grad_gram", "per_example_grad_norms",
             "diag_ggn", "diag_ggn_mc", "kflr", "kfac"]
    flat("one_pass", jbp.one_pass(net, params, X, Y, loss, names, key=jax.random.key(7), samples=3), out)
    flat("clipped_grads", jbp.clipped_grads(net, params, X, Y, loss, max_norm=0.5), out)
    for rule in ("fa", "dfa", "sign", "kp"):
        feedback = jbp.feedback.by_name(rule, net, jax.random.key(seed + 1))
        flat(f"feedback_{rule}_matrices", feedback.matrices, out)
        flat(f"feedback_{rule}", jbp.loss_and_grads(net, params, X, Y, loss, l2=0.1, feedback=feedback), out)
    check = jbp.check_grads(net, params, X[:3], Y[:3], loss, l2=0.2)
    flat("check_grads_analytic", check.analytic, out)
    flat("check_grads_numerical", check.numerical, out)
    fits = {
        "fit": {},
        "fit_kp": {"feedback": jbp.feedback.by_name("kp", net, jax.random.key(5))},
        "fit_dp": {"privacy": jbp.dp_sgd(1.0, 0.8, key=jax.random.key(9), delta=1e-3)},
    }
    for label, extra in fits.items():
        result = jbp.fit(net, params, X, Y, loss=loss, optimizer=optax.adam(0.01), epochs=3, batch_size=4,
                         key=jax.random.key(3), l2=0.05, **extra)
        flat(label + "_params", result.params, out)
        if "feedback" in extra:
            flat(label + "_matrices", result.feedback.matrices, out)
        out[label + "_losses"] = np.asarray([record.get("loss", np.nan) for record in result.history])
    return out


def main():
    assert jbp.__version__ == "0.2.0", jbp.__version__
    arrays = {}
    for seed, (name, (sizes, hidden, output, loss)) in enumerate(CASES.items()):
        for key, value in outputs(name, sizes, hidden, output, loss, seed).items():
            arrays[f"{name}/{key}"] = value
    np.savez_compressed(HERE / "v0_2_0_outputs.npz", **arrays)
    run = HERE / "v0_2_0_run"
    subprocess.run([sys.executable, "-m", "jbp", "train", "--data", "xor", "--epochs", "20", "--seed", "3",
                    "--optimizer", "adam", "--lr", "0.05", "--out", str(run)], check=True)
    subprocess.run([sys.executable, "-m", "jbp", "train", "--data", "xor", "--epochs", "10", "--seed", "4",
                    "--optimizer", "adam", "--lr", "0.05", "--rule", "kp", "--out", str(run) + "_kp"], check=True)
    for folder in (run, pathlib.Path(str(run) + "_kp")):
        (folder / "plot.png").unlink()  # not read back; kept out of the repository
    print(f"{len(arrays)} arrays; run folders {run}, {run}_kp")


if __name__ == "__main__":
    main()
