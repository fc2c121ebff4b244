"""Peak memory of training on a large data set: 200,000 samples of 784 features.

Generates the data (float32 inputs, one-hot targets: 634 MB), then trains a
784-64-10 relu/softmax network for one epoch with ``jbp.fit`` (batch 256,
with an evaluation of the whole training set) and reports the process's peak
resident memory above what it used before the data existed, as a multiple of
the data's own size. Minibatches are gathered on the device from each epoch's
permutation and evaluation runs in chunks, so nothing of the size of the data
set is copied per step and nothing per-example is kept.

Run: ``python experiments/memory.py`` (``--samples`` to change the size).
Prints one JSON line.
"""

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp


def peak_rss_bytes() -> int:
    """The peak resident set size of this process image (VmHWM). Not
    getrusage's ru_maxrss, which a child inherits from the parent it was
    forked from."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=784)
    args = parser.parse_args(argv)

    net = jbp.mlp([args.features, 64, 10], hidden=jbp.relu, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    jax.block_until_ready(params)
    baseline = current_rss_bytes()

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.samples, args.features), dtype=np.float32)
    Y = np.asarray(jax.nn.one_hot(rng.integers(0, 10, args.samples), 10, dtype=jnp.float32))
    data_bytes = X.nbytes + Y.nbytes
    started = time.perf_counter()
    result = jbp.fit(net, params, X, Y, loss=jbp.softmax_cross_entropy, optimizer=optax.sgd(0.01),
                     epochs=1, batch_size=256, key=jax.random.key(1))
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    report = {
        "samples": args.samples, "features": args.features, "data_mb": data_bytes / 1e6,
        "baseline_mb": baseline / 1e6, "peak_mb": peak / 1e6,
        "peak_above_baseline_over_data": (peak - baseline) / data_bytes,
        "epoch_seconds": seconds, "loss": result.history[-1]["loss"],
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
