"""Private steps, timed: jbp's clipping from the deltas against Opacus and vmap(grad)-clip.

The network is the benchmark's: 784-512-512-10, sigmoid hidden layers,
softmax cross-entropy averaged over the batch, float32, batches of 32, 256
and 1024, clipping norm 1. Each cell is a step's time as a ratio to a plain
step (forward, backward, SGD update) of the same framework, in the same
process, interleaved with that framework's other cells, median of the runs:

- jbp: the clipped step (``jbp.clipped_grads`` and the update); the noised
  step (the same, then ``jbp.dp_noise`` with σ = 1: one normal draw of every
  parameter); and a DP-SGD step as ``jbp.fit`` runs it (a Poisson sample of
  the expected batch size from a set of 8 batches, padded to the nearest of
  its sizes, clipped, noised, applied), per step of an 8-step epoch;
- Opacus: per-sample hooks (``GradSampleModule``, the default) and ghost
  clipping (two backward passes), with σ = 0 and σ = 1, to a plain PyTorch step;
- vmap(grad)-clip: per-sample gradients from ``jax.vmap(jax.grad(...))``,
  their norms, the clipped mean and the update, to a plain
  ``jax.value_and_grad`` step.

Before timing, jbp's clipped gradient is compared with Opacus' on the same
float64 weights and batch (Opacus clips by ``C / (‖g‖ + 1e-6)``, jbp by
``C / ‖g‖`` as DP-SGD is written: they agree to that 1e-6). A last table
gives the scratch memory XLA plans for jbp's clipped step and for
vmap(grad)-clip, and the peak resident memory of Opacus' steps, against the
batch size.

Needs the ``bench`` extra with Opacus (see the README). Writes
``results/bench_privacy.json``.
"""

import argparse
import copy
import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp
from common import write_json
from bench import machine
from bench_extras import _median_times, jax_cost, sgd, torch_model

warnings.filterwarnings("ignore")
MAX_NORM, SIGMA = 1.0, 1.0


def jax_steps(net, batch):
    loss = jbp.softmax_cross_entropy
    noise = jbp.dp_noise(SIGMA * MAX_NORM / batch, jax.random.key(7))
    from jbp.privacy import poisson_epoch, private_optimizer

    @jax.jit
    def plain(params, X, Y, state):
        J, grads = jbp.loss_and_grads(net, params, X, Y, loss)
        return sgd(params, grads), state

    @jax.jit
    def clipped(params, X, Y, state):
        J, grads = jbp.clipped_grads(net, params, X, Y, loss, MAX_NORM)
        return sgd(params, grads), state

    @jax.jit
    def noised(params, X, Y, state):
        J, grads = jbp.clipped_grads(net, params, X, Y, loss, MAX_NORM)
        grads, state = noise.update(grads, state)
        return sgd(params, grads), state

    @jax.jit
    def autodiff(params, X, Y, state):
        J, grads = jax.value_and_grad(jax_cost)(params, X, Y)
        return sgd(params, grads), state

    @jax.jit
    def vmap_clip(params, X, Y, state):
        grads = jax.vmap(jax.grad(lambda p, x, y: jax_cost(p, x[None], y[None])), in_axes=(None, 0, 0))(params, X, Y)
        norms = jnp.sqrt(sum(jnp.sum(g.reshape(len(X), -1) ** 2, axis=1) for g in jax.tree.leaves(grads)))
        factors = jnp.minimum(1.0, MAX_NORM / norms)
        mean = jax.tree.map(lambda g: jnp.mean(g * factors.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0), grads)
        return sgd(params, mean), state

    privacy = jbp.dp_sgd(MAX_NORM, SIGMA, jax.random.key(8))
    optimizer = private_optimizer(privacy, optax.sgd(0.1), batch)

    def epoch(params, X_set, Y_set, state):
        out = poisson_epoch(net, params, state, X_set, Y_set, jax.random.key(9), jnp.asarray(MAX_NORM, jnp.float32),
                             loss=loss, optimizer=optimizer, batch_size=batch, l2=0.0)
        return out[0], out[1]

    return {"plain": plain, "clipped": clipped, "noised": noised}, {"plain": autodiff, "vmap(grad)-clip": vmap_clip}, \
        (epoch, optimizer, noise)


def check_opacus(sizes, batch, seed):
    """jbp.clipped_grads against Opacus' clipped mean on the same float64 weights: largest relative difference."""
    import torch
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    with jax.enable_x64(True):
        params = jbp.init(net, jax.random.key(seed), dtype=jnp.float64)
        rng = np.random.default_rng(seed)
        X, labels = rng.uniform(size=(batch, sizes[0])), rng.integers(0, sizes[-1], batch)
        norms = jbp.per_example_grad_norms(net, params, X, np.eye(sizes[-1])[labels], "softmax_cross_entropy")
        max_norm = float(np.median(norms))  # half the samples clipped
        _, ours = jbp.clipped_grads(net, params, X, np.eye(sizes[-1])[labels], "softmax_cross_entropy", max_norm)
    model = GradSampleModule(torch_model(params, torch.float64), loss_reduction="mean")
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0, max_grad_norm=max_norm,
                            expected_batch_size=batch, loss_reduction="mean")
    optimizer.zero_grad()
    torch.nn.CrossEntropyLoss()(model(torch.as_tensor(X)), torch.as_tensor(labels)).backward()
    optimizer.pre_step()
    linears = [m for m in model._module if isinstance(m, torch.nn.Linear)]
    worst = 0.0
    for layer, theirs in zip(ours, linears):
        for a, b in ((layer.W, theirs.weight.grad), (layer.b, theirs.bias.grad)):
            b = b.numpy()
            worst = max(worst, float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b))))
    return worst


def opacus_steps(params, batch, X, y):
    import torch
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    base = torch_model(params, torch.float32)
    plain_model = copy.deepcopy(base)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    criterion = torch.nn.CrossEntropyLoss()

    def plain():
        plain_opt.zero_grad()
        criterion(plain_model(X), y).backward()
        plain_opt.step()

    steps = {"plain": plain}
    for sigma in (0.0, SIGMA):
        model = GradSampleModule(copy.deepcopy(base), loss_reduction="mean")
        opt = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=sigma, max_grad_norm=MAX_NORM,
                          expected_batch_size=batch, loss_reduction="mean")

        def hooks(model=model, opt=opt):
            opt.zero_grad()
            criterion(model(X), y).backward()
            opt.step()

        ghost_model = GradSampleModuleFastGradientClipping(copy.deepcopy(base), batch_first=True, loss_reduction="mean",
                                                           max_grad_norm=MAX_NORM, use_ghost_clipping=True)
        ghost_opt = DPOptimizerFastGradientClipping(torch.optim.SGD(ghost_model.parameters(), lr=0.1),
                                                    noise_multiplier=sigma, max_grad_norm=MAX_NORM,
                                                    expected_batch_size=batch, loss_reduction="mean")
        ghost_loss = DPLossFastGradientClipping(ghost_model, ghost_opt, torch.nn.CrossEntropyLoss(reduction="mean"),
                                                loss_reduction="mean")

        def ghost(model=ghost_model, opt=ghost_opt, loss=ghost_loss):
            opt.zero_grad()
            loss(model(X), y).backward()
            opt.step()

        kind = "clipped" if sigma == 0 else "noised"
        steps[f"hooks {kind}"], steps[f"ghost {kind}"] = hooks, ghost
    return steps


def time_batch(sizes, batch, repeats, steps, with_torch):
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.uniform(size=(batch, sizes[0])), jnp.float32)
    labels = rng.integers(0, sizes[-1], batch)
    Y = jax.nn.one_hot(labels, sizes[-1], dtype=jnp.float32)
    ours, theirs, (epoch, optimizer, noise) = jax_steps(net, batch)
    state = noise.init(params)
    X_set = jnp.asarray(rng.uniform(size=(8 * batch, sizes[0])), jnp.float32)
    Y_set = jax.nn.one_hot(rng.integers(0, sizes[-1], 8 * batch), sizes[-1], dtype=jnp.float32)
    epoch_state = optimizer.init(params)
    rows = {}
    variants = {name: (lambda fn=fn: fn(params, X, Y, state)) for name, fn in ours.items()}
    jax.block_until_ready(epoch(params, X_set, Y_set, epoch_state))
    variants["DP-SGD step in fit"] = lambda: epoch(params, X_set, Y_set, epoch_state)
    for fn in variants.values():
        jax.block_until_ready(fn())
    times = _median_times(variants, repeats, steps)
    times["DP-SGD step in fit"] /= 8  # an epoch of 8 steps
    rows["jbp"] = times
    if batch * sum(layer.W.size + layer.b.size for layer in params) * 4 <= 4e9:
        jax_variants = {name: (lambda fn=fn: fn(params, X, Y, state)) for name, fn in theirs.items()}
        for fn in jax_variants.values():
            jax.block_until_ready(fn())
        rows["vmap(grad)"] = _median_times(jax_variants, repeats, steps)
    if with_torch:
        import torch

        tX, ty = torch.as_tensor(np.asarray(X)), torch.as_tensor(labels)
        torch_variants = opacus_steps(params, batch, tX, ty)
        for fn in torch_variants.values():
            fn()
        wrapped = {name: (lambda fn=fn: (fn(), None)[1]) for name, fn in torch_variants.items()}
        rows["Opacus"] = _median_times(wrapped, repeats, steps)
    return rows


MEMORY_PROBE = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import numpy as np, torch, jax, jbp
from bench_privacy import opacus_steps
def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
sizes, batch, name = json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
params = jbp.init(net, jax.random.key(0), dtype=np.float32)
rng = np.random.default_rng(0)
X, y = torch.as_tensor(rng.uniform(size=(batch, sizes[0])).astype(np.float32)), torch.as_tensor(rng.integers(0, sizes[-1], batch))
step = opacus_steps(params, batch, X, y)[name]
step()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = rss("VmRSS")
for _ in range(3):
    step()
print(json.dumps(rss("VmHWM") - before))
"""


def memory(sizes, batches, with_torch):
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(0), dtype=jnp.float32)
    rows = []
    for batch in batches:
        ours, theirs, _ = jax_steps(net, batch)
        X = jax.ShapeDtypeStruct((batch, sizes[0]), jnp.float32)
        Y = jax.ShapeDtypeStruct((batch, sizes[-1]), jnp.float32)
        state = jbp.dp_noise(0.1, jax.random.key(0)).init(params)
        row = {"batch": batch}
        for name, fn in (("jbp plain", ours["plain"]), ("jbp clipped", ours["clipped"]),
                         ("vmap(grad)-clip", theirs["vmap(grad)-clip"])):
            row[f"{name} XLA scratch"] = fn.lower(params, X, Y, state).compile().memory_analysis().temp_size_in_bytes
        if with_torch:
            for name in ("plain", "hooks clipped", "ghost clipped"):
                done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, os.path.dirname(os.path.abspath(__file__)),
                                       json.dumps(sizes), str(batch), name], capture_output=True, text=True)
                row[f"Opacus {name} peak RSS rise"] = json.loads(done.stdout.strip().splitlines()[-1]) \
                    if done.returncode == 0 else None
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="784,512,512,10")
    parser.add_argument("--batch-sizes", default="32,256,1024")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="jbp and vmap(grad) only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "bench_privacy.json"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    with_torch = not args.no_torch
    results = {"machine": machine(), "sizes": sizes, "max_norm": MAX_NORM, "sigma": SIGMA}
    print(f"machine: {results['machine']}")
    if with_torch:
        import importlib.metadata

        import torch

        torch.set_num_threads(os.cpu_count())
        results["torch"] = (f"torch {torch.__version__}, opacus {importlib.metadata.version('opacus')}, "
                            f"{torch.get_num_threads()} threads, {os.environ.get('LD_PRELOAD') or 'glibc malloc'}")
        results["agreement_with_opacus"] = check_opacus([20, 16, 12, 5], 12, seed=0)
        print(results["torch"])
        print(f"jbp.clipped_grads against Opacus (float64, half the samples clipped): largest relative difference "
              f"{results['agreement_with_opacus']:.1e}")
        assert results["agreement_with_opacus"] < 1e-5
    results["timing"] = {}
    for batch in batches:
        rows = time_batch(sizes, batch, args.repeats, args.steps, with_torch)
        results["timing"][batch] = rows
        print(f"\nbatch {batch}: plain step ms: " + ", ".join(f"{f} {r['plain'] * 1e3:.2f}" for f, r in rows.items()))
        for framework, row in rows.items():
            print(f"  {framework:<12}" + ", ".join(f"{name} {t / row['plain']:.2f}" for name, t in row.items() if name != "plain"))
    results["memory"] = memory(sizes, batches, with_torch)
    print("\nmemory (MB):")
    for row in results["memory"]:
        print("  " + ", ".join(f"{k} {v / 1e6:.1f}" if k != "batch" and v is not None else f"{k} {v}" for k, v in row.items()))
    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
