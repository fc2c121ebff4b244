"""``jbp evaluate RUN``: loss, accuracy, confusion matrix and per-class precision and recall."""

import json
import pathlib

import numpy as np

from jbp import data as datasets
from jbp.cli import options
from jbp.run import check_data, load_run
from jbp.metrics import confusion_matrix, evaluate

SPLITS = ("train", "validation", "test")


def add_parser(commands) -> None:
    evaluate_ = commands.add_parser(
        "evaluate", help="evaluate a finished run",
        description="Loss, accuracy, confusion matrix and per-class precision and recall of a run's network, on its "
                    "own test part or on other data (through the preprocessing the run learned).",
    )
    evaluate_.add_argument("folder", type=pathlib.Path, metavar="RUN", help="the run's folder")
    evaluate_.add_argument("--data", help="other data: csv:FILE, npz:FILE, mnist:FOLDER, fashion-mnist[:FOLDER] "
                                          "(default: the run's own)")
    evaluate_.add_argument("--split", choices=SPLITS, default="test", help="which part of the run's own data (default test)")
    evaluate_.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    evaluate_.add_argument("--max-bytes", type=options.size, metavar="SIZE", help="largest file read (default 2G)")
    evaluate_.set_defaults(run=evaluate_command)


def report(net, params, loss, X, labels, classes) -> dict:
    """The metrics of a network on inputs ``X`` and class indices ``labels``."""
    n = len(classes)
    Y = np.eye(max(n, 2), dtype=np.float32)[labels] if net.sizes[-1] > 1 else labels[:, None].astype(np.float32)
    metrics = evaluate(net, params, X, Y, loss)
    counts = confusion_matrix(net, params, X, labels, max(n, 2))
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    diagonal = np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, diagonal / np.maximum(predicted, 1), np.nan)
        recall = np.where(actual > 0, diagonal / np.maximum(actual, 1), np.nan)
    return {
        "samples": int(len(X)),
        "loss": metrics["loss"],
        "accuracy": float(diagonal.sum() / max(len(X), 1)),
        "classes": list(classes),
        "confusion_matrix": counts.tolist(),
        "precision": [None if np.isnan(p) else float(p) for p in precision],
        "recall": [None if np.isnan(r) else float(r) for r in recall],
    }


def _table(result: dict) -> str:
    classes = [str(c) for c in result["classes"]]
    width = max(8, *(len(c) for c in classes))
    lines = [f"{result['samples']} samples: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}", "",
             "confusion matrix (rows: true class, columns: predicted)",
             " " * width + "".join(f"{c:>{width}}" for c in classes)]
    for c, row in zip(classes, result["confusion_matrix"]):
        lines.append(f"{c:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    lines += ["", f"{'class':>{width}}{'precision':>12}{'recall':>12}{'samples':>10}"]
    for c, p, r, row in zip(classes, result["precision"], result["recall"], result["confusion_matrix"]):
        show = lambda v: f"{v:>12.4f}" if v is not None else f"{'—':>12}"  # noqa: E731
        lines.append(f"{c:>{width}}{show(p)}{show(r)}{sum(row):>10}")
    return "\n".join(lines)


def evaluate_command(args) -> int:
    run = load_run(args.folder, limit=args.max_bytes)
    config, prep = run.config, run.preprocessing
    if args.data is None:
        dataset = datasets.load(config["data"], args.max_bytes, standardize=config["standardize"],
                                target=config["target"], header=config["header"])
        check_data(config, dataset, args.folder, "to evaluate the run on other data on purpose, name them with "
                   "--data (all their rows are used)")
        part = getattr(dataset, args.split)
        X, labels, where = part.X, part.labels, f"{config['data']} ({args.split} part)"
    else:
        X, labels = datasets.evaluation_data(args.data, prep, target=config["target"], header=config["header"],
                                             limit=args.max_bytes, n_features=run.net.sizes[0])
        where = args.data
    if len(X) == 0:
        raise ValueError(f"{where} has no samples")
    result = report(run.net, run.params, run.loss, X, labels, prep.classes)
    result["data"] = where
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.folder} on {where}")
        print(_table(result))
    return 0
