"""Data parallel training: the mesh cases (``mesh_cases.py``) on eight simulated CPU devices in a
process of their own, and many processes on 127.0.0.1 through the command line.

The two-process runs are float32, through the command line, and agree with one
process on eight devices to 1e-6.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from jbp.cli import main

HERE = pathlib.Path(__file__).parent


def test_the_mesh_cases_on_eight_simulated_devices():
    """XLA's simulated devices are fixed when jax starts: the cases run in a fresh interpreter."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "mesh_cases.py")],
                          env=env, capture_output=True, text=True, timeout=900, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"\b(\d+) passed\b", done.stdout) and " failed" not in done.stdout, done.stdout[-2000:]


# ---------------------------------------------------------------------------- processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jbp(*args, devices=4):
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "jbp", *args], env


TRAIN = ["train", "--sizes", "64,24,10", "--batch-size", "64", "--no-progress", "--lr", "0.01"]


def _processes(extra, port, n=2):
    started = []
    for i in range(n):
        command, env = _jbp(*extra, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                            "--process-id", str(i))
        started.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return started


def _finish(processes, timeout=240):
    outs = []
    for p in processes:
        out, err = p.communicate(timeout=timeout)
        outs.append((p.returncode, out, err))
    return outs


def test_two_processes_train_as_one_and_a_killed_run_resumes(tmp_path):
    # one process, eight devices, unbroken: the reference
    command, env = _jbp(*TRAIN, "--epochs", "4", "--devices", "8", "--out", str(tmp_path / "one"), devices=8)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    # two processes of four devices; process 1 is killed during epoch 3 or later
    out = tmp_path / "two"
    processes = _processes([*TRAIN, "--epochs", "4", "--out", str(out)], _free_port())
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
            assert time.monotonic() < deadline and processes[0].poll() is None, processes[0].communicate()
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGKILL)
    finally:
        for p in processes:
            p.kill()
            p.communicate()
    assert (out / "checkpoint.ckpt").is_file()
    assert not (out / "params.npz").exists()  # it did not finish
    # both resume from process 0's checkpoint
    results = _finish(_processes(["train", "--resume", str(out), "--epochs", "4", "--no-progress"], _free_port()))
    assert [r[0] for r in results] == [0, 0], results
    said = [[line for line in out.splitlines() if not line.startswith("[Gloo]")] for _, out, _ in results]
    assert "4 epochs" in said[0][-1] and said[1] == [], said  # only process 0 speaks (gloo's own lines aside)
    with np.load(tmp_path / "one" / "params.npz") as a, np.load(out / "params.npz") as b:
        for k in a.files:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-6, atol=1e-6)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == [1, 2, 3, 4]


def test_a_coordinator_that_never_answers_is_one_line_not_a_hang(tmp_path):
    port = _free_port()
    for process_id in (1, 0):  # 1: nobody listens; 0: listens, and process 1 never comes
        command, env = _jbp(*TRAIN, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                            "--process-id", str(process_id), "--coordinator-timeout", "2",
                            "--out", str(tmp_path / f"p{process_id}"))
        started = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and time.monotonic() - started < 30
        lines = [line for line in done.stderr.splitlines() if line.startswith("jbp: error:")]
        assert len(lines) == 1 and "within 2 s" in lines[0], done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "p0").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2"], "--process-id missing"),
        (["--coordinator", "127.0.0.1:1234", "--num-processes", "2", "--process-id", "2"], r"--process-id must lie in 0…1"),
        (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "must be HOST:PORT"),
        (["--devices", "9"], "9 devices asked for, but this process has 1"),
    ],
)
def test_bad_device_options_are_one_line(args, message, tmp_path, capsys):
    assert main(["train", "--sizes", "64,8,10", "--epochs", "1", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err
    assert not (tmp_path / "run").exists()
