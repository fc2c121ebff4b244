"""The jbp command, run as a user runs it: defaults, files, resume, bad options."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jbp.cli import main


def run(*argv, capsys=None):
    status = main(list(argv))
    out = capsys.readouterr() if capsys else None
    return status, out


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "default"
    assert main(["train", "--out", str(out), "--no-progress"]) == 0
    return out


def test_defaults_reach_97_percent_on_the_bundled_digits(default_run):
    summary = json.loads((default_run / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97, summary
    assert summary["epochs"] == 40


def test_the_output_folder_holds_everything(default_run):
    assert sorted(p.name for p in default_run.iterdir()) == [
        ".jbp.lock", "checkpoint.ckpt", "config.json", "metrics.jsonl", "params.npz", "plot.png", "preprocessing.json",
        "summary.json",
    ]
    lines = (default_run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 41))
    config = json.loads((default_run / "config.json").read_text())
    assert config["sizes"] == [64, 128, 10] and config["optimizer"] == "adam" and config["data"] == "digits"
    assert (default_run / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_ends_with_the_parameters_of_an_unbroken_run(tmp_path, default_run):
    out = tmp_path / "split"
    assert main(["train", "--out", str(out), "--epochs", "15", "--no-progress"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "40", "--no-progress"]) == 0
    with np.load(out / "params.npz") as a, np.load(default_run / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in b.files)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 40


def test_changed_options_train_another_network(tmp_path, capsys):
    out = tmp_path / "tanh"
    status, _ = run("train", "--sizes", "64,20,20,10", "--hidden", "tanh,sigmoid", "--optimizer", "sgd",
                    "--lr", "0.2", "--l2", "0.5", "--epochs", "3", "--batch-size", "50", "--seed", "3",
                    "--out", str(out), capsys=capsys)
    assert status == 0
    with np.load(out / "params.npz") as params:
        assert [params[k].shape for k in params.files] == [(20, 64), (20,), (20, 20), (20,), (10, 20), (10,)]
    assert json.loads((out / "config.json").read_text())["hidden"] == ["tanh", "sigmoid"]


def test_xor_defaults(tmp_path, capsys):
    status, out = run("train", "--data", "xor", "--out", str(tmp_path / "xor"), capsys=capsys)
    assert status == 0 and "test_accuracy 1.0000" in out.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--hidden", "sigmoidd"], "unknown activation 'sigmoidd'"),
        (["train", "--loss", "mse"], "unknown loss 'mse'; expected one of squared_error"),
        (["train", "--optimizer", "adamm"], "unknown optimizer 'adamm'; expected one of"),
        (["train", "--sizes", "64,x,10"], "comma-separated integers"),
        (["train", "--sizes", "60,32,10"], "does not fit --data digits: it has 64 inputs and 10 outputs"),
        (["train", "--epochs", "0"], "positive integer"),
        (["train", "--batch-size", "9999"], "larger than the 1257 training samples"),
        (["train", "--l2", "-1"], "argument --l2: must be a finite number ≥ 0, got -1"),
        (["train", "--lr", "0"], "argument --lr: must be a finite number > 0, got 0"),
        (["train", "--data", "cifar"], "unknown data set 'cifar'"),
        (["train", "--data", "mnist:/no/such/folder"], "no MNIST folder at /no/such/folder"),
        (["train", "--hidden", "relu,tanh"], "--hidden names 2 activations for 1 hidden layers"),
        (["train", "--resume", "/no/such/run"], "no run at /no/such/run"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own refusals exit from inside
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err, err


def test_an_existing_run_is_not_overwritten(default_run, capsys):
    assert main(["train", "--out", str(default_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_refuses_conflicting_options(default_run, capsys):
    assert main(["train", "--resume", str(default_run), "--lr", "0.1", "--epochs", "41"]) == 2
    assert "--lr differ from its configuration" in capsys.readouterr().err


def test_mazur_command(capsys):
    assert main(["mazur"]) == 0
    out = capsys.readouterr().out
    assert "BP1  δ^2 = ∇_a C ⊙ σ'(z^2)" in out and "39 of 39 figures agree" in out


def test_gradcheck_command(capsys):
    assert main(["gradcheck", "--sizes", "4,6,5,3", "--hidden", "tanh,elu", "--output", "softmax",
                 "--loss", "softmax_cross_entropy", "--l2", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "passes" in out
    difference = float(out.split("= ")[-1].split()[0])
    assert difference < 1e-7
    assert main(["gradcheck", "--tolerance", "1e-30"]) == 1  # the verdict can go the other way


def test_help_explains_every_option():
    text = subprocess.run([sys.executable, "-m", "jbp.cli", "train", "--help"], capture_output=True, text=True).stdout
    for option in ("--sizes", "--hidden", "--output", "--loss", "--optimizer", "--lr", "--l2", "--epochs",
                   "--batch-size", "--seed", "--data", "--out", "--resume"):
        assert option in text


def test_the_console_script_is_installed():
    done = subprocess.run(["jbp", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout and "gradcheck" in done.stdout


def test_bench_command(capsys):
    assert main(["bench", "--sizes", "6,5,3", "--batch-sizes", "4", "--repeats", "1", "--steps", "1"]) == 0
    assert "jbp/autodiff" in capsys.readouterr().out


def test_train_on_mnist_files_in_a_folder(tmp_path, capsys):
    from test_data import tiny_mnist

    tiny_mnist(tmp_path, compress=True, n_train=60, n_test=10)
    out = tmp_path / "run"
    assert main(["train", "--data", f"mnist:{tmp_path}", "--epochs", "2", "--batch-size", "8", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1 and json.loads((out / "config.json").read_text())["sizes"] == [784, 128, 10]
    assert main(["train", "--data", f"mnist:{tmp_path / 'empty'}"]) == 2
    assert "no MNIST folder" in capsys.readouterr().err
