"""A user's day: their own data (CSV, npz, IDX), the run afterwards (evaluate, predict,
load_run), day-one training options, output that fits where it goes, one meaning of l2.
Through the real ``jbp`` entry point in subprocesses where a user would type a command."""

import csv
import fcntl
import gzip
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbp
from jbp.cli import main

ROWS = 240


def jbp_command(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "jbp", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def ok(done):
    assert done.returncode == 0, done.stderr
    return done


def refused(done, fragment):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and fragment in lines[0], done.stderr
    return lines[0]


def blobs(rows=ROWS, seed=0):
    """Three well-separated classes in 4 features, named by strings, at a scale that wants standardizing."""
    rng = np.random.default_rng(seed)
    names = np.array(["setosa", "versicolor", "virginica"])
    labels = rng.integers(0, 3, rows)
    centres = np.array([[0, 0, 0, 0], [3, 3, 0, 0], [0, 3, 3, 3]], float)
    X = (centres[labels] + rng.normal(scale=0.6, size=(rows, 4))) * [1, 10, 100, 1000]
    return X, names[labels]


def write_csv(path, X, labels, header=True, target_first=False):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        columns = [f"f{j}" for j in range(X.shape[1])]
        if header:
            writer.writerow((["species"] + columns) if target_first else (columns + ["species"]))
        for x, label in zip(X, labels):
            cells = [f"{v:.6f}" for v in x]
            writer.writerow(([label] + cells) if target_first else (cells + [label]))


# --- the command itself


def test_version_module_entry_point_and_no_abbreviations():
    version = ok(jbp_command("--version")).stdout.strip()
    assert version == f"jbp {jbp.__version__}"
    console = subprocess.run(["jbp", "--help"], capture_output=True, text=True)
    assert console.returncode == 0 and console.stdout == ok(jbp_command("--help")).stdout
    refused(jbp_command("train", "--epoch", "3"), "unrecognized arguments: --epoch 3")
    refused(jbp_command("train", "--lr", "0.1", "--batch", "8"), "unrecognized arguments: --batch 8")


# --- one's own data


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    X, labels = blobs()
    write_csv(folder / "flowers.csv", X, labels, target_first=True)
    out = folder / "run"
    done = ok(jbp_command("train", "--data", f"csv:{folder / 'flowers.csv'}", "--target", "species", "--standardize",
                          "--epochs", "30", "--batch-size", "16", "--lr", "0.01", "--out", str(out)))
    return folder, out, done


def test_csv_with_a_header_string_labels_and_standardization(csv_run):
    folder, out, done = csv_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.95, summary  # three well-separated blobs
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["classes"] == ["setosa", "versicolor", "virginica"] and len(prep["mean"]) == 4
    X, labels = blobs()
    # the learned statistics are the training part's (a 70 % stratified part): close to the whole's
    assert np.all(np.abs(np.array(prep["mean"]) - X.mean(axis=0)) <= 0.2 * X.std(axis=0))
    train = jbp.data.load(f"csv:{folder / 'flowers.csv'}", target="species", standardize=True).train.X
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)  # standardized by its own statistics
    np.testing.assert_allclose(train.std(axis=0), 1, rtol=1e-4)
    config = json.loads((out / "config.json").read_text())
    assert config["target"] == "species" and config["standardize"] is True and config["sizes"] == [4, 128, 3]


def test_evaluate_agrees_with_the_summary_and_predict_with_the_library(csv_run, tmp_path):
    folder, out, _ = csv_run
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads(ok(jbp_command("evaluate", str(out), "--json")).stdout)
    assert report["loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"], rel=1e-6)
    counts = np.array(report["confusion_matrix"])
    assert counts.sum() == report["samples"] and np.trace(counts) / counts.sum() == pytest.approx(report["accuracy"])
    table = ok(jbp_command("evaluate", str(out))).stdout
    assert "confusion matrix" in table and "precision" in table and "virginica" in table

    # predict on raw rows (a CSV with the label column, and one without)
    X, labels = blobs(30, seed=5)
    write_csv(tmp_path / "new.csv", X, labels, target_first=True)
    with open(tmp_path / "features.csv", "w") as f:
        f.writelines(",".join(f"{v:.6f}" for v in x) + "\n" for x in X)
    run = jbp.load_run(out)
    expected = np.asarray(jbp.predict(run.net, run.params, run.preprocessing.inputs(np.round(X, 6))))
    for source in ("new.csv", "features.csv"):
        rows = list(csv.reader(ok(jbp_command("predict", str(out), str(tmp_path / source))).stdout.splitlines()))
        assert rows[0] == ["label", "p_setosa", "p_versicolor", "p_virginica"]
        got = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert [row[0] for row in rows[1:]] == run.preprocessing.decode(expected.argmax(axis=1))
    ok(jbp_command("predict", str(out), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.npz")))
    with np.load(tmp_path / "p.npz") as saved:
        np.testing.assert_allclose(saved["probabilities"], expected, rtol=1e-5, atol=1e-7)
    # evaluated on other data: the run's preprocessing and label mapping are applied to it
    other = json.loads(ok(jbp_command("evaluate", str(out), "--data", f"csv:{tmp_path / 'new.csv'}", "--json")).stdout)
    assert other["samples"] == 30 and other["accuracy"] >= 0.9
    write_csv(tmp_path / "stranger.csv", X[:3], ["setosa", "daisy", "setosa"], target_first=True)
    refused(jbp_command("evaluate", str(out), "--data", f"csv:{tmp_path / 'stranger.csv'}"),
            "1 label(s) the run does not know, the first is 'daisy'")


def test_csv_without_a_header_target_by_index(tmp_path):
    X, labels = blobs(120)
    numeric = np.searchsorted(["setosa", "versicolor", "virginica"], labels) + 1  # labels 1, 2, 3
    write_csv(tmp_path / "plain.csv", X, numeric, header=False)
    out = tmp_path / "run"
    ok(jbp_command("train", "--data", f"csv:{tmp_path / 'plain.csv'}", "--target", "-1", "--epochs", "2",
                   "--batch-size", "8", "--out", str(out)))
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["classes"] == [1, 2, 3] and prep["mean"] is None


@pytest.mark.parametrize(
    "rows, options, message",
    [
        ([["a", "b", "y"], ["1", "2", "x"], ["3", "x"]], [], "row 3 has 2 columns, the first row has 3 (ragged rows)"),
        ([["a", "b", "y"], ["1", "2", "x"], ["3", "four", "z"]], [], "row 3, column 'b': 'four' is not a number"),
        ([["a", "y"]] + [[str(i), "same"] for i in range(20)], [], "one class only ('same' for every row)"),
        ([["a", "y"]] + [[str(i), str(i % 2)] for i in range(20)], ["--batch-size", "64"],
         "--batch-size 64 is larger than the 12 training samples"),
        ([["a", "y"]] + [[str(i), f"{i % 2 + 0.5}"] for i in range(20)], [], "labels must be whole numbers or strings"),
        ([["a", "y"], ["1", "x"]], ["--target", "label"], "no column 'label'"),
    ],
)
def test_csv_refusals(tmp_path, rows, options, message):
    with open(tmp_path / "bad.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    refused(jbp_command("train", "--data", f"csv:{tmp_path / 'bad.csv'}", *options, cwd=tmp_path), message)
    assert not (tmp_path / "runs").exists()


def test_npz_with_its_own_test_part_and_string_labels(tmp_path):
    X, labels = blobs(200)
    np.savez(tmp_path / "d.npz", x_train=X[:150], y_train=labels[:150], x_test=X[150:], y_test=labels[150:])
    out = tmp_path / "run"
    ok(jbp_command("train", "--data", f"npz:{tmp_path / 'd.npz'}", "--standardize", "--epochs", "20",
                   "--batch-size", "16", "--lr", "0.01", "--out", str(out)))
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads(ok(jbp_command("evaluate", str(out), "--json")).stdout)
    assert report["samples"] == 50 and report["accuracy"] == pytest.approx(summary["test_accuracy"], rel=1e-6)
    np.savez(tmp_path / "X.npz", X=X[150:])
    rows = ok(jbp_command("predict", str(out), str(tmp_path / "X.npz"))).stdout.splitlines()
    predicted = [row.split(",")[0] for row in rows[1:]]
    assert np.mean(np.array(predicted) == labels[150:]) == pytest.approx(report["accuracy"])


def _idx(array):
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_fashion_mnist_from_a_folder_and_predict_from_idx(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for part, n in (("train", 60), ("t10k", 20)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.integers(0, 60, (n, 28, 28)) + 190 * (labels[:, None, None] % 2)).astype(np.uint8)
        (tmp_path / f"{part}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
        (tmp_path / f"{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    out = tmp_path / "run"
    assert main(["train", "--data", f"fashion-mnist:{tmp_path}", "--epochs", "2", "--batch-size", "8",
                 "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["sizes"] == [784, 256, 128, 10] and config["schedule"] == "cosine"  # the data set's defaults
    capsys.readouterr()
    assert main(["predict", str(out), str(tmp_path / "t10k-images-idx3-ubyte.gz")]) == 0
    rows = capsys.readouterr().out.splitlines()
    run = jbp.load_run(out)
    data = jbp.data.load(f"fashion-mnist:{tmp_path}")
    expected = np.asarray(jbp.predict(run.net, run.params, data.test.X))
    got = np.array([[float(v) for v in row.split(",")[1:]] for row in rows[1:]])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(jbp.data, "FASHION_MNIST_FOLDERS", (str(tmp_path / "nowhere"),))
    assert main(["train", "--data", "fashion-mnist"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0]


# --- the run afterwards, from Python


def test_load_run_then_fit_continues_the_run_exactly(tmp_path):
    common = ["--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05", "--weight-decay", "1e-4", "--clip-norm", "5",
              "--no-progress"]
    assert main(["train", *common, "--epochs", "2", "--out", str(tmp_path / "short")]) == 0
    assert main(["train", *common, "--epochs", "4", "--out", str(tmp_path / "long")]) == 0
    short = jbp.load_run(tmp_path / "short")
    assert short.config["epochs"] == 2 and len(short.history) == 2 and short.checkpoint.epoch == 2
    assert short.preprocessing.classes == tuple(range(10)) and short.preprocessing.mean is not None
    data = jbp.data.load(short.config["data"])
    continued = jbp.fit(short.net, short.checkpoint.params, data.train.X, data.train.Y,
                        validation=(data.validation.X, data.validation.Y), **short.fit_arguments(4))
    long = jbp.load_run(tmp_path / "long")
    assert [r["loss"] for r in continued.history] == [r["loss"] for r in long.history]
    for a, b in zip(jax.tree.leaves(continued.params), jax.tree.leaves(long.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# --- training conveniences


def test_the_options_build_the_optax_chain_they_name():
    params = jbp.init(jbp.mlp([3, 4, 2]), jax.random.key(0))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    ours = jbp.optimizers.make("sgd", 0.1, momentum=0.9, nesterov=True, weight_decay=0.01, clip_norm=0.5,
                               schedule_name="exponential", decay_rate=0.5, epochs=4, steps_per_epoch=3)
    mask = tuple(jbp.Dense(W=True, b=False) for _ in params)
    theirs = optax.chain(optax.clip_by_global_norm(0.5), optax.add_decayed_weights(0.01, mask=mask),
                         optax.sgd(optax.exponential_decay(0.1, 3, 0.5), momentum=0.9, nesterov=True))
    state_a, state_b = ours.init(params), theirs.init(params)
    for _ in range(5):
        update_a, state_a = ours.update(grads, state_a, params)
        update_b, state_b = theirs.update(grads, state_b, params)
        for a, b in zip(jax.tree.leaves(update_a), jax.tree.leaves(update_b)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="adam takes no momentum"):
        jbp.optimizers.make("adam", 0.1, momentum=0.9)
    refused(jbp_command("train", "--optimizer", "adam", "--momentum", "0.9"), "adam takes no momentum")
    refused(jbp_command("train", "--schedule", "linear"), "unknown schedule 'linear'")


def test_early_stopping_keeps_the_best_epoch(tmp_path, capsys):
    common = ["--optimizer", "sgd", "--lr", "0.3", "--sizes", "64,256,10", "--no-progress"]
    assert main(["train", *common, "--epochs", "60", "--patience", "3", "--out", str(tmp_path / "early")]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "early" / "summary.json").read_text())
    best, stopped = summary["best_epoch"], summary["epochs"]
    assert stopped == best + 3 < 60, summary  # it stopped, three epochs after the best
    assert f"the validation loss last improved at epoch {best}" in out
    history = [json.loads(line) for line in (tmp_path / "early" / "metrics.jsonl").read_text().splitlines()]
    assert min(history, key=lambda r: r["val_loss"])["epoch"] == best
    assert main(["train", *common, "--epochs", str(best), "--out", str(tmp_path / "to-best")]) == 0
    with np.load(tmp_path / "early" / "params.npz") as a, np.load(tmp_path / "to-best" / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)  # the kept parameters are the best epoch's
    assert main(["train", "--resume", str(tmp_path / "early"), "--epochs", "70", "--no-progress"]) == 2
    assert "stopped early" in capsys.readouterr().err


def test_early_stopping_resumes_exactly(tmp_path):
    common = ["--optimizer", "sgd", "--lr", "0.3", "--sizes", "64,256,10", "--patience", "4", "--no-progress"]
    assert main(["train", *common, "--epochs", "60", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *common, "--epochs", "6", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "60", "--no-progress"]) == 0
    with np.load(tmp_path / "straight" / "params.npz") as a, np.load(tmp_path / "split" / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


# --- output that fits where it goes


def test_one_plain_line_per_epoch_in_a_pipe_and_a_bar_on_a_terminal(tmp_path):
    done = ok(jbp_command("train", "--epochs", "3", "--out", str(tmp_path / "piped")))
    lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("val_accuracy" in line and line.endswith(" s") for line in lines)
    assert "\r" not in done.stdout + done.stderr

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a terminal 160 wide
    process = subprocess.Popen([sys.executable, "-m", "jbp", "train", "--epochs", "3", "--out", str(tmp_path / "tty")],
                               stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert process.wait(timeout=300) == 0
    text = seen.decode(errors="replace")
    assert "3/3" in text and "epoch/s" in text and "val_loss" in text  # tqdm's bar, with the epoch's metrics
    assert "epoch 1/3  loss" not in text


# --- one meaning of l2


def test_l2_means_one_thing_in_fit_and_in_loss_and_grads():
    """λ is Coursera's over the set the cost is taken over: one full-batch epoch of fit with SGD is
    exactly one step on loss_and_grads of the whole set with the same λ."""
    net = jbp.mlp([5, 6, 3], hidden="tanh", output="softmax")
    params = jbp.init(net, jax.random.key(0))
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 5)), np.eye(3)[rng.integers(0, 3, 40)]
    fitted = jbp.fit(net, params, X, Y, loss="softmax_cross_entropy", optimizer=optax.sgd(0.5), epochs=1,
                     batch_size=40, key=jax.random.key(1), l2=2.0)
    _, grads = jbp.loss_and_grads(net, params, X, Y, "softmax_cross_entropy", l2=2.0)
    stepped = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    for a, b in zip(jax.tree.leaves(fitted.params), jax.tree.leaves(stepped)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
