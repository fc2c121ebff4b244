"""Real processes: killed mid-write, resumed, compared; run twice; measured."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax

import jbp

ROOT = pathlib.Path(__file__).parents[1]
# XOR with two 2048-wide layers: almost no arithmetic per epoch, a 50 MB
# checkpoint (parameters and Adam's two moments) written after each one, so
# the process spends most of its life inside checkpoint writes.
BIG = ["--data", "xor", "--sizes", "2,2048,2048,1", "--hidden", "tanh", "--lr", "0.001", "--no-progress"]


def jbp_command(*args):
    return [sys.executable, "-m", "jbp.cli", *args]


def run(*args, timeout=300):
    done = subprocess.run(jbp_command(*args), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def saved_params(folder):
    with np.load(folder / "params.npz", allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def loadable_epoch(folder):
    """The epoch of the checkpoint in folder, loaded as a resume would, or None."""
    path = folder / "checkpoint.ckpt"
    if not path.exists():
        return None
    net = jbp.mlp([2, 2048, 2048, 1], hidden="tanh", output="sigmoid")
    params = jbp.init(net, jax.random.key(0), dtype=np.float32)  # the command trains in float32
    return jbp.checkpoint.load(path, params_like=params, opt_state_like=optax.adam(0.001).init(params)).epoch


def kill_during_write(args, folder, nth_write, timeout=120):
    """Starts a run and SIGKILLs it while its nth checkpoint write is under way
    (its temporary file exists). Returns whether the write was caught half done."""
    left_by_earlier_kills = set(folder.glob(".checkpoint.ckpt.*.tmp"))
    process = subprocess.Popen(jbp_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen, deadline = 0, time.monotonic() + timeout
    writing = False
    try:
        while time.monotonic() < deadline:
            temporary = set(folder.glob(".checkpoint.ckpt.*.tmp")) - left_by_earlier_kills
            if temporary and not writing:
                seen, writing = seen + 1, True
                if seen == nth_write:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return any(p.exists() for p in temporary)
            elif not temporary:
                writing = False
            if process.poll() is not None:
                raise AssertionError(f"the run ended before write {nth_write}: {process.stderr.read().decode()}")
            time.sleep(0.0005)
        raise AssertionError("no checkpoint write was seen in time")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigkill_during_checkpoint_writes_loses_nothing(tmp_path):
    epochs = "12"
    reference = tmp_path / "unbroken"
    run("train", *BIG, "--epochs", epochs, "--out", str(reference))

    folder = tmp_path / "killed"
    caught_mid_write, epochs_seen = 0, []
    plan = [2, 1, 3, 1, 2, 2]  # kill at the nth write of each attempt
    for attempt, nth in enumerate(plan):
        args = ["train", *BIG, "--epochs", epochs, "--out", str(folder)] if attempt == 0 else \
            ["train", "--resume", str(folder), "--epochs", epochs, "--no-progress"]
        before = loadable_epoch(folder) or 0
        caught_mid_write += kill_during_write(args, folder, nth)
        # the nth write was cut short: the checkpoint is the one of the write before it, whole
        assert loadable_epoch(folder) == before + nth - 1, (before, nth, loadable_epoch(folder))
        epochs_seen.append(loadable_epoch(folder))
    run("train", "--resume", str(folder), "--epochs", epochs, "--no-progress")

    assert caught_mid_write >= len(plan) - 1, f"only {caught_mid_write} kills landed inside a write"
    assert not list(folder.glob(".*.tmp")), "a resumed run clears what killed writes left"
    expected, got = saved_params(reference), saved_params(folder)
    assert all(np.array_equal(expected[k], got[k]) for k in expected), "resumed run differs from the unbroken one"
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 13))
    assert epochs_seen == [1, 1, 3, 3, 4, 5]


def test_same_seed_same_bits_in_two_processes(tmp_path):
    for name in ("a", "b"):
        run("train", "--epochs", "3", "--seed", "7", "--out", str(tmp_path / name), "--no-progress")
    a, b = saved_params(tmp_path / "a"), saved_params(tmp_path / "b")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    run("train", "--epochs", "3", "--seed", "8", "--out", str(tmp_path / "c"), "--no-progress")
    c = saved_params(tmp_path / "c")
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_peak_memory_of_200000_samples_stays_under_three_times_the_data():
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "memory.py")], capture_output=True,
                          text=True, timeout=600, cwd=ROOT / "experiments")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["samples"] == 200_000 and report["features"] == 784
    assert report["peak_above_baseline_over_data"] < 3.0, report
    assert np.isfinite(report["loss"])
