"""A run owns its folder and touches nothing else; every failure of the jbp
command is one line and a status; nothing done is lost. Real processes, real
signals, real file systems (a small tmpfs for a full disk, a read-only one
for a folder that cannot be written, where this machine lets the test mount
them)."""

import contextlib
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

import jbp
from jbp.cli import main
from jbp.run import RunFolder, RunFolderError

FAST = ["--epochs", "3", "--no-progress"]
# XOR with two 1024-wide layers: a 12 MB checkpoint after every epoch, epochs of a fraction of a second
SLOW = ["--data", "xor", "--sizes", "2,1024,1024,1", "--hidden", "tanh", "--lr", "0.001", "--no-progress"]


def command(*args):
    return [sys.executable, "-m", "jbp", *args]


def run(*args, cwd=None, env=None, timeout=300):
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def one_line(done, status, *fragments):
    """The process ended with ``status`` and one line on stderr holding every fragment, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("jbp: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(pathlib.Path(folder).iterdir())}


def load_epoch(folder, sizes=(2, 1024, 1024, 1)):
    net = jbp.mlp(list(sizes), hidden="tanh", output="sigmoid")
    params = jbp.init(net, jax.random.key(0), dtype=np.float32)
    return jbp.checkpoint.load(pathlib.Path(folder) / "checkpoint.ckpt", params_like=params,
                               opt_state_like=optax.adam(0.001).init(params)).epoch


def wait_for(condition, timeout=120, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run ended first: {process.stderr.read()}")
        time.sleep(0.01)
    raise AssertionError("timed out")


# --- the folder belongs to one run


def test_a_folder_with_files_of_its_own_is_refused_untouched(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / ".checkpoint.ckpt.abcd1234.tmp").write_text("not jbp's, though the name is close")
    (folder / ".params.npz.jbp-zzzz.tmp").write_text("not the exact form either")
    before = digest(folder)
    one_line(run("train", *FAST, "--out", str(folder)), 2, "is not empty", "a new run writes only into a new or empty folder")
    assert digest(folder) == before


def test_resume_removes_only_the_temporary_files_its_own_writes_left(tmp_path):
    folder = tmp_path / "run"
    assert run("train", *FAST, "--out", str(folder)).returncode == 0
    ours = folder / ".checkpoint.ckpt.jbp-ab12cd34.tmp"
    ours.write_bytes(b"half a checkpoint")
    theirs = [folder / ".checkpoint.ckpt.ab12cd34.tmp", folder / "notes.tmp", folder / ".metrics.jsonl.jbp-ab12cd34.tmp.bak",
              folder / ".unknown.jbp-ab12cd34.tmp"]
    for path in theirs:
        path.write_text("someone else's")
    done = run("train", "--resume", str(folder), "--epochs", "4", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert not ours.exists() and all(path.read_text() == "someone else's" for path in theirs)


def test_two_runs_cannot_share_a_folder(tmp_path):
    folder = tmp_path / "shared"
    first = subprocess.Popen(command("train", *SLOW, "--epochs", "8", "--out", str(folder)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (folder / "checkpoint.ckpt").exists(), process=first)
        first.send_signal(signal.SIGSTOP)  # paused mid-run, the folder still its own
        one_line(run("train", *SLOW, "--epochs", "8", "--out", str(folder)), 2, "already holds a run")
        one_line(run("train", "--resume", str(folder), "--epochs", "9", "--no-progress"), 2,
                 f"is in use by another jbp run (process {first.pid})")
        first.send_signal(signal.SIGCONT)
        empty = tmp_path / "empty"
        empty.mkdir()
        with RunFolder.new(empty, "x"):  # this test process holds an empty folder
            one_line(run("train", *FAST, "--out", str(empty)), 2, f"is in use by another jbp run (process {os.getpid()})")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    epochs = [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 9))


def test_runs_started_together_without_out_get_folders_of_their_own(tmp_path):
    processes = [subprocess.Popen(command("train", "--epochs", "1", "--no-progress"), cwd=tmp_path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    assert [p.wait(timeout=300) for p in processes] == [0, 0, 0]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 3
    for folder in folders:
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1


def test_default_folders_in_the_same_second_are_numbered(tmp_path):
    folders = [RunFolder.new(None, "digits", parent=tmp_path) for _ in range(3)]
    names = [f.path.name for f in folders]
    for folder in folders:
        folder.release()
    stamps = {name.split("-")[1] + name.split("-")[2] for name in names}
    if len(stamps) == 1:  # all three in one second: the second and third are numbered
        assert names[1] == names[0] + "-2" and names[2] == names[0] + "-3"
    assert len(set(names)) == 3


@pytest.mark.parametrize("option", ["--out", "--resume"])
def test_a_file_where_a_folder_is_expected(tmp_path, option):
    path = tmp_path / "file"
    path.write_text("x")
    one_line(run("train", *FAST, option, str(path)), 2, f"{path} is a file, not a folder")
    one_line(run("train", *FAST, "--data", f"mnist:{path}"), 2, f"{path} is a file; expected a folder")
    assert path.read_text() == "x"


# --- real file systems: read-only, and full


@contextlib.contextmanager
def mounted_tmpfs(where, options):
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_folder_that_cannot_be_written(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        done = run("train", *FAST, "--out", str(folder / "run"))
        one_line(done, 1, "Read-only file system", str(folder / "run"))


def test_a_full_disk_keeps_the_last_good_checkpoint(tmp_path):
    # room for the first checkpoint (about 120 kB) but not for a second beside it
    with mounted_tmpfs(tmp_path / "small", "size=200k") as disk:
        out = disk / "run"
        done = run("train", "--epochs", "5", "--no-progress", "--out", str(out))
        line = one_line(done, 1, "the disk is full", "the checkpoint of epoch 1, the last finished, is kept")
        net = jbp.mlp([64, 128, 10], hidden="relu", output="softmax")
        params = jbp.init(net, jax.random.key(0), dtype=np.float32)
        state = jbp.checkpoint.load(out / "checkpoint.ckpt", params_like=params,
                                    opt_state_like=optax.adam(0.001).init(params))
        assert state.epoch == 1, line
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --- Ctrl-C


def test_ctrl_c_saves_what_was_done_and_the_run_resumes_exactly(tmp_path):
    reference = tmp_path / "unbroken"
    assert run("train", *SLOW, "--epochs", "6", "--out", str(reference)).returncode == 0
    folder = tmp_path / "interrupted"
    process = subprocess.Popen(command("train", *SLOW, "--epochs", "6", "--out", str(folder)),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (folder / "metrics.jsonl").exists()
                 and len((folder / "metrics.jsonl").read_text().splitlines()) >= 2, process=process)
        process.send_signal(signal.SIGINT)
        stderr = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted;" in lines[0] and "Traceback" not in stderr
    assert f"continue with jbp train --resume {folder}" in lines[0]
    epoch = load_epoch(folder)
    assert 2 <= epoch < 6 and f"the checkpoint of epoch {epoch}" in lines[0]
    assert (folder / "params.npz").exists()
    assert run("train", "--resume", str(folder), "--epochs", "6", "--no-progress").returncode == 0
    with np.load(reference / "params.npz") as a, np.load(folder / "params.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


# --- options refused before any work, with the limit named


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
        (["train", "--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
        (["train", "--l2", "inf"], "argument --l2: must be a finite number ≥ 0, got inf"),
        (["train", "--seed", str(2**64)], "argument --seed: must lie in [0, 2^64)"),
        (["train", "--seed", "-1"], "argument --seed: must lie in [0, 2^64)"),
        (["train", "--sizes", "64,2000000000,10"], "has 150,000,000,010 parameters; training it needs about"),
        (["train", "--epoch", "3"], "unrecognized arguments: --epoch 3"),
        (["train", "--max-bytes", "lots"], "a size must be a number of bytes"),
        (["gradcheck", "--eps", "0"], "argument --eps: must be a finite number > 0, got 0"),
        (["gradcheck", "--eps", "nan"], "argument --eps: must be a finite number > 0, got nan"),
        (["gradcheck", "--tolerance", "-1"], "argument --tolerance: must be a finite number > 0"),
        (["gradcheck", "--samples", "0"], "argument --samples: must be a positive integer"),
        (["gradcheck", "--sizes", "784,512,10"], "gradcheck takes networks of at most 100,000"),
        (["gradcheck", "--hidden", "relu,tanh"], "--hidden names 2 activations for 1 hidden layers"),
        (["bench", "--batch-sizes", "x"], "--batch-sizes must be comma-separated positive integers"),
        (["bench", "--repeats", "0"], "--repeats and --steps must be at least 1"),
        (["bench", "--sizes", "5"], "--sizes must be at least 2 positive integer(s)"),
        (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_options_are_one_line_before_any_work(tmp_path, args, message):
    done = run(*args, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_seed_keeps_all_its_64_bits(tmp_path):
    for seed in ("5", str(2**32 + 5)):
        assert main(["train", "--epochs", "1", "--seed", seed, "--out", str(tmp_path / seed), "--no-progress"]) == 0
    with np.load(tmp_path / "5" / "params.npz") as a, np.load(tmp_path / str(2**32 + 5) / "params.npz") as b:
        assert not np.array_equal(a["W1"], b["W1"])


# --- files of a run read back: checked, and named when wrong


def test_an_edited_config_or_a_corrupt_data_file_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(folder), "--no-progress"]) == 0
    config = json.loads((folder / "config.json").read_text())
    for edit, message in [({**config, "lr": "fast"}, "lr must be a finite number > 0, got 'fast'"),
                          ({**config, "sizes": [64, -3, 10]}, "sizes must be at least two positive widths"),
                          ({k: v for k, v in config.items() if k != "loss"}, "has the wrong keys; missing: loss")]:
        (folder / "config.json").write_text(json.dumps(edit))
        one_line(run("train", "--resume", str(folder), "--epochs", "3", "--no-progress"), 2,
                 str(folder / "config.json"), message)
    (folder / "config.json").write_text("{not json")
    one_line(run("train", "--resume", str(folder), "--epochs", "3", "--no-progress"), 2, "config.json is not valid JSON")

    data = tmp_path / "mnist"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / f"{stem}.gz").write_bytes(b"\x1f\x8b\x08\x00 this is no gzip stream")
    done = run("train", "--data", f"mnist:{data}", "--no-progress", cwd=tmp_path)
    one_line(done, 2, "is not a readable gzip file")
    debug = run("train", "--data", f"mnist:{data}", "--no-progress", "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # asked for, the traceback is there


def test_non_finite_numbers_never_reach_the_run_files(tmp_path):
    """metrics.jsonl and every JSON file parse under strict JSON (no Infinity, no NaN)."""
    folder = tmp_path / "run"
    done = run("train", "--epochs", "3", "--lr", "1e6", "--optimizer", "sgd", "--out", str(folder), "--no-progress")
    assert done.returncode == 1 and "diverged" in done.stderr
    strict = {"parse_constant": lambda name: pytest.fail(f"{name} in a run file")}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        json.loads(line, **strict)
    json.loads((folder / "config.json").read_text(), **strict)


def test_run_folder_refusals_in_the_library(tmp_path):
    with RunFolder.new(tmp_path / "a", "x") as held:
        with pytest.raises(RunFolderError, match="is in use by another jbp run"):
            RunFolder.new(tmp_path / "a", "x")
        assert (held / "config.json") == tmp_path / "a" / "config.json"
    with RunFolder.new(tmp_path / "a", "x"):  # released, it can be taken again (still empty)
        pass
    with pytest.raises(RunFolderError, match="holds no checkpoint.ckpt"):
        RunFolder.existing(tmp_path / "a")
    (tmp_path / "a" / ".jbp.lock").unlink()
    (tmp_path / "a" / ".jbp.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(RunFolderError, match="is not a lock file jbp wrote"):
        RunFolder.new(tmp_path / "a", "x")
    assert not (tmp_path / "elsewhere").exists()
