"""``jbp explain``: one sample's forward and backward pass, every number beside its equation.

With no options, Mazur's 2-2-2 example (the article's weights, sample and
learning rate, the biases kept as the article keeps them). ``--hidden``,
``--output``, ``--loss``, ``--x``, ``--y`` and ``--lr`` change it;
``--sizes`` or ``--seed`` draw a random network and sample instead; ``--run
RUN`` takes a trained run's network and parameters, and the first sample of
its data's test part. The text goes to standard output; ``--html FILE``
writes the same example as one self-contained page besides
(:mod:`jbp.explain.html`). Everything is computed in float64.
"""

import argparse
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jbp.activations import ACTIVATIONS
from jbp.cli import options
from jbp.explain import render_text, worked_example, write_html
from jbp.explain.html import check_destination, check_size, describe
from jbp.losses import LOSSES
from jbp.network import Dense, init, mlp
from jbp.run import check_data, check_output

LEARNING_RATE = 0.5  # Mazur's


def numbers(text: str) -> list[float]:
    """Comma-separated finite numbers: ``0.05,0.1``."""
    try:
        values = [float(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.05,0.1, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got {text!r}")
    return values


def add_parser(commands) -> None:
    explain = commands.add_parser(
        "explain", help="one sample's forward and backward pass, every number beside its equation",
        description="Print one sample's forward pass, BP1-BP4 and gradient-descent step, equation by equation "
                    "(Mazur's 2-2-2 example by default), and with --html write a page that draws the network and "
                    "steps through the passes.",
    )
    explain.add_argument("--sizes", type=options.sizes,
                         help="layer widths, input first, e.g. 3,4,2: a random network (default: Mazur's 2,2,2 with "
                              "the article's weights)")
    explain.add_argument("--hidden", type=options.activations,
                         help=f"hidden activation, or one per hidden layer: {', '.join(ACTIVATIONS)} (default sigmoid)")
    explain.add_argument("--output", type=options.choice("activation", list(ACTIVATIONS)),
                         help="output activation (default sigmoid)")
    explain.add_argument("--loss", type=options.choice("loss", list(LOSSES)),
                         help=f"per-sample cost: {', '.join(LOSSES)} (default squared_error, Mazur's; "
                              "softmax_cross_entropy for softmax outputs)")
    explain.add_argument("--seed", type=options.seed,
                         help="seed of the random network and sample, in [0, 2^64) (default 0; implies a random "
                              "network of --sizes, 2,2,2 without)")
    explain.add_argument("--run", dest="run_folder", type=pathlib.Path, metavar="RUN",
                         help="a run's folder (jbp train): its network, loss and parameters, and by default the first "
                              "sample of its data's test part")
    explain.add_argument("--x", type=numbers, metavar="X1,X2,...",
                         help="the input, comma-separated (default: Mazur's 0.05,0.1; random with --sizes; with --run, "
                              "raw inputs as in the run's data, put through its preprocessing)")
    explain.add_argument("--y", type=numbers, metavar="Y1,Y2,...",
                         help="the target, one number per output (default: Mazur's 0.01,0.99; a random class with "
                              "--sizes; the sample's class with --run)")
    explain.add_argument("--lr", type=options.positive_float,
                         help=f"learning rate η of the gradient-descent step shown (default {LEARNING_RATE}, Mazur's)")
    explain.add_argument("--html", type=pathlib.Path, metavar="FILE",
                         help="also write the example as one self-contained HTML page to FILE")
    explain.add_argument("--max-bytes", type=options.size, metavar="SIZE",
                         help="with --run: largest file read (default 2G)")
    explain.set_defaults(run=explain_command)


def _sample(values: "list[float] | None", width: int, option: str, what: str):
    if values is not None and len(values) != width:
        raise ValueError(f"{option} has {len(values)} number{'s' * (len(values) != 1)}; the network takes "
                         f"{width} {what}")
    return None if values is None else jnp.asarray(values, jnp.float64)


def _random_target(key, net) -> jax.Array:
    """A one-hot class, or 0 or 1 for a single output."""
    n = net.sizes[-1]
    if n == 1:
        return jax.random.bernoulli(key, 0.5, (1,)).astype(jnp.float64)
    return jax.nn.one_hot(jax.random.randint(key, (), 0, n), n, dtype=jnp.float64)


def _mazur(args):
    """Mazur's network and sample, with what the options change."""
    from jbp import mazur

    hidden = options.per_layer(args.hidden or ["sigmoid"], mazur.NET.sizes)
    net = mlp(mazur.NET.sizes, hidden=hidden, output=args.output or "sigmoid")
    params, x, y = mazur.problem()
    x = x if args.x is None else _sample(args.x, 2, "--x", "inputs")
    y = y if args.y is None else _sample(args.y, 2, "--y", "outputs")
    changed = any(v is not None for v in (args.hidden, args.output, args.loss, args.x, args.y, args.lr))
    title = "Mazur's 2-2-2 network, changed" if changed else "Mazur's 2-2-2 example"
    loss = args.loss or ("softmax_cross_entropy" if args.output == "softmax" else "squared_error")
    return net, params, x, y, loss, title, False


def _problem(args):
    """The network, parameters, sample, loss, title, and whether the biases are updated."""
    if args.run_folder is not None:
        given = [name for name in ("sizes", "hidden", "output", "loss", "seed") if getattr(args, name) is not None]
        if given:
            raise ValueError(f"--run takes the network, its activations and loss from the run; leave out "
                             f"{', '.join('--' + g for g in given)}")
        return _from_run(args) + (True,)
    if args.sizes is None and args.seed is None:
        return _mazur(args)
    sizes = args.sizes or [2, 2, 2]
    options.check_memory(sizes, None, 1, dtype=jnp.float64)  # before XLA is asked for the weights
    hidden = options.per_layer(args.hidden or ["sigmoid"], sizes)
    output = args.output or "sigmoid"
    net = mlp(sizes, hidden=hidden, output=output)
    loss = args.loss or ("softmax_cross_entropy" if output == "softmax" else "squared_error")
    key_params, key_x, key_y = jax.random.split(options.key_from_seed(args.seed or 0), 3)
    params = init(net, key_params, dtype=jnp.float64)
    x = _sample(args.x, sizes[0], "--x", "inputs")
    y = _sample(args.y, sizes[-1], "--y", "outputs")
    x = jax.random.normal(key_x, (sizes[0],), jnp.float64) if x is None else x
    y = _random_target(key_y, net) if y is None else y
    title = f"A random {'-'.join(map(str, sizes))} network (seed {args.seed or 0})"
    return net, params, x, y, loss, title, True


def _from_run(args):
    from jbp import data as datasets
    from jbp.run import load_run

    run = load_run(args.run_folder, limit=args.max_bytes)
    net, config = run.net, run.config
    params = tuple(Dense(jnp.asarray(layer.W, jnp.float64), jnp.asarray(layer.b, jnp.float64)) for layer in run.params)
    if args.x is not None:
        x = run.preprocessing.inputs(np.asarray([args.x]), "--x")[0]
        y = _sample(args.y, net.sizes[-1], "--y", "outputs")
        if y is None:
            raise ValueError("with --run and --x, give the target too: --y, one number per output "
                             f"({net.sizes[-1]})")
        which = "the input given"
    else:
        try:
            dataset = datasets.load(config["data"], args.max_bytes, standardize=config["standardize"],
                                    target=config["target"], header=config["header"])
        except (OSError, ValueError) as err:
            raise ValueError(f"--run {args.run_folder}: its data {config['data']!r} cannot be read ({err}); "
                             "give the sample with --x and --y") from None
        check_data(config, dataset, args.run_folder, "give the sample with --x and --y")
        part = next((p for p in (dataset.test, dataset.validation, dataset.train) if len(p.X)), None)
        if part is None:
            raise ValueError(f"--run {args.run_folder}: its data {config['data']!r} has no samples; give one with "
                             "--x and --y")
        x = part.X[0]
        y = _sample(args.y, net.sizes[-1], "--y", "outputs")
        if y is None:  # the sample's target as the run trained on it: one-hot, or the label for one output
            y = part.Y[0] if part.Y.shape[-1] == net.sizes[-1] else np.asarray([part.labels[0]], np.float64)
        which = f"the first sample of {config['data']}"
    title = f"The run {args.run_folder.name}, on {which}"
    rule = getattr(run.feedback, "kind", "backprop")
    if rule != "backprop":
        title += f" (trained with the {rule} rule; shown: backpropagation's gradient)"
    return net, params, jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), run.loss, title


def _inputs(args) -> list[pathlib.Path]:
    """The files ``--run`` reads: the run's folder and its data."""
    from jbp.run import run_inputs

    return [] if args.run_folder is None else run_inputs(args.run_folder)


def explain_command(args) -> int:
    if args.html is not None:  # before any work; again, with the run's data among the inputs, once they are known
        check_destination(args.html)
        check_output(args.html, option="--html")
    with jax.enable_x64(True):
        net, params, x, y, loss, title, update_biases = _problem(args)
        if args.html is not None:
            check_size(net.sizes)
            check_output(args.html, inputs=_inputs(args), option="--html")
        example = worked_example(net, params, x, y, loss, args.lr or LEARNING_RATE, update_biases, title=title)
    print(f"{title}. {describe(example)}")
    print(render_text(example))
    if args.html is not None:
        write_html(example, args.html)
        print(f"page written to {args.html}", file=sys.stderr)
    return 0
