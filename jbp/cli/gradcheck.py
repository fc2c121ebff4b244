"""``jbp gradcheck``: backpropagation against central differences, in float64.

Prints a table of the relative difference of every layer's ``W`` and ``b``
with its reading (:data:`jbp.gradcheck.READINGS`), then the whole gradient's.
Exit status 1 when a layer's gradient is wrong (relative difference above
1e-2) or the whole one is above ``--tolerance``; 0 otherwise.
"""

import jax
import jax.numpy as jnp

from jbp.cli import options
from jbp.cli.train import net_options
from jbp.gradcheck import READINGS, check_grads
from jbp.losses import get_loss
from jbp.network import init, mlp

MAX_PARAMETERS = 100_000  # central differences cost 2 passes per parameter: beyond this, hours
MAX_SAMPLES = 100_000


def add_parser(commands) -> None:
    gradcheck = commands.add_parser(
        "gradcheck", help="finite-difference check of the gradient",
        description="Compare jbp's gradient with central differences (float64) on a random network and data.",
    )
    net_options(gradcheck, "layer widths, input first (default 3,5,3)", hidden="sigmoid", output="sigmoid",
                loss="binary_cross_entropy")
    gradcheck.add_argument("--samples", type=options.positive_int, default=5, help="rows of random data (default 5)")
    gradcheck.add_argument("--eps", type=options.positive_float, default=1e-4, help="finite-difference step (default 1e-4)")
    gradcheck.add_argument("--tolerance", type=options.positive_float, default=1e-7,
                           help="largest relative difference that passes (default 1e-7)")
    gradcheck.set_defaults(run=gradcheck_command)


def gradcheck_command(args) -> int:
    sizes = args.sizes or [3, 5, 3]
    count = sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    if count > MAX_PARAMETERS:
        raise ValueError(f"--sizes {','.join(map(str, sizes))} has {count:,} parameters; central differences need "
                         f"two passes for each, so gradcheck takes networks of at most {MAX_PARAMETERS:,}")
    if args.samples > MAX_SAMPLES:
        raise ValueError(f"--samples {args.samples}: at most {MAX_SAMPLES:,} rows")
    hidden = options.per_layer(args.hidden or ["sigmoid"], sizes)
    with jax.enable_x64(True):
        net = mlp(sizes, hidden=hidden, output=args.output or "sigmoid")
        loss = get_loss(args.loss or "binary_cross_entropy")
        key_params, key_x, key_y = jax.random.split(options.key_from_seed(args.seed or 0), 3)
        params = init(net, key_params, dtype=jnp.float64)
        X = jax.random.normal(key_x, (args.samples, sizes[0]), jnp.float64)
        labels = jax.random.randint(key_y, (args.samples,), 0, sizes[-1])
        Y = jax.nn.one_hot(labels, sizes[-1], dtype=jnp.float64)
        if sizes[-1] == 1:
            Y = jax.random.bernoulli(key_y, 0.5, (args.samples, 1)).astype(jnp.float64)
        check = check_grads(net, params, X, Y, loss, l2=args.l2 or 0.0, eps=args.eps)
    print(f"network {net}, loss {loss.name}, l2 {args.l2 or 0.0}, {args.samples} samples, float64, ε = {args.eps}")
    print(table(check))
    for name, reading in READINGS.items():
        print(f"  {name:<10}  {reading}")
    passed = check.relative_difference < args.tolerance
    if check.wrong:
        print(f"wrong: {', '.join(check.wrong)} (a bug in one layer's backward step shows in that layer "
              "and the layers below it)")
    print(f"relative difference ‖num - backprop‖ / ‖num + backprop‖ = {check.relative_difference:.3e} "
          f"({'passes' if passed else 'FAILS'}: tolerance {args.tolerance:g})")
    return 0 if passed and not check.wrong else 1


def table(check) -> str:
    """One row per layer's ``W`` and ``b``, then the whole gradient: relative difference,
    largest absolute difference, verdict."""
    rows = [(layer.name, layer.relative_difference, layer.max_abs_difference, layer.verdict) for layer in check.layers]
    whole = max((layer.max_abs_difference for layer in check.layers), default=0.0)
    rows.append(("whole", check.relative_difference, whole, check.verdict))
    width = max(len(row[0]) for row in rows)
    lines = [f"  {'parameters':<{width}}  {'relative error':>14}  {'max |difference|':>16}  verdict"]
    lines += [f"  {name:<{width}}  {rel:>14.3e}  {gap:>16.3e}  {verdict}" for name, rel, gap, verdict in rows]
    return "\n".join(lines)
