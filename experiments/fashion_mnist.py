"""Fashion-MNIST with the command line's defaults, over three seeds, timed.

Runs ``jbp train --data fashion-mnist --seed S`` as a user would (a real
subprocess, the wall-clock time of the whole command: start-up, reading the
60,000 + 10,000 images, training, evaluating, writing the run) for seeds
0, 1 and 2, and reports the test accuracy as mean ± standard deviation beside
the published baselines of the data set's own benchmark: an MLP of
256-128-100 hidden units, 0.883, and scikit-learn's ``MLPClassifier``, best
0.871 (100 relu units; Xiao, Rasul and Vollgraf 2017, table 3).

Needs Debian's ``dataset-fashion-mnist`` package (``apt-get install
dataset-fashion-mnist``). Writes ``results/fashion_mnist.json``.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from common import RESULTS

PUBLISHED = {
    "MLP 256-128-100 (fashion-mnist benchmark README)": 0.8833,
    "scikit-learn MLPClassifier, relu [100] (Xiao et al. 2017, table 3)": 0.871,
}


def run(seed: int, folder: pathlib.Path, extra: list) -> dict:
    out = folder / f"seed{seed}"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jbp", "train", "--data", "fashion-mnist", "--seed", str(seed),
                           "--no-progress", "--out", str(out), *extra], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"jbp train failed: {done.stderr.strip()}")
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    return {"seed": seed, "seconds": seconds, "test_accuracy": summary["test_accuracy"],
            "test_loss": summary["test_loss"], "config": config}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more options for jbp train, after --")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        runs = [run(seed, pathlib.Path(folder), args.extra) for seed in range(args.seeds)]
    accuracies = [r["test_accuracy"] for r in runs]
    results = {
        "command": "jbp train --data fashion-mnist --seed S " + " ".join(args.extra),
        "config": {k: v for k, v in runs[0]["config"].items() if k != "seed"},
        "runs": [{k: v for k, v in r.items() if k != "config"} for r in runs],
        "test_accuracy_mean": statistics.mean(accuracies),
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "seconds_max": max(r["seconds"] for r in runs),
        "published": PUBLISHED,
    }
    for r in runs:
        print(f"seed {r['seed']}: test accuracy {r['test_accuracy']:.4f} in {r['seconds']:.1f} s")
    print(f"test accuracy {results['test_accuracy_mean']:.4f} ± {results['test_accuracy_std']:.4f} "
          f"(slowest run {results['seconds_max']:.1f} s); published: "
          + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fashion_mnist.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
