"""Dense networks give, bit for bit in float64, what jbp 0.2.0 gave; its run folders load, evaluate,
predict and resume. The expected numbers are 0.2.0's own, written by ``tests/data/make_v0_2_0.py``
before the layer redesign (``tests/data/v0_2_0_outputs.npz``)."""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import jbp

DATA = pathlib.Path(__file__).parent / "data"
spec = importlib.util.spec_from_file_location("make_v0_2_0", DATA / "make_v0_2_0.py")
maker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(maker)
STORED = np.load(DATA / "v0_2_0_outputs.npz")


@pytest.mark.parametrize("seed, name", list(enumerate(maker.CASES)))
def test_dense_networks_compute_what_0_2_0_computed(seed, name):
    sizes, hidden, output, loss = maker.CASES[name]
    now = maker.outputs(name, sizes, hidden, output, loss, seed)
    stored = {key.split("/", 1)[1]: STORED[key] for key in STORED.files if key.startswith(name + "/")}
    assert sorted(now) == sorted(stored)
    different = [key for key in stored if not np.array_equal(now[key], stored[key], equal_nan=True)]
    assert not different, f"{len(different)} of {len(stored)} outputs differ from 0.2.0's, first {different[:5]}"


def _copy(tmp_path, name):
    target = tmp_path / name
    shutil.copytree(DATA / name, target)
    return target


def _params_of(folder):
    return jbp.checkpoint.load_params(folder / "params.npz")


@pytest.mark.parametrize("name", ["v0_2_0_run", "v0_2_0_run_kp"])
def test_a_0_2_0_run_loads_evaluates_and_predicts(tmp_path, name, capsys):
    from jbp.cli import main

    folder = _copy(tmp_path, name)
    run = jbp.load_run(folder)
    assert run.net == jbp.mlp([2, 4, 1], hidden="tanh", output="sigmoid")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(_params_of(folder))))
    if name.endswith("_kp"):  # the learned matrices come back from the checkpoint, not the seed's draw
        assert run.feedback.kind == "kp"
        assert all(np.array_equal(B, s) for B, s in zip(run.feedback.matrices, run.checkpoint.extras["feedback"]))
    data = jbp.data.xor()
    summary = __import__("json").loads((folder / "summary.json").read_text())
    measured = jbp.evaluate(run.net, run.params, data.test.X, data.test.Y, run.loss)
    assert measured["accuracy"] == summary["test_accuracy"]
    assert np.isclose(measured["loss"], summary["test_loss"], rtol=1e-6)
    capsys.readouterr()
    assert main(["evaluate", str(folder), "--json"]) == 0
    assert __import__("json").loads(capsys.readouterr().out)["accuracy"] == summary["test_accuracy"]
    np.savez(tmp_path / "inputs.npz", X=np.asarray(data.test.X))
    assert main(["predict", str(folder), str(tmp_path / "inputs.npz"), "--out", str(tmp_path / "out.csv")]) == 0
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert len(rows) == 1 + len(data.test.X)


def _jbp(*args):
    """The command in its own process, as 0.2.0's runs were written (float32, no jax_enable_x64)."""
    subprocess.run([sys.executable, "-m", "jbp", *args], check=True, capture_output=True, env=dict(os.environ,
                   JAX_ENABLE_X64="0"))


def test_a_0_2_0_run_resumes_as_if_it_had_never_stopped(tmp_path):
    """0.2.0 trained 20 epochs; resumed to 25 now, the parameters are those of 25 epochs in one go now,
    whose first 20 epochs give 0.2.0's parameters bit for bit."""
    folder = _copy(tmp_path, "v0_2_0_run")
    common = ["--data", "xor", "--seed", "3", "--optimizer", "adam", "--lr", "0.05", "--no-progress"]
    _jbp("train", *common, "--epochs", "20", "--out", str(tmp_path / "again20"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(_params_of(tmp_path / "again20")),
                                                     jax.tree.leaves(_params_of(folder))))
    _jbp("train", "--resume", str(folder), "--epochs", "25", "--no-progress")
    _jbp("train", *common, "--epochs", "25", "--out", str(tmp_path / "once25"))
    resumed, once = _params_of(folder), _params_of(tmp_path / "once25")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(once)))
    assert len(jbp.load_run(folder).history) == 25
