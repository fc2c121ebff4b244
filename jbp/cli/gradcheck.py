"""``jbp gradcheck``: backpropagation against central differences, in float64."""

import jax
import jax.numpy as jnp

from jbp.cli import options
from jbp.cli.train import net_options
from jbp.gradcheck import check_grads
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
    for l, (a, n) in enumerate(zip(check.analytic, check.numerical), 1):
        print(f"  layer {l}: max |backprop - finite differences|  W {float(jnp.max(jnp.abs(a.W - n.W))):.3e}"
              f"  b {float(jnp.max(jnp.abs(a.b - n.b))):.3e}")
    passed = check.relative_difference < args.tolerance
    print(f"relative difference ‖num - backprop‖ / ‖num + backprop‖ = {check.relative_difference:.3e} "
          f"({'passes' if passed else 'FAILS'}: tolerance {args.tolerance:g})")
    return 0 if passed else 1
