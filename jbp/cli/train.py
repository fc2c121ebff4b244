"""``jbp train``: train a network, write the run into a folder it owns, resume it.

The folder, whose files :mod:`jbp.run` writes and reads, holds
``config.json`` (the run's options), ``metrics.jsonl`` (one JSON line per
epoch), ``checkpoint.ckpt`` (parameters, optimizer state, epoch, key,
configuration and history, after every epoch), ``params.npz`` (the final
parameters as ``W1, b1, …``), ``summary.json`` (final train, validation and
test metrics) and ``plot.png`` (with the ``plots`` extra; a picture, drawn
here). ``--resume DIR`` continues the run saved in DIR up to
``--epochs`` epochs in all, ending with exactly the parameters an
uninterrupted run would have (a private run's randomness excepted: see below).

A private run (``--dp-clip``) draws its noise and batches from the operating
system's entropy and writes no key of its own (the checkpoint holds
placeholders); continued, it draws fresh ones. ``--dp-reproducible`` draws
them from ``--seed`` instead: the run repeats, and is not private, which its
``config.json``, ``summary.json`` and terminal say. A private run records no
statistics of its training part unless ``--dp-train-metrics`` asks (outside
the guarantee); its ``summary.json`` holds the ε of its last record, that of
every step behind ``params.npz``, also when it diverges or is interrupted
(``"incomplete": true``). Everything the run would refuse is refused before
its folder is created, and a new run that ends before its first checkpoint
removes what it wrote (and the folder, if it made it).

Exit status: 0 done; 1 the run stopped (diverged, disk full, a file could not
be written: the last finished epoch's checkpoint is kept, and the message
says so); 2 bad options or input; 130 interrupted (Ctrl-C), with what was
done saved.
"""

import argparse
import errno
import math
import pathlib
import sys
from collections.abc import Sequence
from functools import partial

import jax

from jbp import checkpoint as ckpt
from jbp import data as datasets
from jbp.activations import ACTIVATIONS
from jbp.batch import check_batch
from jbp.cli import options
from jbp.files import atomic_write, max_bytes
from jbp.losses import LOSSES
from jbp.optimizers import SCHEDULES, names as optimizer_names
from jbp.feedback import KINDS
from jbp.privacy import check_delta, epsilon, noise_for_epsilon, placeholder_key, public_state
from jbp.run import (CONFIG_KEYS, RunFolder, build, check_config, check_data, load_checkpoint,
                     data_fingerprint, preprocessing_sha256, read_config)
from jbp.metrics import evaluate
from jbp.train import TrainingDiverged, check_fit, fit

TRAIN_DEFAULTS = {
    "hidden": ["relu"], "optimizer": "adam", "lr": 0.001, "l2": 0.0, "epochs": 40,
    "batch_size": 32, "seed": 0, "data": "digits", "drop_last": False, "schedule": "constant",
    "warmup_epochs": 1.0, "decay_rate": 0.9, "nesterov": False, "weight_decay": 0.0, "rule": "backprop",
}
# Where a data set wants other defaults: XOR's four points, one output; Fashion-MNIST's 60,000 images.
DATA_DEFAULTS = {
    "xor": {"sizes": [2, 4, 1], "hidden": ["tanh"], "lr": 0.1, "epochs": 300, "batch_size": 4},
    "fashion-mnist": {"sizes": [784, 256, 128, 10], "epochs": 12, "batch_size": 64, "schedule": "cosine"},
}
# DP-SGD wants plain SGD with a large rate and larger batches (see the README's private-training section)
DP_DEFAULTS = {"optimizer": "sgd", "lr": 0.5, "batch_size": 64, "dp_delta": 1e-5}
HIDDEN_WIDTH = 128
OPTION_KEYS = tuple(k for k in CONFIG_KEYS if k not in ("steps_per_epoch", "schedule_epochs", "dtype"))


def add_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="train a network", description="Train a multi-layer perceptron with jbp's hand-written gradients.",
    )
    one_output = "; for one output, "
    net_options(
        train.add_argument_group("network"),
        "layer widths, input first, e.g. 64,32,10 (default: the data's inputs, 128, its outputs; xor: 2,4,1)",
        hidden="relu; xor: tanh", output=f"softmax{one_output}sigmoid",
        loss=f"softmax_cross_entropy{one_output}binary_cross_entropy",
    )
    _optimizer_options(train.add_argument_group("optimizer"))
    _privacy_options(train.add_argument_group("private training (DP-SGD)"))
    _gradient_options(train.add_argument_group("how the gradient is computed"))
    _epoch_options(train.add_argument_group("epochs and minibatches"))
    _data_options(train.add_argument_group("data"))
    _run_options(train.add_argument_group("the run's folder and terminal"))
    _parallel_options(train.add_argument_group("devices and processes (data parallel: every minibatch split over devices)"))
    train.set_defaults(run=train_command)


def _optimizer_options(group) -> None:
    group.add_argument("--optimizer", type=options.choice("optimizer", optimizer_names()),
                       help="any optax optimizer by name (default adam)")
    group.add_argument("--lr", type=options.positive_float, help="learning rate, finite and > 0 (default 0.001; xor: 0.1)")
    group.add_argument("--schedule", type=options.choice("schedule", SCHEDULES),
                       help=f"learning-rate schedule from optax: {', '.join(SCHEDULES)} (default constant; fashion-mnist: cosine)")
    group.add_argument("--warmup-epochs", type=options.non_negative_float, help="warm-up of warmup-cosine, in epochs (default 1)")
    group.add_argument("--decay-rate", type=options.positive_float, help="factor per epoch of the exponential schedule (default 0.9)")
    group.add_argument("--momentum", type=options.unit_interval, help="momentum of sgd, in [0, 1)")
    group.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (sgd)")
    group.add_argument("--weight-decay", type=options.non_negative_float,
                       help="weight decay on the weights (the optimizer's own where it has one, e.g. adamw) (default 0)")
    group.add_argument("--clip-norm", type=options.positive_float, help="clip each step's gradient to this global norm")
    group.add_argument("--patience", type=options.positive_int,
                       help="early stopping: stop when the validation loss has not improved for this many epochs, "
                            "and keep the best epoch's parameters")


def _privacy_options(group) -> None:
    group.add_argument("--dp-clip", type=options.positive_float, metavar="C",
                       help="train with DP-SGD: clip every sample's gradient to this norm (Poisson batches of "
                            "expected size --batch-size; defaults then sgd, lr 0.5, batch 64)")
    group.add_argument("--dp-noise", type=options.non_negative_float, metavar="SIGMA",
                       help="DP-SGD's noise multiplier σ: Gaussian noise σ·C on each clipped sum")
    group.add_argument("--dp-epsilon", type=options.positive_float, metavar="EPSILON",
                       help="choose σ so that the run's --epochs spend this ε (RDP accounting)")
    group.add_argument("--dp-delta", type=options.open_unit_interval, metavar="DELTA",
                       help="the δ of (ε, δ)-differential privacy, below 1/n for n training samples (default 1e-5)")
    group.add_argument("--dp-reproducible", action="store_true", default=None,
                       help="NOT PRIVATE, for experiments: draw DP-SGD's noise and batches from --seed (recorded "
                            "in config.json) instead of the operating system's entropy, so that the run repeats "
                            "bit for bit")
    group.add_argument("--dp-train-metrics", action="store_true",
                       help="record a private run's training-set loss, accuracy and batch sizes, which the privacy "
                            "guarantee does not cover (by default a private run publishes none)")


def _gradient_options(group) -> None:
    group.add_argument("--rule", type=options.choice("feedback rule", KINDS),
                       help="what carries the error back in BP2: backprop, fa (feedback alignment), dfa (direct "
                            "feedback alignment), sign (sign symmetry), kp (Kolen-Pollack) (default backprop)")
    group.add_argument("--compute-dtype", type=options.choice("compute dtype", ["bfloat16", "float16"]),
                       help="mixed precision: the passes in bfloat16 or float16, the weights and the optimizer in float32")


def _epoch_options(group) -> None:
    group.add_argument("--epochs", type=options.positive_int, help="epochs in all, counting those of a resumed run (default 40; xor: 300)")
    group.add_argument("--batch-size", type=options.positive_int, help="samples per step (default 32; xor: 4)")
    group.add_argument("--drop-last", action="store_true", default=None, help="skip each epoch's last, smaller minibatch")
    group.add_argument("--eval-every", type=options.non_negative_int, metavar="K",
                       help="measure the training and validation sets every K epochs and after the last; "
                            "0 for never (default 1)")
    group.add_argument("--no-train-eval", action="store_true",
                       help="do not measure the training set after epochs (the validation set still is)")


def _data_options(group) -> None:
    group.add_argument("--data", help=f"{', '.join(datasets.DATASETS)} (default digits)")
    group.add_argument("--target", help="csv: the label column, a header name or an index from 0 (default: the last)")
    group.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                       help="csv: whether the first row names the columns (default: guessed)")
    group.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                       help="centre and scale every feature by the training part's statistics (default: on for digits, off otherwise)")
    group.add_argument("--max-bytes", type=options.size, metavar="SIZE",
                       help="largest file or archive member read, e.g. 4G (default 2G, or $JBP_MAX_BYTES)")


def _run_options(group) -> None:
    group.add_argument("--out", type=pathlib.Path, help="output folder, new or empty (default: a new runs/DATA-TIME)")
    group.add_argument("--resume", type=pathlib.Path, metavar="DIR", help="continue the run saved in DIR")
    group.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal: one line per epoch")


def _parallel_options(group) -> None:
    group.add_argument("--devices", type=options.positive_int, metavar="N",
                       help="the first N devices of this process (of each process, with --coordinator)")
    group.add_argument("--coordinator", metavar="HOST:PORT",
                       help="many processes: the address process 0 listens on (jax.distributed)")
    group.add_argument("--num-processes", type=options.positive_int, metavar="N", help="how many processes in all")
    group.add_argument("--process-id", type=options.non_negative_int, metavar="I",
                       help="this process's number, 0 … N-1; process 0 writes the run folder")
    group.add_argument("--coordinator-timeout", type=options.positive_float, default=60.0, metavar="SECONDS",
                       help="give up when the processes have not all met within this time (default 60)")


def net_options(parser: argparse.ArgumentParser, sizes_help: str, hidden: str, output: str, loss: str) -> None:
    """The options that describe a network (``jbp train``, ``jbp gradcheck``), on a parser or an argument group."""
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


def load_data(config: dict, limit) -> "datasets.Dataset":
    return datasets.load(config["data"], limit, standardize=config["standardize"], target=config["target"],
                         header=config["header"])


def _steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size + (1 if n % batch_size and not drop_last else 0)


def _train_config(args, dataset) -> dict:
    config = {key: getattr(args, key, None) for key in CONFIG_KEYS}
    data_name = (config["data"] or TRAIN_DEFAULTS["data"]).split(":")[0]
    private = config["dp_clip"] is not None
    if not private and any(config[k] is not None for k in ("dp_noise", "dp_epsilon", "dp_delta", "dp_reproducible")):
        raise ValueError("--dp-noise, --dp-epsilon, --dp-delta and --dp-reproducible go with --dp-clip "
                         "(the clipping norm)")
    if private and (config["dp_noise"] is None) == (config["dp_epsilon"] is None):
        raise ValueError("a private run needs its noise: give --dp-noise or --dp-epsilon, not both")
    if private and config["compute_dtype"] is not None:
        raise ValueError("DP-SGD clips in float32: --dp-clip does not go with --compute-dtype")
    defaults = {**TRAIN_DEFAULTS, **DATA_DEFAULTS.get(data_name, {}), **(DP_DEFAULTS if private else {})}
    for key, value in defaults.items():
        if config[key] is None:
            config[key] = value
    n_in, n_out = dataset.train.X.shape[1], dataset.train.Y.shape[1]
    binary = n_out == 1
    if args.sizes is None and "sizes" in DATA_DEFAULTS.get(data_name, {}):
        config["sizes"] = [n_in, *config["sizes"][1:-1], n_out]
    config["sizes"] = config["sizes"] or [n_in, HIDDEN_WIDTH, n_out]
    config["output"] = config["output"] or ("sigmoid" if binary else "softmax")
    config["loss"] = config["loss"] or ("binary_cross_entropy" if binary else "softmax_cross_entropy")
    config["standardize"] = config["data"] == "digits" if config["standardize"] is None else config["standardize"]
    options.per_layer(config["hidden"], config["sizes"])  # named as the option, before the schema check
    sizes = config["sizes"]
    if sizes[0] != n_in or sizes[-1] != n_out:
        raise ValueError(
            f"--sizes {','.join(map(str, sizes))} does not fit --data {config['data']}: "
            f"it has {n_in} inputs and {n_out} outputs"
        )
    n = len(dataset.train.X)
    if config["batch_size"] > n:
        raise ValueError(f"--batch-size {config['batch_size']} is larger than the {n} training samples")
    if config["patience"] is not None and len(dataset.validation.X) == 0:
        raise ValueError("--patience watches the validation loss, and this data set has no validation part")
    config["steps_per_epoch"] = _steps_per_epoch(n, config["batch_size"], config["drop_last"])
    config["dp_reproducible"] = bool(config["dp_reproducible"])  # by default the OS's entropy: private
    if private:
        check_delta(config["dp_delta"], n, "--dp-delta")  # before σ is chosen for it
        config["steps_per_epoch"] = max(1, round(n / config["batch_size"]))  # Poisson batches: n / B steps
        if config["dp_epsilon"] is not None:
            config["dp_noise"] = noise_for_epsilon(config["dp_epsilon"], config["batch_size"] / n,
                                                   config["epochs"] * config["steps_per_epoch"], config["dp_delta"])
    config["dtype"] = "float32"  # the command trains in float32, whatever jax_enable_x64 says
    config["schedule_epochs"] = config["epochs"]
    config["data_fingerprint"] = data_fingerprint(dataset, private=private)  # checked by --resume and evaluate
    config["preprocessing_sha256"] = preprocessing_sha256(dataset.preprocessing)  # an edited file is refused
    return check_config(config, "the options")


def _plot(path: pathlib.Path, history: Sequence[dict], title: str) -> "str | None":
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is missing (pip install 'jbp[plots]')"
    history = [r for r in history if "loss" in r or "val_loss" in r]  # the epochs that were measured
    if not history:
        return None
    epochs = [r["epoch"] for r in history]
    has_accuracy = any("accuracy" in r or "val_accuracy" in r for r in history)
    fig, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 5, 4), squeeze=False)
    panels = [("loss", "mean cost per sample", "log")] + ([("accuracy", "accuracy", "linear")] if has_accuracy else [])
    for ax, (name, label, scale) in zip(axes[0], panels):
        for prefix, curve in (("", "train"), ("val_", "validation")):
            points = [(r["epoch"], r[prefix + name]) for r in history if prefix + name in r]
            if points:
                ax.plot(*zip(*points), label=curve, marker="." if len(points) < len(epochs) else None)
        ax.set(xlabel="epoch", ylabel=label, title=name, yscale=scale)
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


def epoch_line(record: dict, epochs: int) -> str:
    """One plain line per epoch, for a log file or a pipe: what the record holds (a private run's
    holds no training statistics unless asked for)."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if "loss" in record:
        parts.append(f"loss {record['loss']:.4g}")
    elif "running_loss" in record:  # not measured this epoch
        parts.append(f"running loss {record['running_loss']:.4g}")
    for key in ("accuracy", "val_loss", "val_accuracy", "epsilon"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}" if "accuracy" in key else f"{key} {record[key]:.4g}")
    return "  ".join(parts + [f"{record['seconds']:.2f} s"])


def _resume(folder: RunFolder, args, given: set) -> dict:
    """The configuration of the run to continue, checked against the options given."""
    config = read_config(folder / "config.json")
    conflicts = [f"--{k.replace('_', '-')}" for k in sorted(given - {"epochs"}) if getattr(args, k) != config[k]]
    if conflicts:
        raise ValueError(f"--resume continues the saved run; {', '.join(conflicts)} differ from its "
                         f"configuration (see {folder / 'config.json'})")
    if args.out is not None and args.out.resolve() != folder.path.resolve():
        raise ValueError("--out and --resume name different folders; a resumed run stays in its folder")
    config["schedule_epochs"] = config["schedule_epochs"] or config["epochs"]
    config["epochs"] = args.epochs or config["epochs"]
    return config


def _load_state(folder: RunFolder, config: dict, built, limit) -> ckpt.Checkpoint:
    """The checkpoint of the run to continue, checked against its configuration."""
    state = load_checkpoint(folder.path, config, built, limit)
    if state.epoch >= config["epochs"]:
        raise ValueError(f"the run in {folder.path} has done {state.epoch} epochs already; ask for more with --epochs")
    if config["patience"] is not None and state.history:
        best = min((r for r in state.history if "val_loss" in r), key=lambda r: (r["val_loss"], r["epoch"]))["epoch"]
        if state.epoch - best >= config["patience"]:
            raise ValueError(f"the run in {folder.path} stopped early at epoch {state.epoch} (no better validation "
                             f"loss since epoch {best}); there is nothing to continue")
    return state


class _Peer:
    """The run folder as a process other than 0 sees it: read, never locked or written."""

    def __init__(self, path: "pathlib.Path | None", resume: bool = False):
        self.path, self.resume = path, resume

    def __enter__(self) -> "_Peer":
        if self.resume and not (self.path / "config.json").is_file():
            raise ValueError(f"{self.path} holds no run to continue (no config.json)")
        return self

    def __exit__(self, *exc) -> None:
        pass

    def __truediv__(self, name: str) -> pathlib.Path:
        return self.path / name

    def discard_unused(self) -> bool:
        return False  # only the writer's folder holds the run's files


def _mesh(args):
    """The devices of the run: None (one device), ``--devices N``, or a mesh over every process's
    devices after ``jax.distributed`` has started (``--coordinator`` …)."""
    from jbp import parallel

    together = {"--coordinator": args.coordinator, "--num-processes": args.num_processes,
                "--process-id": args.process_id}
    if all(v is None for v in together.values()):
        return None if args.devices is None else parallel.make_mesh(args.devices)
    missing = [name for name, value in together.items() if value is None]
    if missing:
        raise ValueError(f"--coordinator, --num-processes and --process-id go together; {', '.join(missing)} missing")
    try:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id, args.coordinator_timeout)
    except (TimeoutError, RuntimeError) as err:
        fail(err, status=1)
        sys.stderr.flush()
        parallel.abandon(1)  # jax.distributed, half started, cannot be shut down cleanly
    return parallel.make_mesh(args.devices)


def _check_split(mesh, batch_size: int) -> None:
    from jbp import parallel

    if mesh is not None and batch_size % parallel.batch_devices(mesh):
        devices = parallel.batch_devices(mesh)
        raise ValueError(f"--batch-size {batch_size} does not split over {devices} devices; use a multiple of {devices}")


def train_command(args) -> int:
    max_bytes(args.max_bytes)  # a bad $JBP_MAX_BYTES is refused before any work
    given = {key for key in OPTION_KEYS if getattr(args, key, None) is not None}
    if args.sizes is not None:  # a network that cannot fit is refused before the data are read
        options.check_memory(args.sizes, None, args.batch_size or 1)
    mesh = _mesh(args)
    writer = mesh is None or jax.process_index() == 0
    if args.resume is not None:
        with (RunFolder.existing(args.resume) if writer else _Peer(args.resume, resume=True)) as folder:
            config = _resume(folder, args, given)
            _check_split(mesh, config["batch_size"])
            dataset = load_data(config, args.max_bytes)
            check_data(config, dataset, folder.path, "a run continues on the data it started with; "
                       "train a new run on the new data")
            built = build(config)
            state = _load_state(folder, config, built, args.max_bytes)
            _check_budget(config, len(dataset.train.X))
            run = _fit_call(config, dataset, built, state, args, mesh)
            _check_run(run, dataset, built)  # before anything in the folder is rewritten
            return _train(folder, config, dataset, built, run, args, writer)
    standardize = args.standardize
    if args.dp_clip is not None:  # statistics of the training part would be released exactly, outside ε
        if standardize:
            raise ValueError("--standardize learns every feature's mean and deviation from the training part and "
                             "writes them exactly into the run, outside the privacy guarantee; a private run "
                             "(--dp-clip) trains on the inputs as they are (scale them beforehand, from public facts)")
        args.standardize = standardize = False
    dataset = datasets.load(args.data or TRAIN_DEFAULTS["data"], args.max_bytes, standardize=standardize,
                            target=args.target, header=args.header)
    config = _train_config(args, dataset)
    _check_split(mesh, config["batch_size"])
    built = build(config)
    options.check_memory(config["sizes"], built.optimizer, config["batch_size"],
                         samples=len(dataset.train.X) + len(dataset.validation.X))  # the data placed on the device
    run = _fit_call(config, dataset, built, None, args, mesh)
    _check_run(run, dataset, built)  # whatever the run would refuse, refused before the folder exists
    with (RunFolder.new(args.out, config["data"].split(":")[0]) if writer else _Peer(args.out)) as folder:
        try:
            return _train(folder, config, dataset, built, run, args, writer)
        finally:
            folder.discard_unused()  # a run that ends before its first checkpoint leaves no dead folder


def _check_budget(config: dict, n: int) -> None:
    """Refuses to continue a run whose σ was chosen for ``--dp-epsilon`` beyond that ε."""
    if config["dp_clip"] is None or config["dp_epsilon"] is None:
        return
    spent = epsilon(config["dp_noise"], config["batch_size"] / n, config["epochs"] * config["steps_per_epoch"],
                    config["dp_delta"])
    if spent > config["dp_epsilon"] * (1 + 1e-6):
        raise ValueError(
            f"--epochs {config['epochs']} would spend ε = {spent:.3g} at δ = {config['dp_delta']:g}, beyond the "
            f"--dp-epsilon {config['dp_epsilon']:g} this run's noise (σ = {config['dp_noise']:.4g}) was chosen for "
            f"over {config['schedule_epochs']} epochs; train a new run with the ε and --epochs you want"
        )


def _check_run(run, dataset, built) -> None:
    """Refuses what the run would refuse once started: fit's arguments (:func:`jbp.train.check_fit`)
    and the test part the summary measures."""
    check_fit(*run.args, **run.keywords)
    if len(dataset.test.X):
        check_batch(built.net, run.args[1], dataset.test.X, dataset.test.Y, built.loss)


def _fit_call(config, dataset, built, state, args, mesh):
    """:func:`jbp.fit` with every argument of this run but ``on_epoch`` and ``progress``, checked
    (:func:`jbp.train.check_fit`) before anything is created or written; ``state`` is the checkpoint
    of a resumed run."""
    private = built.privacy is not None
    if args.dp_train_metrics and not private:
        raise ValueError("--dp-train-metrics goes with a private run (--dp-clip)")
    if args.dp_train_metrics and args.no_train_eval:
        raise ValueError("--dp-train-metrics records the training set's statistics and --no-train-eval measures "
                         "none of them; give one of the two")
    feedback = built.feedback
    if state is None:
        params, opt_state, start, history, key, best = built.init(), None, 0, [], built.shuffle_key, None
    else:
        params, opt_state, start, history, key = state.params, state.opt_state, state.epoch, state.history, state.key
        best = state.extras.get("best_params")
        if feedback is not None and feedback.learns:
            feedback = feedback.replace(state.extras["feedback"])
    train, val = dataset.train, dataset.validation
    early = {"patience": config["patience"], "best_params": best} if config["patience"] is not None else {}
    if built.privacy is not None:
        early["privacy"] = built.privacy
    if feedback is not None:
        early["feedback"] = feedback
    early.update(mesh=mesh, eval_every=1 if args.eval_every is None else args.eval_every,
                 train_metrics=args.dp_train_metrics if private else not args.no_train_eval,
                 compute_dtype=config["compute_dtype"])
    return partial(fit, built.net, params, train.X, train.Y, loss=built.loss, optimizer=built.optimizer,
                   epochs=config["epochs"], batch_size=config["batch_size"], key=key, l2=config["l2"],
                   validation=(val.X, val.Y) if len(val.X) else None, drop_last=config["drop_last"],
                   opt_state=opt_state, start_epoch=start, history=history, **early)


def _dp_warnings(config: dict, history, train_metrics: bool) -> list[str]:
    """What a private run says, in its summary and on the terminal, that its guarantee does not cover."""
    if config["dp_clip"] is None:
        return []
    warnings = []
    if config["dp_reproducible"]:
        warnings.append(f"not private: the noise is drawn from --seed {config['seed']} (--dp-reproducible, "
                        "recorded in config.json), so anyone who knows it can draw the noise again and remove it")
    if _publishes_statistics(history, train_metrics):
        warnings.append("the training set's statistics recorded (--dp-train-metrics) are outside the privacy guarantee")
    return warnings


TRAIN_STATISTICS = ("loss", "accuracy", "running_loss", "batch_size_mean")


def _publishes_statistics(history, train_metrics: bool) -> bool:
    """Whether a private run's files hold statistics of its training part (asked for, now or before)."""
    return bool(train_metrics) or any(k in r for r in history for k in TRAIN_STATISTICS)


def _privacy_summary(config: dict, spent: "float | None", warnings: list) -> dict:
    """A private run's entries in summary.json: ε (null for ∞, without noise), δ, whether the
    randomness was the OS's, and what the guarantee does not cover."""
    spent = None if spent is None or not math.isfinite(spent) else spent
    return {"epsilon": spent, "delta": config["dp_delta"], "dp_secure": not config["dp_reproducible"],
            "dp_warnings": warnings}


def _train(folder, config, dataset, built, run, args, writer=True) -> int:
    """The run itself, in a folder this process holds: ``run`` is :func:`_fit_call`'s, checked already.
    With many processes only process 0 (the ``writer``) writes or prints; the others train beside it."""
    if not writer:
        run()
        return 0
    folder.clean_temporaries()
    folder.write_config(config)
    folder.write_preprocessing(dataset.preprocessing)
    folder.write_metrics(run.keywords["history"])  # the checkpoint is the record of what was done
    progress = not args.no_progress and sys.stderr.isatty() and _has_tqdm()
    warnings = _dp_warnings(config, run.keywords["history"], run.keywords["train_metrics"])
    for warning in warnings:
        print(f"jbp: warning: {warning}", file=sys.stderr)
    epochs = _Epochs(folder, config, run, built.privacy is not None and built.privacy.secure, progress)
    try:
        result = run(on_epoch=epochs.save, progress=progress)
    except (TrainingDiverged, KeyboardInterrupt, OSError) as err:
        return _stopped(err, epochs, built.privacy is not None, warnings)
    _finish(folder, config, dataset, built, run, result, epochs.done, warnings)
    return 0


class _Epochs:
    """The epochs a run has finished, each saved as it ends: its checkpoint, its line in
    ``metrics.jsonl`` and, without a progress bar, on the terminal."""

    def __init__(self, folder: RunFolder, config: dict, run, secure: bool, progress: bool):
        self.folder, self.config, self.secure, self.progress = folder, config, secure, progress
        self.done = list(run.keywords["history"])
        self.params, self.best = run.args[1], run.keywords.get("best_params")
        key = run.keywords["key"]
        self.key = placeholder_key(key) if secure else key  # a secure run writes none of its keys

    def save(self, record: dict, params, opt_state, feedback=None) -> None:
        """``on_epoch`` of :func:`jbp.fit`."""
        patience = self.config["patience"]
        if patience is not None and record["best_epoch"] == record["epoch"]:
            self.best = params
        extras = {"best_params": self.best} if patience is not None else {}
        if feedback is not None:
            extras["feedback"] = feedback.matrices
        self.folder.write_checkpoint(params=params, opt_state=public_state(opt_state) if self.secure else opt_state,
                                     epoch=record["epoch"], key=self.key, config=self.config,
                                     history=self.done + [record], extras=extras or None)
        self.done.append(record)
        self.params = params
        self.folder.append_metrics(record)
        if not self.progress:
            print(epoch_line(record, self.config["epochs"]), flush=True)

    def kept(self) -> str:
        """What a stopped run leaves to continue from, in words."""
        return (f"the checkpoint of epoch {self.done[-1]['epoch']}, the last finished, is kept in {self.folder.path}"
                if self.done else "no epoch finished, so there is no checkpoint to continue from")


def _stopped(err: BaseException, epochs: _Epochs, private: bool, warnings: list) -> int:
    """A run that ``err`` stopped: what can be kept is written (the parameters, a private run's ε),
    and the message says what and where; returns the exit status."""
    folder, config, done = epochs.folder, epochs.config, epochs.done
    out = folder.path
    if isinstance(err, TrainingDiverged):
        saved = folder.write_params(err.params)
        note = _incomplete(folder, config, done, err.steps, err.epsilon, private, warnings)
        return fail(f"{err}; they are saved in {saved}{note}, and {epochs.kept()}", status=1)
    if isinstance(err, KeyboardInterrupt):
        if not done:
            return fail(f"interrupted; {epochs.kept()}", status=130)
        saved = folder.write_params(epochs.params)
        spent = done[-1].get("epsilon")
        note = _incomplete(folder, config, done, done[-1]["epoch"] * config["steps_per_epoch"], spent, private, warnings)
        if spent is not None:
            note = f" (they spent ε = {spent:.4g} at δ = {config['dp_delta']:g}){note}"
        return fail(f"interrupted; {epochs.kept()}, its parameters in {saved}{note}: "
                    f"continue with jbp train --resume {out}", status=130)
    what = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
    return fail(f"{what} ({err.filename or out}); {epochs.kept()}", status=1)


def _incomplete(folder: RunFolder, config: dict, done: list, steps: int, spent: "float | None", private: bool,
                warnings: list) -> str:
    """A private run that stops writes the ε of the steps behind the parameters it keeps (an
    incomplete summary.json); returns what the message adds about it."""
    if not private:
        return ""
    summary = {"incomplete": True, "epochs": done[-1]["epoch"] if done else 0, "steps": steps,
               **_privacy_summary(config, spent, warnings)}
    path = folder.write_summary(summary)
    return f"; their ε is in {path} (incomplete)"


def _finish(folder: RunFolder, config: dict, dataset, built, run, result, done: list, warnings: list) -> None:
    """A run that ended: its parameters, summary and plot written, and what it reached said."""
    final = jax.device_get(result.params)  # on this process, whatever devices trained it
    folder.write_params(final)
    summary = _summary(config, dataset, built, final, result, run.keywords["train_metrics"], warnings)
    folder.write_summary(summary)
    note = _plot(folder / "plot.png", result.history, f"{config['data']}: {'-'.join(map(str, config['sizes']))}, "
                 f"{config['optimizer']} lr {config['lr']}")
    _report(folder.path, config, summary, result, built.privacy, _publishes_statistics(done, run.keywords["train_metrics"]))
    if note:
        print(note, file=sys.stderr)


def _summary(config: dict, dataset, built, final, result, train_metrics: bool, warnings: list) -> dict:
    """What summary.json holds: the epochs, the best epoch, a private run's ε, and the metrics of
    each part measured with the final parameters (a part that cannot be measured: its error)."""
    private = built.privacy is not None
    summary = {"epochs": result.history[-1]["epoch"]}
    if result.best_epoch is not None:
        summary["best_epoch"] = result.best_epoch
    if private:  # the ε fit accounted over every step behind the parameters: its last record's, no second figure
        summary.update(_privacy_summary(config, result.history[-1].get("epsilon"), warnings))
    published = not private or train_metrics  # a private run's training part only when asked for
    for name, split in (("train", dataset.train), ("validation", dataset.validation), ("test", dataset.test)):
        if len(split.X) and (name != "train" or published):
            try:
                summary.update({f"{name}_{k}": v for k, v in evaluate(built.net, final, split.X, split.Y, built.loss).items()})
            except FloatingPointError as err:  # the summary (and a private run's ε) is written all the same
                summary[f"{name}_error"] = " ".join(str(err).split())
                print(f"jbp: warning: the {name} part could not be measured: {summary[f'{name}_error']}", file=sys.stderr)
    return summary


def _report(out: pathlib.Path, config: dict, summary: dict, result, privacy, statistics: bool) -> None:
    """The lines a finished run prints: how it stopped, its test metrics, a private run's ε, where it is."""
    shown = ", ".join(f"{k} {v:.4f}" for k, v in summary.items() if k.startswith("test_") and k != "test_error")
    if result.stopped_early:
        print(f"stopped early after epoch {summary['epochs']}: the validation loss last improved at epoch "
              f"{result.best_epoch}, whose parameters are kept")
    elif result.best_epoch is not None:
        print(f"the best epoch by validation loss was {result.best_epoch}; its parameters are kept")
    if privacy is not None:
        spent = "∞ (no noise)" if summary["epsilon"] is None else f"{summary['epsilon']:.3g}"
        shown += f"; {'private: ' if privacy.secure else ''}ε = {spent} at δ = {config['dp_delta']:g}"
        if config["dp_reproducible"]:
            shown += f"; not private: the noise is drawn from --seed {config['seed']}"
        if statistics:
            shown += "; training statistics recorded, outside the guarantee"
    print(f"{summary['epochs']} epochs: {shown}; saved in {out}")
