"""Beyond the gradient, timed: jbp's quantities from the deltas against BackPACK and vmap(grad).

The network is the benchmark's: 784-512-512-10, sigmoid hidden layers,
softmax cross-entropy averaged over the batch, float32, batches of 32, 256
and 1024. Every cell is a time as a ratio to a plain training step of the
same framework (forward, backward, SGD update), measured in the same
process, interleaved with that framework's other cells, median of the runs:

- jbp alone: ``jbp.one_pass(..., [quantity])`` (forward, backward, the
  quantity's contraction; no gradient, no update), to a plain
  ``loss_and_grads`` step;
- jbp in a step: ``jbp.one_pass(..., ["grads", quantity])`` and the SGD
  update, to the same plain step;
- BackPACK in a step: ``loss.backward()`` inside ``with
  backpack(Extension())`` and an SGD step (BackPACK always computes the
  gradient too), to a plain PyTorch step;
- vmap(grad) alone: per-sample gradients from ``jax.vmap(jax.grad(...))``
  and the quantity from them, to a plain ``jax.value_and_grad`` step
  (first-order quantities only: the GGN that way needs a Jacobian per sample
  and output).

Before anything is timed, every quantity BackPACK has is compared with
jbp's on the same weights and batch in float64 (BackPACK's per-sample
objects are those of the averaged loss, ``g_i / N``; the conversions are in
``check_backpack``); the Monte-Carlo ones, which draw from different random
streams, are compared in expectation with many samples on a small network.
A third table gives the scratch memory XLA plans for each compiled program
(``memory_analysis().temp_size_in_bytes``): jbp's first-order quantities
stay flat in the batch size, vmap(grad)'s grow as batch × parameters.

Needs the ``bench`` extra (PyTorch, BackPACK): see the README. Run:
``python experiments/bench_extras.py`` (``--help`` for sizes and counts);
it writes ``results/bench_extras.json``.
"""

import argparse
import copy
import importlib.metadata
import json
import os
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from common import write_json
from bench import machine

LEARNING_RATE = 0.1
JBP_QUANTITIES = ("sum_grad_squared", "grad_variance", "per_example_grad_norms", "per_example_grad_gram",
                  "diag_ggn", "diag_ggn_mc", "kflr", "kfac")
FIRST_ORDER = ("sum_grad_squared", "grad_variance", "per_example_grad_norms", "per_example_grad_gram")
BACKPACK = {  # jbp's name: BackPACK's extension
    "sum_grad_squared": "SumGradSquared", "grad_variance": "Variance", "per_example_grad_norms": "BatchL2Grad",
    "per_example_grad_gram": "BatchGrad", "diag_ggn": "DiagGGNExact", "diag_ggn_mc": "DiagGGNMC",
    "kflr": "KFLR", "kfac": "KFAC",
}


def torch_modules():
    try:
        import torch
        from backpack import backpack, extend, extensions
    except ImportError:
        raise SystemExit("bench_extras.py compares with BackPACK: pip install -e '.[bench]' (see the README)") from None
    return torch, backpack, extend, extensions


# --- the three frameworks' steps


def jax_cost(params, X, Y):
    """The same J written for jax.grad: sigmoid hidden layers, softmax cross-entropy, mean."""
    a = X
    for layer in params[:-1]:
        a = jax.nn.sigmoid(a @ layer.W.T + layer.b)
    logits = a @ params[-1].W.T + params[-1].b
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits), axis=1))


def sgd(params, grads):
    return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)


def jbp_steps(net, alone=False):
    """jbp's plain step, and for each quantity a step that also yields it (or, ``alone``, the
    quantity by itself: forward, backward and its contraction, no gradient, no update)."""
    loss = jbp.softmax_cross_entropy

    @jax.jit
    def plain(params, X, Y, key):
        J, grads = jbp.loss_and_grads(net, params, X, Y, loss)
        return sgd(params, grads), J

    def with_quantity(name):
        @jax.jit
        def step(params, X, Y, key):
            if alone:
                return jbp.one_pass(net, params, X, Y, loss, [name], key=key)[name]
            out = jbp.one_pass(net, params, X, Y, loss, ["grads", name], key=key)
            return sgd(params, out["grads"]), out[name]

        return step

    return {"step": plain, **{name: with_quantity(name) for name in JBP_QUANTITIES}}


def vmap_grad_steps():
    def per_sample(params, X, Y):
        grads = jax.vmap(jax.grad(lambda p, x, y: jax_cost(p, x[None], y[None])), in_axes=(None, 0, 0))(params, X, Y)
        return jnp.concatenate([g.reshape(len(X), -1) for g in jax.tree.leaves(grads)], axis=1), grads

    def quantity(flat, grads, name):
        if name == "sum_grad_squared":
            return jax.tree.map(lambda g: jnp.sum(g**2, axis=0), grads)
        if name == "grad_variance":
            return jax.tree.map(lambda g: jnp.var(g, axis=0), grads)
        if name == "per_example_grad_norms":
            return jnp.linalg.norm(flat, axis=1)
        return flat @ flat.T

    @jax.jit
    def plain(params, X, Y, key):
        J, grads = jax.value_and_grad(jax_cost)(params, X, Y)
        return sgd(params, grads), J

    def with_quantity(name):
        @jax.jit
        def step(params, X, Y, key):  # the quantity alone, from the per-sample gradients
            flat, grads = per_sample(params, X, Y)
            return quantity(flat, grads, name)

        return step

    return {"step": plain, **{name: with_quantity(name) for name in FIRST_ORDER}}


def torch_model(params, dtype):
    torch, _, _, _ = torch_modules()
    layers = []
    for l, layer in enumerate(params):
        linear = torch.nn.Linear(layer.W.shape[1], layer.W.shape[0]).to(dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(np.asarray(layer.W)))
            linear.bias.copy_(torch.as_tensor(np.asarray(layer.b)))
        layers += [linear] + ([torch.nn.Sigmoid()] if l < len(params) - 1 else [])
    return torch.nn.Sequential(*layers)


def backpack_steps(params):
    torch, backpack, extend, extensions = torch_modules()
    plain_model = torch_model(params, torch.float32)
    model = extend(copy.deepcopy(plain_model))
    lossf, plain_lossf = extend(torch.nn.CrossEntropyLoss()), torch.nn.CrossEntropyLoss()
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=LEARNING_RATE)
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)

    def plain(X, y):
        plain_opt.zero_grad()
        plain_lossf(plain_model(X), y).backward()
        plain_opt.step()

    def with_extension(name):
        extension = getattr(extensions, name)

        def step(X, y):
            opt.zero_grad()
            loss = lossf(model(X), y)
            with backpack(extension()):
                loss.backward()
            opt.step()

        return step

    return {"step": plain, **{jbp_name: with_extension(ext) for jbp_name, ext in BACKPACK.items()}}


# --- agreement with BackPACK, float64


def check_backpack(sizes, batch, seed):
    """jbp against BackPACK on the same float64 weights and batch; returns the largest relative differences."""
    torch, backpack, extend, extensions = torch_modules()
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    with jax.enable_x64(True):
        params = jbp.init(net, jax.random.key(seed), dtype=jnp.float64)
        rng = np.random.default_rng(seed)
        X = rng.uniform(size=(batch, sizes[0]))
        labels = rng.integers(0, sizes[-1], batch)
        Y = np.eye(sizes[-1])[labels]
        ours = jbp.one_pass(net, params, X, Y, jbp.softmax_cross_entropy,
                            ["grads", "sum_grad_squared", "grad_variance", "per_example_grad_norms",
                             "per_example_grad_gram", "diag_ggn", "kflr"])
        ours["per_example_grads"] = jbp.per_example_grads(net, params, X, Y, jbp.softmax_cross_entropy)
    model = extend(torch_model(params, torch.float64))
    lossf = extend(torch.nn.CrossEntropyLoss())
    loss = lossf(model(torch.as_tensor(X)), torch.as_tensor(labels))
    with backpack(extensions.BatchGrad(), extensions.SumGradSquared(), extensions.Variance(),
                  extensions.BatchL2Grad(), extensions.DiagGGNExact(), extensions.KFLR()):
        loss.backward()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    N = batch  # BackPACK's per-sample objects are g_i / N for a loss averaged over N

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))

    diffs = {}

    def record(name, value):
        diffs[name] = max(diffs.get(name, 0.0), value)

    flat_batch = []
    for layer, g, sgs, var, ggn, kf, theirs in zip(
        params, ours["per_example_grads"], ours["sum_grad_squared"], ours["grad_variance"], ours["diag_ggn"],
        ours["kflr"], linears,
    ):
        for ours_leaf, p, ours_sgs, ours_var, ours_ggn in ((g.W, theirs.weight, sgs.W, var.W, ggn.W),
                                                           (g.b, theirs.bias, sgs.b, var.b, ggn.b)):
            record("per-sample gradients (BatchGrad × N)", rel(N * p.grad_batch.numpy(), ours_leaf))
            record("sum_grad_squared (SumGradSquared × N²)", rel(N**2 * p.sum_grad_squared.numpy(), ours_sgs))
            record("grad_variance (Variance × N²)", rel(N**2 * p.variance.numpy(), ours_var))
            record("diag_ggn (DiagGGNExact)", rel(p.diag_ggn_exact.numpy(), ours_ggn))
            flat_batch.append(N * p.grad_batch.numpy().reshape(N, -1))
        G, A = theirs.weight.kflr
        record("kflr G (KFLR's first factor)", rel(G.numpy(), kf.G))
        record("kflr A without the bias row (KFLR's second factor)", rel(A.numpy(), kf.A[:-1, :-1]))
        record("kflr G of the bias (KFLR's bias factor)", rel(theirs.bias.kflr[0].numpy(), kf.G))
    l2 = sum(N**2 * p.batch_l2.numpy() for m in linears for p in (m.weight, m.bias))
    record("per_example_grad_norms² (BatchL2Grad × N², summed)", rel(l2, np.asarray(ours["per_example_grad_norms"]) ** 2))
    flat = np.concatenate(flat_batch, axis=1)
    record("per_example_grad_gram (from BatchGrad × N)", rel(flat @ flat.T, ours["per_example_grad_gram"]))
    return diffs


def check_backpack_monte_carlo(seed, draws=4000):
    """DiagGGNMC and KFAC draw from torch's random stream, jbp from JAX's: both against the exact
    values, in expectation, on a small network with many draws. Returns relative errors."""
    torch, backpack, extend, extensions = torch_modules()
    sizes, batch = [12, 8, 5], 6
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    with jax.enable_x64(True):
        params = jbp.init(net, jax.random.key(seed), dtype=jnp.float64)
        rng = np.random.default_rng(seed)
        X, labels = rng.uniform(size=(batch, sizes[0])), rng.integers(0, sizes[-1], batch)
        Y = np.eye(sizes[-1])[labels]
        exact = jbp.one_pass(net, params, X, Y, "softmax_cross_entropy", ["diag_ggn", "kflr"])
        sampled = jbp.one_pass(net, params, X, Y, "softmax_cross_entropy", ["diag_ggn_mc", "kfac"],
                               key=jax.random.key(seed), samples=draws)
    model = extend(torch_model(params, torch.float64))
    lossf = extend(torch.nn.CrossEntropyLoss())
    torch.manual_seed(seed)
    loss = lossf(model(torch.as_tensor(X)), torch.as_tensor(labels))
    with backpack(extensions.DiagGGNMC(mc_samples=draws), extensions.KFAC(mc_samples=draws)):
        loss.backward()
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]

    def rel(a, b):
        return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))

    return {
        "BackPACK DiagGGNMC to exact": max(rel(m.weight.diag_ggn_mc.numpy(), e.W) for m, e in zip(linears, exact["diag_ggn"])),
        "jbp diag_ggn_mc to exact": max(rel(s.W, e.W) for s, e in zip(sampled["diag_ggn_mc"], exact["diag_ggn"])),
        "BackPACK KFAC G to exact": max(rel(m.weight.kfac[0].numpy(), e.G) for m, e in zip(linears, exact["kflr"])),
        "jbp kfac G to exact": max(rel(s.G, e.G) for s, e in zip(sampled["kfac"], exact["kflr"])),
        "draws": draws,
    }


# --- timing


def _timed(run, steps):
    start = time.perf_counter()
    for _ in range(steps):
        out = run()
    if out is not None:
        jax.block_until_ready(out)
    return (time.perf_counter() - start) / steps


def _median_times(variants, repeats, steps):
    """Median seconds per call of each variant, the variants taking turns; a variant slower than
    0.2 s a call is run fewer times per turn (at least once)."""
    counts = {name: max(1, min(steps, int(0.2 / _timed(run, 1)))) for name, run in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            times[name].append(_timed(run, counts[name]))
    return {name: statistics.median(ts) for name, ts in times.items()}


def time_all(sizes, batch, repeats, steps, seed, with_torch):
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(seed), dtype=jnp.float32)
    rng = np.random.default_rng(seed)
    X = jnp.asarray(rng.uniform(size=(batch, sizes[0])), jnp.float32)
    labels = rng.integers(0, sizes[-1], batch)
    Y = jax.nn.one_hot(labels, sizes[-1], dtype=jnp.float32)
    key = jax.random.key(seed)
    variants = {}
    frameworks = (("jbp alone", jbp_steps(net, alone=True)), ("jbp in a step", jbp_steps(net)),
                  ("vmap(grad) alone", vmap_grad_steps()))
    for framework, steps_of in frameworks:
        if framework.startswith("vmap(grad)") and batch * sum(l.W.size + l.b.size for l in params) * 4 > 4e9:
            continue  # per-sample gradients beyond 4 GB: not on this machine
        for name, fn in steps_of.items():
            jax.block_until_ready(fn(params, X, Y, key))  # compile
            variants[(framework, name)] = partial(fn, params, X, Y, key)
    if with_torch:
        torch = torch_modules()[0]
        tX, ty = torch.as_tensor(np.asarray(X)), torch.as_tensor(labels)
        for name, fn in backpack_steps(params).items():
            fn(tX, ty)  # warm up
            variants[("BackPACK in a step", name)] = partial(lambda fn: (fn(tX, ty), None)[1], fn)
    rows = {}
    for framework in dict.fromkeys(f for f, _ in variants):
        # each framework's variants interleaved among themselves: PyTorch's threads spin for a while
        # after their work and would slow whatever JAX ran next, so frameworks are not mixed
        own = {name: run for (f, name), run in variants.items() if f == framework}
        rows[framework] = _median_times(own, repeats, steps)
    return rows


def scratch_memory(sizes, batches, seed):
    """Bytes of scratch XLA plans for a plain step and for each first-order quantity alone:
    jbp and vmap(grad). Nothing is run: the programs are compiled and their plans read."""
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(seed), dtype=jnp.float32)
    rows = []
    for batch in batches:
        X = jax.ShapeDtypeStruct((batch, sizes[0]), jnp.float32)
        Y = jax.ShapeDtypeStruct((batch, sizes[-1]), jnp.float32)
        key = jax.random.key(0)
        row = {"batch": batch}
        for framework, steps in (("jbp", jbp_steps(net, alone=True)), ("vmap(grad)", vmap_grad_steps())):
            for name in ("step",) + FIRST_ORDER:
                compiled = steps[name].lower(params, X, Y, key).compile()
                row[f"{framework} {name}"] = compiled.memory_analysis().temp_size_in_bytes
        rows.append(row)
    return rows


def _print_memory(rows):
    print("\nscratch memory XLA plans (MB), a plain step and each first-order quantity alone:")
    for row in rows:
        print("  " + ", ".join(f"{k} {v / 1e6:.1f}" if k != "batch" else f"batch {v}" for k, v in row.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="784,512,512,10")
    parser.add_argument("--batch-sizes", default="32,256,1024")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="jbp and vmap(grad) only")
    parser.add_argument("--memory-only", action="store_true",
                        help="only the scratch-memory table, written into the existing results file")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_extras.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    with_torch = not args.no_torch
    if args.memory_only:
        with open(args.out) as f:
            results = json.load(f)
        results["scratch_memory"] = scratch_memory(sizes, batches, 0)
        _print_memory(results["scratch_memory"])
        write_json(args.out, results)
        return 0
    results = {"machine": machine(), "sizes": sizes, "repeats": args.repeats, "steps": args.steps}
    print(f"machine: {results['machine']}")
    if with_torch:
        torch = torch_modules()[0]
        torch.set_num_threads(os.cpu_count())
        allocator = os.environ.get("LD_PRELOAD", "") or "glibc malloc"
        results["torch"] = (f"torch {torch.__version__}, backpack-for-pytorch {importlib.metadata.version('backpack-for-pytorch')}, "
                            f"{torch.get_num_threads()} threads, {allocator}")
        print(results["torch"])
        results["agreement"] = check_backpack(sizes, 16, seed=0)
        print("\nagreement with BackPACK, float64, same weights, batch 16 (largest relative difference):")
        for name, value in results["agreement"].items():
            print(f"  {name:<58} {value:.1e}")
            assert value < 1e-9, f"jbp and BackPACK disagree on {name}: {value}"
        results["monte_carlo"] = check_backpack_monte_carlo(seed=0)
        print("Monte-Carlo estimates against the exact values (12-8-5 network, "
              f"{results['monte_carlo']['draws']} draws; relative): "
              + ", ".join(f"{k} {v:.3f}" for k, v in results["monte_carlo"].items() if k != "draws"))

    results["timing"] = {}
    for batch in batches:
        rows = time_all(sizes, batch, args.repeats, args.steps, 0, with_torch)
        results["timing"][batch] = rows
        print(f"\nbatch {batch}: time as a ratio to each framework's plain step")
        base = {framework: row["step"] for framework, row in rows.items()}
        print("  plain step ms: " + ", ".join(f"{f} {s * 1e3:.2f}" for f, s in base.items()))
        print(f"  {'quantity':<24}" + "".join(f"{f:>20}" for f in rows))
        for name in JBP_QUANTITIES:
            cells = "".join(f"{rows[f][name] / base[f]:>20.2f}" if name in rows[f] else f"{'—':>20}" for f in rows)
            print(f"  {name:<24}{cells}")
    results["scratch_memory"] = scratch_memory(sizes, batches, 0)
    _print_memory(results["scratch_memory"])
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
