"""One training step, jbp's hand-written backprop against JAX autodiff.

The step is forward, backward and a plain SGD update of a 784-512-512-10
network (sigmoid hidden layers, softmax cross-entropy, float32), jitted, at
batch sizes 32, 256 and 1024. The baseline is the same step written with
``jax.value_and_grad`` of the same cost. Both run in this process, interleaved
(jbp, autodiff, jbp, autodiff, … so that both see the same machine state),
each timing a run of steps; the table gives the median time per step of the
runs and the ratio jbp / autodiff (below 1: jbp is faster).

A second table times the norm of every sample's whole gradient (for
clipping, or finding outliers): ``jbp.per_example_grad_norms``, which uses
``‖δ a^T‖ = ‖δ‖ ‖a‖`` and never forms a per-sample gradient, against
``jax.vmap(jax.grad(...))`` followed by the norms, which materializes
``batch × parameters`` floats (hence no batch 1024 there by default).

Run: ``python experiments/bench.py`` (``--help`` for the sizes and counts).
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp
from jbp.update import apply

LEARNING_RATE = 0.1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    device = jax.devices()[0]
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
        f"device {device.platform}; Python {platform.python_version()}, jax {jax.__version__}, "
        f"jaxlib {jax.lib.__version__}, optax {optax.__version__}, numpy {np.__version__}"
    )


def autodiff_cost(net, params, X, Y):
    """The same J, written directly for jax.value_and_grad: sigmoid layers, softmax cross-entropy."""
    a = X
    for layer in params[:-1]:
        a = jax.nn.sigmoid(a @ layer.W.T + layer.b)
    logits = a @ params[-1].W.T + params[-1].b
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(logits), axis=1))


def make_steps(net):
    def sgd(params, grads):
        return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)

    @jax.jit
    def jbp_step(params, X, Y):
        loss, grads = jbp.loss_and_grads(net, params, X, Y, jbp.softmax_cross_entropy)
        return sgd(params, grads), loss

    @jax.jit
    def autodiff_step(params, X, Y):
        loss, grads = jax.value_and_grad(autodiff_cost, argnums=1)(net, params, X, Y)
        return sgd(params, grads), loss

    return {"jbp": jbp_step, "autodiff": autodiff_step}


def make_norms(net):
    @jax.jit
    def jbp_norms(params, X, Y):
        return jbp.per_example_grad_norms(net, params, X, Y, jbp.softmax_cross_entropy)

    @jax.jit
    def autodiff_norms(params, X, Y):
        sample_cost = lambda p, x, y: autodiff_cost(net, p, x[None], y[None])  # noqa: E731
        grads = jax.vmap(jax.grad(sample_cost), in_axes=(None, 0, 0))(params, X, Y)
        return jnp.sqrt(sum(jnp.sum(g.reshape(len(X), -1) ** 2, axis=1) for g in jax.tree.leaves(grads)))

    return {"jbp": jbp_norms, "autodiff": autodiff_norms}


def time_calls(fn, params, X, Y, calls: int) -> float:
    """Seconds per call over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(params, X, Y)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def time_steps(step, params, X, Y, steps: int) -> float:
    """Seconds per step over a run of ``steps`` chained steps."""
    start = time.perf_counter()
    for _ in range(steps):
        params, loss = step(params, X, Y)
    jax.block_until_ready((params, loss))
    return (time.perf_counter() - start) / steps


def _problem(sizes, batch, rng):
    X = jnp.asarray(rng.uniform(size=(batch, sizes[0])), jnp.float32)
    Y = jax.nn.one_hot(rng.integers(0, sizes[-1], batch), sizes[-1], dtype=jnp.float32)
    return X, Y


def _interleaved(variants, params, X, Y, repeats, timer):
    """Median seconds of each variant, timed in turn, ``repeats`` rounds."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timer(fn, params, X, Y))
    return statistics.median(times["jbp"]), statistics.median(times["autodiff"])


def _steps_agree(ours, theirs):
    (p_jbp, l_jbp), (p_ad, l_ad) = ours, theirs
    assert abs(float(l_jbp) - float(l_ad)) <= 1e-5 * abs(float(l_ad)), (l_jbp, l_ad)
    gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(p_jbp), jax.tree.leaves(p_ad)))
    assert gap < 1e-5, f"the two steps disagree by {gap}"


def _norms_agree(ours, theirs):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-3, err_msg="the two norms disagree")


def _compare(make, agree, timer, sizes, batch_sizes, repeats, seed):
    """Rows of (batch, median jbp seconds, median autodiff seconds, ratio);
    before timing, each batch's two results are checked to agree."""
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(seed), dtype=jnp.float32)
    variants = make(net)
    rng = np.random.default_rng(seed)
    rows = []
    for batch in batch_sizes:
        X, Y = _problem(sizes, batch, rng)
        agree(*(fn(params, X, Y) for fn in variants.values()))  # compiles both, too
        jbp_s, ad_s = _interleaved(variants, params, X, Y, repeats, timer)
        rows.append((batch, jbp_s, ad_s, jbp_s / ad_s))
    return rows


def bench(sizes, batch_sizes, repeats: int, steps: int, seed: int = 0):
    """The training step, jbp against jax.value_and_grad (see the module docstring)."""
    timer = lambda fn, *args: time_steps(fn, *args, steps)  # noqa: E731
    return _compare(make_steps, _steps_agree, timer, sizes, batch_sizes, repeats, seed)


def bench_norms(sizes, batch_sizes, repeats: int, calls: int, seed: int = 0):
    """Per-example gradient norms, jbp against vmap(grad) (see the module docstring)."""
    timer = lambda fn, *args: time_calls(fn, *args, calls)  # noqa: E731
    return _compare(make_norms, _norms_agree, timer, sizes, batch_sizes, repeats, seed)


class _Parser(argparse.ArgumentParser):
    """Refusals as one line (``SystemExit`` with the message), as the ``jbp`` command gives them."""

    def error(self, message):
        raise SystemExit(f"bench.py: {message}")


def _widths(text: str, name: str, at_least: int = 1, allow_empty: bool = False) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v or not allow_empty]
    except ValueError:
        raise SystemExit(f"bench.py: {name} must be comma-separated positive integers, got {text!r}") from None
    if len(values) < at_least or any(v < 1 for v in values):
        raise SystemExit(f"bench.py: {name} must be at least {at_least} positive integer(s), got {text!r}")
    return values


def bench_rules(sizes, batch_sizes, repeats: int, steps: int, seed: int = 0):
    """A training step with each feedback rule, as a ratio to a backprop step (the same network,
    interleaved). Rows of (batch, backprop seconds, {rule: ratio})."""
    net = jbp.mlp(sizes, hidden=jbp.sigmoid, output=jbp.softmax)
    params = jbp.init(net, jax.random.key(seed), dtype=jnp.float32)
    rng = np.random.default_rng(seed)
    optimizer = optax.sgd(LEARNING_RATE)
    rules = {name: jbp.feedback.by_name(name, net, jax.random.key(seed + 1), jnp.float32)
             for name in jbp.feedback.KINDS}

    def make(rule):
        # A rule whose matrices learn (Kolen-Pollack) carries them from step to step, as fit's scan
        # does; a fixed rule's matrices are an argument, so that no step copies them out again.
        @jax.jit
        def step(carry, X, Y, fixed):
            params, state, learned = carry
            feedback = learned if rule.learns else fixed
            _, grads = jbp.loss_and_grads(net, params, X, Y, jbp.softmax_cross_entropy,
                                          feedback=None if rule.kind == "backprop" else feedback)
            (params, state, feedback, _), _ = apply(net, optimizer, (params, state, feedback, True), grads, 0.0, False)
            return (params, state, feedback if rule.learns else None), 0.0

        return step

    rows = []
    for batch in batch_sizes:
        X, Y = _problem(sizes, batch, rng)
        variants = {}
        for name, rule in rules.items():
            step = make(rule)
            fixed = None if name == "backprop" or rule.learns else rule
            carry = (params, optimizer.init(params), rule if rule.learns else None)
            jax.block_until_ready(step(carry, X, Y, fixed))
            variants[name] = (step, carry, fixed)
        times = {name: [] for name in variants}
        for _ in range(repeats):
            for name, (step, carry, fixed) in variants.items():
                start = time.perf_counter()
                for _ in range(steps):
                    carry, _ = step(carry, X, Y, fixed)
                jax.block_until_ready(carry)
                times[name].append((time.perf_counter() - start) / steps)
        medians = {name: statistics.median(t) for name, t in times.items()}
        rows.append((batch, medians["backprop"], {n: t / medians["backprop"] for n, t in medians.items() if n != "backprop"}))
    return rows


def main(argv=None) -> int:
    parser = _Parser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--sizes", default="784,512,512,10", help="layer widths, input first (default: %(default)s)")
    parser.add_argument("--batch-sizes", default="32,256,1024", help="comma-separated (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per variant and batch size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed run (default: %(default)s)")
    parser.add_argument("--norm-batch-sizes", default="32,256",
                        help="batch sizes of the per-example norm table, empty for none (default: %(default)s)")
    parser.add_argument("--rule-batch-sizes", default="32,256,1024",
                        help="batch sizes of the feedback-rule table, empty for none (default: %(default)s)")
    args = parser.parse_args(argv)
    sizes = _widths(args.sizes, "--sizes", at_least=2)
    batch_sizes = _widths(args.batch_sizes, "--batch-sizes")
    norm_batch_sizes = _widths(args.norm_batch_sizes, "--norm-batch-sizes", at_least=0, allow_empty=True)
    rule_batch_sizes = _widths(args.rule_batch_sizes, "--rule-batch-sizes", at_least=0, allow_empty=True)
    if args.repeats < 1 or args.steps < 1:
        raise SystemExit(f"bench.py: --repeats and --steps must be at least 1, got {args.repeats} and {args.steps}")

    print(f"machine: {machine()}")
    print(f"network {'-'.join(map(str, sizes))}, sigmoid hidden, softmax cross-entropy, float32; "
          f"one jitted step = forward + backward + SGD update")
    print(f"median of {args.repeats} interleaved runs of {args.steps} steps each\n")
    print(f"{'batch':>6}  {'jbp ms/step':>12}  {'autodiff ms/step':>16}  {'jbp/autodiff':>12}")
    for batch, jbp_s, ad_s, ratio in bench(sizes, batch_sizes, args.repeats, args.steps):
        print(f"{batch:>6}  {jbp_s * 1e3:>12.3f}  {ad_s * 1e3:>16.3f}  {ratio:>12.2f}")
    if norm_batch_sizes:
        print("\nper-example gradient norms: jbp.per_example_grad_norms against vmap(grad) then norms")
        print(f"{'batch':>6}  {'jbp ms':>12}  {'vmap(grad) ms':>16}  {'jbp/autodiff':>12}")
        for batch, jbp_s, ad_s, ratio in bench_norms(sizes, norm_batch_sizes, args.repeats, args.steps):
            print(f"{batch:>6}  {jbp_s * 1e3:>12.3f}  {ad_s * 1e3:>16.3f}  {ratio:>12.3f}")
    if rule_batch_sizes:
        print("\nfeedback rules: a training step with each rule, as a ratio to a backprop step")
        print(f"{'batch':>6}  {'backprop ms':>12}  " + "  ".join(f"{name:>6}" for name in jbp.feedback.KINDS[1:]))
        for batch, seconds, ratios in bench_rules(sizes, rule_batch_sizes, args.repeats, args.steps):
            print(f"{batch:>6}  {seconds * 1e3:>12.3f}  " + "  ".join(f"{ratios[name]:>6.2f}" for name in jbp.feedback.KINDS[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
