"""``jbp predict RUN INPUT``: the class and probabilities of every row, as the run sees raw inputs."""

import csv
import io
import pathlib
import sys

import numpy as np

from jbp import data as datasets
from jbp.batch import predict
from jbp.cli import options
from jbp.files import atomic_write
from jbp.run import check_output, load_run, run_inputs
from jbp.metrics import predicted_classes


def add_parser(commands) -> None:
    predict_ = commands.add_parser(
        "predict", help="predict with a finished run",
        description="Classes and probabilities for the rows of an npz, CSV or IDX file, through the preprocessing "
                    "the run learned (raw inputs, as in its training data).",
    )
    predict_.add_argument("folder", type=pathlib.Path, metavar="RUN", help="the run's folder")
    predict_.add_argument("input", type=pathlib.Path, metavar="INPUT", help="an .npz (array X), a .csv or an IDX file")
    predict_.add_argument("--out", type=pathlib.Path, help="write a .csv or an .npz (default: CSV on standard output)")
    predict_.add_argument("--max-bytes", type=options.size, metavar="SIZE", help="largest file read (default 2G)")
    predict_.set_defaults(run=predict_command)


def probabilities(outputs: np.ndarray, output_name: str) -> tuple[np.ndarray, str]:
    """Per-class numbers to report and what they are: probabilities for softmax or one sigmoid
    output, the outputs themselves otherwise."""
    if outputs.shape[1] == 1:
        return np.concatenate([1 - outputs, outputs], axis=1), "p"
    return outputs, "p" if output_name == "softmax" else "output"


def predict_command(args) -> int:
    if args.out is not None and args.out.suffix.lower() not in (".csv", ".npz"):
        raise ValueError(f"--out {args.out}: write a .csv or an .npz file")
    inputs = [args.input, *run_inputs(args.folder)] if args.out is not None else []
    if args.out is not None:  # before any work; again just before writing
        check_output(args.out, inputs=inputs)
    run = load_run(args.folder, limit=args.max_bytes)
    raw = datasets.read_inputs(args.input, run.net.sizes[0], target=run.config["target"], header=run.config["header"],
                               limit=args.max_bytes, features=run.preprocessing.features)
    X = run.preprocessing.inputs(raw, str(args.input))
    outputs = np.asarray(predict(run.net, run.params, X))
    indices = np.asarray(predicted_classes(outputs))
    labels = run.preprocessing.decode(indices)
    scores, kind = probabilities(outputs, run.net.activations[-1].name)
    classes = [str(c) for c in run.preprocessing.classes]
    if args.out is not None and args.out.suffix.lower() == ".npz":
        arrays = {"labels": np.asarray(labels), "classes": indices.astype(np.int64), "probabilities": scores,
                  "class_labels": np.asarray(run.preprocessing.classes)}
        atomic_write(check_output(args.out, inputs=inputs), lambda f: np.savez(f, **arrays), one_link=True)
        print(f"{len(X)} predictions written to {args.out}", file=sys.stderr)
        return 0
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["label"] + [f"{kind}_{c}" for c in classes])
    for label, row in zip(labels, scores):
        writer.writerow([label] + [f"{v:.6g}" for v in row])
    if args.out is None:
        sys.stdout.write(text.getvalue())
    else:
        atomic_write(check_output(args.out, inputs=inputs), lambda f: f.write(text.getvalue().encode()),
                     one_link=True)
        print(f"{len(X)} predictions written to {args.out}", file=sys.stderr)
    return 0
