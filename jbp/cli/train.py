"""``jbp train``: train a network, write the run into a folder it owns, resume it.

The folder (:mod:`jbp.run`) holds ``config.json`` (the run's options),
``metrics.jsonl`` (one JSON line per epoch), ``checkpoint.ckpt`` (parameters,
optimizer state, epoch, key, configuration and history, after every epoch),
``params.npz`` (the final parameters as ``W1, b1, …``), ``summary.json``
(final train, validation and test metrics) and ``plot.png`` (with the
``plots`` extra). ``--resume DIR`` continues the run saved in DIR up to
``--epochs`` epochs in all, ending with exactly the parameters an
uninterrupted run would have.

Exit status: 0 done; 1 the run stopped (diverged, disk full, a file could not
be written: the last finished epoch's checkpoint is kept, and the message
says so); 2 bad options or input; 130 interrupted (Ctrl-C), with what was
done saved.
"""

import argparse
import errno
import json
import math
import pathlib
import sys
from collections.abc import Sequence

import jax

from jbp import checkpoint as ckpt
from jbp import data as datasets
from jbp.activations import ACTIVATIONS, get_activation
from jbp.cli import options
from jbp.files import FileFormatError, atomic_write, max_bytes, read_into, regular_file
from jbp.losses import LOSSES
from jbp.network import init, mlp
from jbp.run import RunFolder
from jbp.train import TrainingDiverged, evaluate, fit

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
CONFIG_LIMIT = 1 << 20  # config.json is a few hundred bytes; a megabyte is more than any honest one


def add_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="train a network", description="Train a multi-layer perceptron with jbp's hand-written gradients.",
    )
    one_output = "; for one output, "
    net_options(
        train, "layer widths, input first, e.g. 64,32,10 (default: the data's inputs, 128, its outputs; xor: 2,4,1)",
        hidden="relu; xor: tanh", output=f"softmax{one_output}sigmoid",
        loss=f"softmax_cross_entropy{one_output}binary_cross_entropy",
    )
    train.add_argument("--optimizer", type=options.choice("optimizer", options.optimizers()),
                       help="any optax optimizer by name (default adam)")
    train.add_argument("--lr", type=options.positive_float, help="learning rate, finite and > 0 (default 0.001; xor: 0.1)")
    train.add_argument("--epochs", type=options.positive_int, help="epochs in all, counting those of a resumed run (default 40; xor: 300)")
    train.add_argument("--batch-size", type=options.positive_int, help="samples per step (default 32; xor: 4)")
    train.add_argument("--drop-last", action="store_true", default=None, help="skip each epoch's last, smaller minibatch")
    train.add_argument("--data", help="digits, xor, or mnist:FOLDER (IDX files or mnist.npz) (default digits)")
    train.add_argument("--out", type=pathlib.Path,
                       help="output folder, new or empty (default: a new runs/DATA-TIME)")
    train.add_argument("--resume", type=pathlib.Path, metavar="DIR", help="continue the run saved in DIR")
    train.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    train.add_argument("--max-bytes", type=options.size, metavar="SIZE",
                       help="largest file or archive member read, e.g. 4G (default 2G, or $JBP_MAX_BYTES)")
    train.set_defaults(run=train_command)


def net_options(parser: argparse.ArgumentParser, sizes_help: str, hidden: str, output: str, loss: str) -> None:
    parser.add_argument("--sizes", type=options.sizes, help=sizes_help)
    parser.add_argument(
        "--hidden", type=options.activations,
        help=f"hidden activation, or one per hidden layer comma-separated: {', '.join(ACTIVATIONS)} (default {hidden})",
    )
    parser.add_argument("--output", type=options.choice("activation", list(ACTIVATIONS)), help=f"output activation (default {output})")
    parser.add_argument("--loss", type=options.choice("loss", list(LOSSES)), help=f"per-sample cost: {', '.join(LOSSES)} (default {loss})")
    parser.add_argument("--l2", type=options.non_negative_float, help="L2 penalty λ on the weights, Coursera's (default 0)")
    parser.add_argument("--seed", type=options.seed, help="seed of the initial weights and the shuffles, in [0, 2^64) (default 0)")


def fail(message: str, status: int = 2) -> int:
    print(f"jbp: error: {' '.join(str(message).split())}", file=sys.stderr)
    return status


def _check_config(config, where: str) -> dict:
    """The schema of a run's configuration: every key, its type and range."""
    if not isinstance(config, dict):
        raise FileFormatError(f"{where} must be a JSON object, got {type(config).__name__}")
    if set(config) != set(CONFIG_KEYS):
        missing, extra = sorted(set(CONFIG_KEYS) - set(config)), sorted(set(config) - set(CONFIG_KEYS))
        raise FileFormatError(
            f"{where} has the wrong keys" + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(extra)}" if extra else "")
        )
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    checks = {
        "sizes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(whole(s) and s >= 1 for s in v), "at least two positive widths"),
        "hidden": (lambda v: isinstance(v, list) and len(v) >= 1 and all(h in ACTIVATIONS for h in v), "a list of activation names"),
        "output": (lambda v: v in ACTIVATIONS, "an activation name"),
        "loss": (lambda v: v in LOSSES, "a loss name"),
        "optimizer": (lambda v: v in options.optimizers(), "an optax optimizer's name"),
        "lr": (lambda v: number(v) and v > 0, "a finite number > 0"),
        "l2": (lambda v: number(v) and v >= 0, "a finite number ≥ 0"),
        "epochs": (lambda v: whole(v) and v >= 1, "a positive whole number"),
        "batch_size": (lambda v: whole(v) and v >= 1, "a positive whole number"),
        "seed": (lambda v: whole(v) and 0 <= v < options.SEED_LIMIT, "a whole number in [0, 2^64)"),
        "data": (lambda v: isinstance(v, str) and v != "", "a data set's name"),
        "drop_last": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key, (ok, expected) in checks.items():
        if not ok(config[key]):
            raise FileFormatError(f"{where}: {key} must be {expected}, got {config[key]!r:.80}")
    options.per_layer(config["hidden"], config["sizes"])
    return config


def _read_config(path: pathlib.Path) -> dict:
    path = regular_file(path, "config.json")
    size = path.stat().st_size
    if size > CONFIG_LIMIT:
        raise FileFormatError(f"{path} is {size} bytes; a run's configuration is far smaller (edited by hand?)")
    with open(path, "rb") as f:
        raw = read_into(f, size, path, "config.json").tobytes()
    try:
        config = json.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as err:
        raise FileFormatError(f"{path} is not valid JSON: {err}") from None
    return _check_config(config, str(path))


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
    if config["batch_size"] > len(dataset.train.X):
        raise ValueError(f"--batch-size {config['batch_size']} is larger than the {len(dataset.train.X)} training samples")
    return _check_config(config, "the options")


def _build(config: dict):
    net = mlp(config["sizes"], hidden=[get_activation(h) for h in options.per_layer(config["hidden"], config["sizes"])],
              output=config["output"])
    key = options.key_from_seed(config["seed"])
    init_key, shuffle_key = jax.random.split(key)
    optimizer = options.make_optimizer(config["optimizer"], config["lr"], key=jax.random.fold_in(key, 2))
    return net, optimizer, init_key, shuffle_key


def write_json(path: pathlib.Path, value) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(value, indent=2, allow_nan=False) + "\n").encode()))


def _write_metrics(path: pathlib.Path, history: Sequence[dict]) -> None:
    atomic_write(path, lambda f: f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in history).encode()))


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
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return None


def _has_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def _resume(folder: RunFolder, args, given: set):
    """The configuration and data set of the run to continue, checked against the options given."""
    config = _read_config(folder / "config.json")
    conflicts = [f"--{k.replace('_', '-')}" for k in sorted(given - {"epochs"}) if getattr(args, k) != config[k]]
    if conflicts:
        raise ValueError(f"--resume continues the saved run; {', '.join(conflicts)} differ from its "
                         f"configuration (see {folder / 'config.json'})")
    if args.out is not None and args.out.resolve() != folder.path.resolve():
        raise ValueError("--out and --resume name different folders; a resumed run stays in its folder")
    config["epochs"] = args.epochs or config["epochs"]
    return config, datasets.load(config["data"], limit=args.max_bytes)


def _load_state(folder: RunFolder, config: dict, params, optimizer, limit) -> ckpt.Checkpoint:
    """The checkpoint of the run to continue, checked against its configuration."""
    state = ckpt.load(folder / "checkpoint.ckpt", params_like=params, opt_state_like=optimizer.init(params), limit=limit)
    differ = sorted(k for k in CONFIG_KEYS if k != "epochs" and state.config.get(k) != config[k])
    if differ:
        raise FileFormatError(f"{folder / 'config.json'} and the checkpoint disagree on {', '.join(differ)}; "
                              "the checkpoint's configuration is the run's")
    if state.epoch >= config["epochs"]:
        raise ValueError(f"the run in {folder.path} has done {state.epoch} epochs already; ask for more with --epochs")
    return state


def train_command(args) -> int:
    max_bytes(args.max_bytes)  # a bad $JBP_MAX_BYTES is refused before any work
    given = {key for key in CONFIG_KEYS if getattr(args, key) is not None}
    if args.sizes is not None:  # a network that cannot fit is refused before the data are read
        options.check_memory(args.sizes, None, args.batch_size or 1)
    if args.resume is not None:
        with RunFolder.existing(args.resume) as folder:
            config, dataset = _resume(folder, args, given)
            net, optimizer, init_key, _ = _build(config)
            state = _load_state(folder, config, init(net, init_key), optimizer, args.max_bytes)
            return _train(folder, config, dataset, net, optimizer, state.params, state.opt_state, state.epoch,
                          state.history, state.key, args)  # the run's own key, as saved
    dataset = datasets.load(args.data or TRAIN_DEFAULTS["data"], limit=args.max_bytes)
    config = _train_config(args, dataset)
    net, optimizer, init_key, shuffle_key = _build(config)
    options.check_memory(config["sizes"], optimizer, config["batch_size"])
    params = init(net, init_key)
    with RunFolder.new(args.out, config["data"].split(":")[0]) as folder:
        return _train(folder, config, dataset, net, optimizer, params, None, 0, [], shuffle_key, args)


def _train(folder, config, dataset, net, optimizer, params, opt_state, start, history, shuffle_key, args) -> int:
    """The run itself, in a folder this process holds."""
    out = folder.path
    folder.clean_temporaries()
    write_json(out / "config.json", config)
    _write_metrics(out / "metrics.jsonl", history)  # the checkpoint is the record of what was done

    done = list(history)
    last = {"params": params}

    def on_epoch(record, params, opt_state):
        ckpt.save(out / "checkpoint.ckpt", params=params, opt_state=opt_state, epoch=record["epoch"],
                  key=shuffle_key, config=config, history=done + [record])
        done.append(record)
        last["params"] = params
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def kept() -> str:
        return (f"the checkpoint of epoch {done[-1]['epoch']}, the last finished, is kept in {out}"
                if done else f"no epoch finished, so {out} holds no checkpoint")

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
        return fail(f"{err}; they are saved in {out / 'params.npz'}, and {kept()}", status=1)
    except KeyboardInterrupt:
        if done:
            ckpt.save_params(out / "params.npz", last["params"])
            return fail(f"interrupted; {kept()}, its parameters in {out / 'params.npz'}: "
                        f"continue with jbp train --resume {out}", status=130)
        return fail(f"interrupted; {kept()}", status=130)
    except OSError as err:
        what = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        return fail(f"{what} ({err.filename or out}); {kept()}", status=1)

    ckpt.save_params(out / "params.npz", result.params)
    summary = {"epochs": config["epochs"]}
    for name, split in (("train", dataset.train), ("validation", dataset.validation), ("test", dataset.test)):
        summary.update({f"{name}_{k}": v for k, v in evaluate(net, result.params, split.X, split.Y, config["loss"]).items()})
    write_json(out / "summary.json", summary)
    note = _plot(out / "plot.png", result.history, f"{config['data']}: {'-'.join(map(str, config['sizes']))}, "
                 f"{config['optimizer']} lr {config['lr']}")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("test_"))
    print(f"{config['epochs']} epochs: {shown}; saved in {out}")
    if note:
        print(note, file=sys.stderr)
    return 0
