"""The ``jbp`` command: ``train``, ``mazur``, ``gradcheck`` and ``bench``.

``jbp train`` trains on the bundled digits by default and writes, in its
output folder: ``config.json`` (the run's options), ``metrics.jsonl`` (one
JSON line per epoch), ``checkpoint.ckpt`` (parameters, optimizer state, epoch,
key, configuration and history, after every epoch), ``params.npz`` (the final
parameters as ``W1, b1, …``), ``summary.json`` (final train, validation and
test metrics) and ``plot.png`` (loss and accuracy per epoch, with the
``plots`` extra). ``jbp train --resume DIR`` continues the run saved in DIR
up to ``--epochs`` epochs in all, ending with exactly the parameters an
uninterrupted run would have.

Bad options exit with status 2 and a one-line reason; a diverging run exits
with status 1, its last finite checkpoint left in place.
"""

import argparse
import datetime
import inspect
import json
import pathlib
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbp import checkpoint as ckpt
from jbp import data as datasets
from jbp.activations import ACTIVATIONS, get_activation
from jbp.gradcheck import check_grads
from jbp.losses import LOSSES, get_loss
from jbp.network import init, mlp
from jbp.train import TrainingDiverged, evaluate, fit

EXCLUDED_OPTIMIZERS = {"lbfgs", "scale_by_learning_rate", "scale_by_rprop"}


def optimizers() -> list[str]:
    """optax's optimizers that take a learning rate first and need nothing else."""
    names = []
    for name in sorted(dir(optax)):
        fn = getattr(optax, name)
        if name.startswith("_") or name in EXCLUDED_OPTIMIZERS or not inspect.isfunction(fn):
            continue
        params = list(inspect.signature(fn).parameters.values())
        if params and params[0].name == "learning_rate" and all(
            p.default is not inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in params[1:]
        ):
            names.append(name)
    return names


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    """``optax.<name>(learning_rate)``, for a name from :func:`optimizers`."""
    known = optimizers()
    if name not in known:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(known)}")
    return getattr(optax, name)(learning_rate)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 64,32,10, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive widths, got {text!r}")
    return sizes


def _choice(kind: str, known: Sequence[str]):
    def parse(text: str) -> str:
        if text not in known:
            raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}; expected one of {', '.join(known)}")
        return text

    return parse


def _activations(text: str) -> list[str]:
    names = text.split(",")
    for name in names:
        _choice("activation", list(ACTIVATIONS))(name)
    return names


def _net_options(parser: argparse.ArgumentParser, sizes_help: str, hidden: str, output: str, loss: str) -> None:
    parser.add_argument("--sizes", type=_sizes, help=sizes_help)
    parser.add_argument(
        "--hidden", type=_activations,
        help=f"hidden activation, or one per hidden layer comma-separated: {', '.join(ACTIVATIONS)} (default {hidden})",
    )
    parser.add_argument("--output", type=_choice("activation", list(ACTIVATIONS)), help=f"output activation (default {output})")
    parser.add_argument("--loss", type=_choice("loss", list(LOSSES)), help=f"per-sample cost: {', '.join(LOSSES)} (default {loss})")
    parser.add_argument("--l2", type=float, help="L2 penalty λ on the weights, Coursera's (default 0)")
    parser.add_argument("--seed", type=int, help="seed of the initial weights and the shuffles (default 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jbp", description="Backpropagation written by hand, compiled by JAX.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser(
        "train", help="train a network", description="Train a multi-layer perceptron with jbp's hand-written gradients.",
    )
    one_output = "; for one output, "
    _net_options(
        train, "layer widths, input first, e.g. 64,32,10 (default: the data's inputs, 128, its outputs; xor: 2,4,1)",
        hidden="relu; xor: tanh", output=f"softmax{one_output}sigmoid",
        loss=f"softmax_cross_entropy{one_output}binary_cross_entropy",
    )
    train.add_argument("--optimizer", type=_choice("optimizer", optimizers()), help="any optax optimizer by name (default adam)")
    train.add_argument("--lr", type=float, help="learning rate (default 0.001; xor: 0.1)")
    train.add_argument("--epochs", type=_positive_int, help="epochs in all, counting those of a resumed run (default 40; xor: 300)")
    train.add_argument("--batch-size", type=_positive_int, help="samples per step (default 32; xor: 4)")
    train.add_argument("--drop-last", action="store_true", default=None, help="skip each epoch's last, smaller minibatch")
    train.add_argument("--data", help="digits, xor, or mnist:FOLDER (IDX files or mnist.npz) (default digits)")
    train.add_argument("--out", type=pathlib.Path, help="output folder (default runs/DATA-TIME)")
    train.add_argument("--resume", type=pathlib.Path, metavar="DIR", help="continue the run saved in DIR")
    train.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    commands.add_parser("mazur", help="Mazur's step-by-step example, every number against the article")

    gradcheck = commands.add_parser(
        "gradcheck", help="finite-difference check of the gradient",
        description="Compare jbp's gradient with central differences (float64) on a random network and data.",
    )
    _net_options(gradcheck, "layer widths, input first (default 3,5,3)", hidden="sigmoid", output="sigmoid", loss="binary_cross_entropy")
    gradcheck.add_argument("--samples", type=_positive_int, default=5, help="rows of random data (default 5)")
    gradcheck.add_argument("--eps", type=float, default=1e-4, help="finite-difference step (default 1e-4)")
    gradcheck.add_argument("--tolerance", type=float, default=1e-7, help="largest relative difference that passes (default 1e-7)")

    bench = commands.add_parser(
        "bench", help="benchmark one training step against jax.value_and_grad", add_help=False,
        description="Runs experiments/bench.py from the source checkout; --help there lists its options.",
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of experiments/bench.py")
    return parser


TRAIN_DEFAULTS = {
    "hidden": ["relu"], "optimizer": "adam", "lr": 0.001, "l2": 0.0, "epochs": 40,
    "batch_size": 32, "seed": 0, "data": "digits", "drop_last": False,
}
# Where a data set wants other defaults: XOR's four points, one output.
DATA_DEFAULTS = {
    "xor": {"sizes": [2, 4, 1], "hidden": ["tanh"], "lr": 0.1, "epochs": 300, "batch_size": 4},
}
HIDDEN_WIDTH = 128
CONFIG_KEYS = ("sizes", "hidden", "output", "loss", "optimizer", "lr", "l2", "epochs", "batch_size", "seed", "data", "drop_last")


def _fail(message: str, status: int = 2) -> int:
    print(f"jbp: error: {message}", file=sys.stderr)
    return status


def _train_config(args, dataset) -> dict:
    config = {key: getattr(args, key) for key in CONFIG_KEYS}
    defaults = {**TRAIN_DEFAULTS, **DATA_DEFAULTS.get(config["data"] or TRAIN_DEFAULTS["data"], {})}
    for key, value in defaults.items():
        if config[key] is None:
            config[key] = value
    n_in, n_out = dataset.train.X.shape[1], dataset.train.Y.shape[1]
    binary = n_out == 1
    config["sizes"] = config["sizes"] or [n_in, HIDDEN_WIDTH, n_out]
    config["output"] = config["output"] or ("sigmoid" if binary else "softmax")
    config["loss"] = config["loss"] or ("binary_cross_entropy" if binary else "softmax_cross_entropy")
    sizes = config["sizes"]
    if sizes[0] != n_in or sizes[-1] != n_out:
        raise ValueError(
            f"--sizes {','.join(map(str, sizes))} does not fit --data {config['data']}: "
            f"it has {n_in} inputs and {n_out} outputs"
        )
    if config["l2"] < 0 or not np.isfinite(config["l2"]):
        raise ValueError(f"--l2 must be a finite number ≥ 0, got {config['l2']}")
    if not config["lr"] > 0:
        raise ValueError(f"--lr must be positive, got {config['lr']}")
    if config["batch_size"] > len(dataset.train.X):
        raise ValueError(f"--batch-size {config['batch_size']} is larger than the {len(dataset.train.X)} training samples")
    return config


def _build(config: dict):
    net = mlp(config["sizes"], hidden=[get_activation(h) for h in _per_layer(config)], output=config["output"])
    optimizer = make_optimizer(config["optimizer"], config["lr"])
    key = jax.random.key(config["seed"])
    init_key, shuffle_key = jax.random.split(key)
    return net, optimizer, init_key, shuffle_key


def _per_layer(config: dict) -> list[str]:
    hidden, n_hidden = config["hidden"], len(config["sizes"]) - 2
    if len(hidden) == 1:
        return hidden * n_hidden
    if len(hidden) != n_hidden:
        raise ValueError(f"--hidden names {len(hidden)} activations for {n_hidden} hidden layers")
    return hidden


def _write_json(path: pathlib.Path, value) -> None:
    ckpt.atomic_write(path, lambda f: f.write((json.dumps(value, indent=2) + "\n").encode()))


def _write_metrics(path: pathlib.Path, history: Sequence[dict]) -> None:
    ckpt.atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in history).encode()))


def _plot(path: pathlib.Path, history: Sequence[dict], title: str) -> "str | None":
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is missing (pip install 'jbp[plots]')"
    epochs = [r["epoch"] for r in history]
    has_accuracy = "accuracy" in history[0]
    fig, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 5, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [r["loss"] for r in history], label="train")
    if "val_loss" in history[0]:
        ax.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax.set(xlabel="epoch", ylabel="mean cost per sample", title="loss", yscale="log")
    ax.legend()
    if has_accuracy:
        ax = axes[0][1]
        ax.plot(epochs, [r["accuracy"] for r in history], label="train")
        if "val_accuracy" in history[0]:
            ax.plot(epochs, [r["val_accuracy"] for r in history], label="validation")
        ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    ckpt.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return None


def train_command(args) -> int:
    given = {key for key in CONFIG_KEYS if getattr(args, key) is not None}
    if args.resume is not None:
        out = args.resume
        saved = out / "checkpoint.ckpt"
        if not saved.is_file():
            return _fail(f"--resume {out}: no checkpoint.ckpt there")
        config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else None
        if config is None:
            return _fail(f"--resume {out}: no config.json there")
        conflicts = [f"--{k.replace('_', '-')}" for k in sorted(given - {"epochs"}) if getattr(args, k) != config[k]]
        if conflicts:
            return _fail(f"--resume continues the saved run; {', '.join(conflicts)} differ from its configuration (see {out / 'config.json'})")
        if args.out is not None and args.out != out:
            return _fail("--out and --resume name different folders; a resumed run stays in its folder")
        config["epochs"] = args.epochs or config["epochs"]
        dataset = datasets.load(config["data"])
    else:
        dataset = datasets.load(args.data or TRAIN_DEFAULTS["data"])
        config = _train_config(args, dataset)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = args.out or pathlib.Path("runs") / f"{config['data'].split(':')[0]}-{stamp}"
        if (out / "checkpoint.ckpt").exists():
            return _fail(f"{out} already holds a run: continue it with --resume {out}, or choose another --out")

    net, optimizer, init_key, shuffle_key = _build(config)
    params = init(net, init_key)
    opt_state, start, history = None, 0, []
    if args.resume is not None:
        state = ckpt.load(out / "checkpoint.ckpt", params_like=params, opt_state_like=optimizer.init(params))
        differ = sorted(k for k in CONFIG_KEYS if k != "epochs" and state.config.get(k) != config[k])
        if differ:
            return _fail(f"{out / 'config.json'} and the checkpoint disagree on {', '.join(differ)}; "
                         "the checkpoint's configuration is the run's")
        params, opt_state, start, history = state.params, state.opt_state, state.epoch, state.history
        shuffle_key = state.key  # the run's own key, as saved
        if start >= config["epochs"]:
            return _fail(f"the run in {out} has done {start} epochs already; ask for more with --epochs")
        _write_metrics(out / "metrics.jsonl", history)  # the checkpoint is the record of what was done
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp"):  # a write that a killed run left half done
        stale.unlink()
    _write_json(out / "config.json", config)
    if args.resume is None:
        _write_metrics(out / "metrics.jsonl", [])

    done = list(history)

    def on_epoch(record, params, opt_state):
        done.append(record)
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        ckpt.save(
            out / "checkpoint.ckpt", params=params, opt_state=opt_state, epoch=record["epoch"],
            key=shuffle_key, config=config, history=done,
        )

    train, val = dataset.train, dataset.validation
    progress = not args.no_progress and sys.stderr.isatty() and _has_tqdm()
    try:
        result = fit(
            net, params, train.X, train.Y, loss=config["loss"], optimizer=optimizer,
            epochs=config["epochs"], batch_size=config["batch_size"], key=shuffle_key, l2=config["l2"],
            validation=(val.X, val.Y), drop_last=config["drop_last"], opt_state=opt_state,
            start_epoch=start, history=history, on_epoch=on_epoch, progress=progress,
        )
    except TrainingDiverged as err:
        ckpt.save_params(out / "params.npz", err.params)
        kept = (f"the checkpoint of epoch {done[-1]['epoch']}, the last finished, is kept"
                if done else "no epoch finished, so there is no checkpoint")
        return _fail(f"{err}; they are saved in {out / 'params.npz'}, and {kept}", status=1)

    ckpt.save_params(out / "params.npz", result.params)
    summary = {"epochs": config["epochs"]}
    for name, split in (("train", dataset.train), ("validation", dataset.validation), ("test", dataset.test)):
        summary.update({f"{name}_{k}": v for k, v in evaluate(net, result.params, split.X, split.Y, config["loss"]).items()})
    _write_json(out / "summary.json", summary)
    note = _plot(out / "plot.png", result.history, f"{config['data']}: {'-'.join(map(str, config['sizes']))}, "
                 f"{config['optimizer']} lr {config['lr']}")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("test_"))
    print(f"{config['epochs']} epochs: {shown}; saved in {out}")
    if note:
        print(note, file=sys.stderr)
    return 0


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def gradcheck_command(args) -> int:
    sizes = args.sizes or [3, 5, 3]
    config = {"sizes": sizes, "hidden": args.hidden or ["sigmoid"]}
    with jax.enable_x64(True):
        net = mlp(sizes, hidden=_per_layer(config), output=args.output or "sigmoid")
        loss = get_loss(args.loss or "binary_cross_entropy")
        key_params, key_x, key_y = jax.random.split(jax.random.key(args.seed or 0), 3)
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


def bench_command(argv: Sequence[str]) -> int:
    script = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench.py"
    if not script.is_file():
        return _fail(
            "jbp bench runs experiments/bench.py from a source checkout (its baseline uses jax.grad, "
            "which the installed package does not ship); install with pip install -e from a clone"
        )
    import runpy

    saved, sys.argv = sys.argv, [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        return int(done.code or 0)
    finally:
        sys.argv = saved
    return 0


def main(argv: "Sequence[str] | None" = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its options are the benchmark script's own
        return bench_command(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return train_command(args)
        if args.command == "mazur":
            from jbp.mazur import main as mazur

            return mazur()
        return gradcheck_command(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        return _fail(" ".join(str(err).split()))


if __name__ == "__main__":
    sys.exit(main())
