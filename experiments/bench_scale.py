"""Scale and waste: devices, low precision, fit against a bare scan, compile times, a roofline.

Five measurements of the 784-512-512-10 network of ``bench.py`` (sigmoid
hidden layers, softmax cross-entropy), each against a baseline timed in the
same process, interleaved, medians:

1. **Devices**: a ``jbp.fit`` epoch on a mesh of 1, 2, 4 and 8 devices (on a
   CPU host, XLA's simulated devices share the same cores: this checks that
   the mesh is right and what it costs, not a speed-up), and the largest
   difference of the parameters from one device's after two epochs.
2. **Low precision**: one training step (forward, backward, SGD) in
   float32, bfloat16 and float16, jbp against the same step written with
   ``jax.value_and_grad``.
3. **No waste per epoch**: a ``fit`` epoch (with ``eval_every=0``) against
   the bare compiled scan of the same steps, written by hand.
4. **Compile time**: ``fit``'s epoch program against a hand-written
   autodiff scan of the same steps: ``lower`` + ``compile``.
5. **Roofline**: the fraction of this device's matmul peak (a large float32
   matmul, measured) that a step reaches per batch size; the bytes of the one
   all-reduce a data parallel step needs; and the speed-up they predict for 8
   and 64 devices at given bandwidths (ring all-reduce):
   ``T_N = T_1(B/N) + 2 (N-1)/N · bytes / bandwidth``, speed-up ``T_1(B) / T_N``.

Run: ``python experiments/bench_scale.py`` (``--quick`` for a smoke run).
Writes ``results/bench_scale.json``. Runs unchanged on a GPU (prints the device).
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jbp  # noqa: E402
from bench import LEARNING_RATE, autodiff_cost, machine, make_steps  # noqa: E402
from common import RESULTS, write_json  # noqa: E402
from jbp import epochs  # noqa: E402

SIZES = [784, 512, 512, 10]


def problem(n, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(n, SIZES[0])).astype(np.float32)
    Y = np.eye(SIZES[-1], dtype=np.float32)[rng.integers(0, SIZES[-1], n)]
    return jnp.asarray(X, dtype), jnp.asarray(Y, dtype)


def net_params(dtype=jnp.float32):
    net = jbp.mlp(SIZES, hidden=jbp.sigmoid, output=jbp.softmax)
    return net, jbp.init(net, jax.random.key(0), dtype=dtype)


def median_rounds(variants: dict, rounds: int) -> dict:
    """Each variant timed once per round, in turn; the median seconds of each."""
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def devices_table(n, batch, rounds):
    net, params = net_params()
    X, Y = problem(n)
    kw = dict(loss=jbp.softmax_cross_entropy, optimizer=optax.sgd(LEARNING_RATE), batch_size=batch,
              key=jax.random.key(1), eval_every=0)
    reference = jbp.fit(net, params, X, Y, epochs=2, **kw).params
    rows, variants = [], {}
    for count in (1, 2, 4, 8):
        if count > len(jax.devices()):
            break
        mesh = None if count == 1 else jax.make_mesh((count,), ("batch",), devices=jax.devices()[:count])
        trained = jbp.fit(net, params, X, Y, epochs=2, mesh=mesh, **kw).params  # compiles, too
        gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(reference)))
        variants[count] = lambda mesh=mesh: jbp.fit(net, params, X, Y, epochs=1, mesh=mesh, **kw)
        rows.append({"devices": count, "max_param_difference": gap})
    seconds = median_rounds(variants, rounds)
    for row in rows:
        row["epoch_s"] = seconds[row["devices"]]
        row["ratio_to_one_device"] = seconds[row["devices"]] / seconds[1]
    return rows


def precision_table(batches, rounds, steps):
    rows = []
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        net, params = net_params(dtype)
        steps_of = make_steps(net)
        jbp_step, autodiff_step = steps_of["jbp"], steps_of["autodiff"]

        for batch in batches:
            X, Y = problem(batch, dtype)
            for step in (jbp_step, autodiff_step):
                jax.block_until_ready(step(params, X, Y))

            def run(step):
                def go():
                    p = params
                    for _ in range(steps):
                        p, loss = step(p, X, Y)
                    jax.block_until_ready(p)
                return go

            seconds = median_rounds({"jbp": run(jbp_step), "autodiff": run(autodiff_step)}, rounds)
            rows.append({"dtype": jnp.dtype(dtype).name, "batch": batch, "jbp_ms": 1e3 * seconds["jbp"] / steps,
                         "autodiff_ms": 1e3 * seconds["autodiff"] / steps,
                         "ratio": seconds["jbp"] / seconds["autodiff"]})
    return rows


def jbp_grads(net, params, X, Y):
    return jbp.loss_and_grads(net, params, X, Y, jbp.softmax_cross_entropy)


def autodiff_grads(net, params, X, Y):
    return jax.value_and_grad(autodiff_cost, argnums=1)(net, params, X, Y)


def bare_scan(net, optimizer, batch, grads_of=jbp_grads):
    """The same epoch as fit's, written by hand: shuffle, scan of the gradient + optax, nothing else
    (the gradient from jbp, or from ``jax.value_and_grad`` with ``grads_of=autodiff_grads``)."""

    @jax.jit
    def epoch(params, state, X, Y, key):
        order = jax.random.permutation(key, X.shape[0])
        full = X.shape[0] // batch

        def step(carry, rows):
            params, state = carry
            J, grads = grads_of(net, params, X[rows], Y[rows])
            updates, state = optimizer.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), J

        (params, state), costs = jax.lax.scan(step, (params, state), order[: full * batch].reshape(full, batch))
        return params, state, costs

    return epoch


def sgd_problem(n):
    """The network, data, SGD, its state and a key that the waste and compile tables share."""
    net, params = net_params()
    X, Y = problem(n)
    optimizer = optax.sgd(LEARNING_RATE)
    return net, params, X, Y, optimizer, optimizer.init(params), jax.random.key(1)


def waste_table(n, batch, rounds):
    net, params, X, Y, optimizer, state, key = sgd_problem(n)
    bare = bare_scan(net, optimizer, batch)
    jax.block_until_ready(bare(params, state, X, Y, key))
    kw = dict(loss=jbp.softmax_cross_entropy, optimizer=optimizer, batch_size=batch, key=key, drop_last=True)
    jbp.fit(net, params, X, Y, epochs=1, eval_every=0, **kw)
    variants = {
        "bare scan": lambda: jax.block_until_ready(bare(params, state, X, Y, jax.random.fold_in(key, 0))),
        "fit, eval_every=0": lambda: jbp.fit(net, params, X, Y, epochs=1, eval_every=0, **kw),
        "fit, default (measures the training set)": lambda: jbp.fit(net, params, X, Y, epochs=1, **kw),
    }
    seconds = median_rounds(variants, rounds)
    return {name: {"epoch_s": s, "ratio_to_bare_scan": s / seconds["bare scan"]} for name, s in seconds.items()}


def compile_table(n, batch, rounds):
    net, params, X, Y, optimizer, state, key = sgd_problem(n)

    # each from cold: jax.clear_caches() first, so no trace or executable of an earlier round is reused
    def fit_program():
        jax.clear_caches()
        epochs.epoch.lower(net, params, state, X, Y, key, None, loss=jbp.softmax_cross_entropy, optimizer=optimizer,
                              batch_size=batch, drop_last=True, l2=0.0).compile()

    def autodiff_program():
        jax.clear_caches()
        bare_scan(net, optimizer, batch, autodiff_grads).lower(params, state, X, Y, key).compile()

    def bare_program():
        jax.clear_caches()
        bare_scan(net, optimizer, batch).lower(params, state, X, Y, key).compile()

    jax.config.update("jax_enable_compilation_cache", False)
    seconds = median_rounds({"fit's epoch": fit_program, "hand-written jbp scan": bare_program,
                             "hand-written autodiff scan": autodiff_program}, rounds)
    return {name: {"compile_s": s, "ratio_to_autodiff": s / seconds["hand-written autodiff scan"]}
            for name, s in seconds.items()}


def roofline(batches, rounds, steps, bandwidths, matmul_sizes=(1024, 2048, 3072)):
    peak = 0.0  # the best float32 matmul rate seen over a few sizes and rounds: this device's peak, measured
    matmul = jax.jit(lambda a: a @ a)
    for size in matmul_sizes:
        A = jax.random.uniform(jax.random.key(0), (size, size), jnp.float32)
        jax.block_until_ready(matmul(A))
        for _ in range(rounds):
            start = time.perf_counter()
            jax.block_until_ready(matmul(A))
            peak = max(peak, 2 * size**3 / (time.perf_counter() - start))
    net, params = net_params()
    weights = sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    parameters = sum(layer.W.size + layer.b.size for layer in params)

    @jax.jit
    def step(params, X, Y):
        loss, grads = jbp.loss_and_grads(net, params, X, Y, jbp.softmax_cross_entropy)
        return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads), loss

    times = {}
    rows = []
    for batch in sorted(set(batches)):
        X, Y = problem(batch)
        jax.block_until_ready(step(params, X, Y))

        def go(X=X, Y=Y):
            p = params
            for _ in range(steps):
                p, loss = step(p, X, Y)
            jax.block_until_ready(p)

        seconds = median_rounds({"step": go}, rounds)["step"] / steps
        times[batch] = seconds
        flops = 6 * batch * weights  # forward W a, backward δ W and δᵀ a: three matmuls of 2·m·weights
        rows.append({"batch": batch, "step_ms": 1e3 * seconds, "gflops": flops / seconds / 1e9,
                     "fraction_of_peak": flops / seconds / peak})
    all_reduce_bytes = 4 * parameters
    predictions = []
    for global_batch in (256, 1024):
        for devices in (8, 64):
            local = global_batch // devices
            if local not in times:
                continue
            for name, bandwidth in bandwidths.items():
                communication = 2 * (devices - 1) / devices * all_reduce_bytes / bandwidth
                predicted = times[global_batch] / (times[local] + communication)
                predictions.append({"global_batch": global_batch, "devices": devices, "per_device_batch": local,
                                    "link": name, "bandwidth_GBps": bandwidth / 1e9,
                                    "all_reduce_ms": 1e3 * communication, "predicted_speedup": predicted})
    return {"matmul_peak_gflops": peak / 1e9, "parameters": parameters, "all_reduce_bytes": all_reduce_bytes,
            "steps": rows, "predictions": predictions}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small data, few rounds")
    parser.add_argument("--out", default=str(RESULTS / "bench_scale.json"), help="where the JSON goes")
    args = parser.parse_args(argv)
    quick = args.quick
    rounds = 3 if quick else 9
    n = 2048 if quick else 16384
    print(f"machine: {machine()}; {len(jax.devices())} devices ({jax.devices()[0].platform})")
    results = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "network": SIZES}

    print("\n1. a fit epoch on a mesh (n = %d, batch 1024)" % n)
    results["devices"] = devices_table(n, 256 if quick else 1024, rounds)
    for row in results["devices"]:
        print(f"  {row['devices']} devices: {row['epoch_s'] * 1e3:8.1f} ms/epoch, {row['ratio_to_one_device']:.2f}× one "
              f"device; parameters within {row['max_param_difference']:.1e} of one device's")

    print("\n2. a training step in low precision, jbp / autodiff")
    results["precision"] = precision_table([256] if quick else [256, 1024], rounds, 3 if quick else 10)
    for row in results["precision"]:
        print(f"  {row['dtype']:>9} batch {row['batch']:>5}: jbp {row['jbp_ms']:7.2f} ms, autodiff "
              f"{row['autodiff_ms']:7.2f} ms, {row['ratio']:.2f}×")

    print("\n3. a fit epoch against the bare scan of the same steps")
    results["waste"] = waste_table(n, 256 if quick else 1024, rounds)
    for name, row in results["waste"].items():
        print(f"  {name:>42}: {row['epoch_s'] * 1e3:8.1f} ms, {row['ratio_to_bare_scan']:.3f}×")

    print("\n4. compile time of one epoch's program")
    results["compile"] = compile_table(n, 256 if quick else 1024, 3 if quick else 5)
    for name, row in results["compile"].items():
        print(f"  {name:>28}: {row['compile_s']:.3f} s, {row['ratio_to_autodiff']:.2f}× autodiff's")

    print("\n5. roofline and the all-reduce")
    bandwidths = {"10 GbE": 1.25e9, "100 Gb/s InfiniBand": 12.5e9, "NVLink 4 (H100)": 450e9}
    batches = [4, 16, 32, 128, 256, 1024] if not quick else [4, 32, 256]
    results["roofline"] = roofline(batches, rounds, 3 if quick else 10, bandwidths,
                                   (512, 1024) if quick else (1024, 2048, 3072))
    r = results["roofline"]
    print(f"  matmul peak {r['matmul_peak_gflops']:.1f} GFLOP/s; one all-reduce = {r['all_reduce_bytes']:,} bytes "
          f"({r['parameters']:,} float32 parameters)")
    for row in r["steps"]:
        print(f"  batch {row['batch']:>5}: {row['step_ms']:7.3f} ms, {row['gflops']:6.1f} GFLOP/s, "
              f"{row['fraction_of_peak']:.0%} of peak")
    for row in r["predictions"]:
        print(f"  batch {row['global_batch']} on {row['devices']} devices ({row['per_device_batch']} each), "
              f"{row['link']}: all-reduce {row['all_reduce_ms']:.2f} ms, speed-up {row['predicted_speedup']:.1f}×")
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
