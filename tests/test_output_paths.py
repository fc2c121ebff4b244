"""Outputs that never destroy: jbp replaces only a regular file the user named, never its own
input, never a file in a run's folder; and files built to crash a reader end in one line.

Every node is made here, in a temporary folder: a FIFO, a symbolic link (to a file whose bytes
are checked after), a character device (``os.mknod``, where this process may), a folder, a file
with two hard links."""

import hashlib
import io
import json
import os
import pathlib
import shutil
import stat
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import jbp
from jbp.checkpoint import HEADER, MAGIC
from jbp.cli import main
from jbp.files import FileFormatError, atomic_write, read_npz
from jbp.run import check_output
from cli_errors import refused

ROWS = "a,b,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "xor"
    assert main(["train", "--data", "xor", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    return out


def snapshot(folder: pathlib.Path) -> dict:
    """Every entry of a folder: its kind and, for a regular file, its bytes' digest; for a link, its target."""
    found = {}
    for path in sorted(folder.iterdir()):
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode):
            found[path.name] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_ino)
        elif stat.S_ISLNK(info.st_mode):
            found[path.name] = ("link", os.readlink(path))
        else:
            found[path.name] = (stat.S_IFMT(info.st_mode), info.st_rdev, info.st_ino)
    return found


def make_node(kind: str, path: pathlib.Path, beside: pathlib.Path) -> str:
    """Puts a ``kind`` at ``path``; returns the words jbp's refusal must use."""
    if kind == "fifo":
        os.mkfifo(path)
        return "is a FIFO"
    if kind == "symlink":
        path.symlink_to(beside)
        return "is a symbolic link"
    if kind == "dangling symlink":
        path.symlink_to(beside.parent / "nowhere" / "x.csv")
        return "is a symbolic link"
    if kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        except (PermissionError, OSError) as err:
            pytest.skip(f"this process may not make a device node ({err})")
        return "is a character device"
    if kind == "folder":
        path.mkdir()
        return "is a folder"
    if kind == "hard link":
        os.link(beside, path)
        return "has 2 hard links"
    raise AssertionError(kind)


KINDS = ["fifo", "symlink", "dangling symlink", "device", "folder", "hard link"]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_and_explain_leave_what_is_not_a_regular_file_as_it_was(tmp_path, capsys, run_folder, kind):
    (tmp_path / "in.csv").write_text(ROWS)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    node = tmp_path / "node.csv"
    words = make_node(kind, node, precious)
    before = snapshot(tmp_path)
    refused(capsys, ["predict", run_folder, tmp_path / "in.csv", "--out", node], "--out", str(node), words)
    assert snapshot(tmp_path) == before  # the node, the link's target and every other file as they were
    refused(capsys, ["explain", "--html", node], "--html", words)
    assert snapshot(tmp_path) == before
    assert precious.read_text() == "keep me\n"


def test_a_regular_file_is_replaced_and_a_new_one_written(tmp_path, capsys, run_folder):
    """The rules refuse only what they name: the ordinary cases still write."""
    (tmp_path / "in.csv").write_text(ROWS)
    (tmp_path / "old.csv").write_text("old\n")
    assert main(["predict", str(run_folder), str(tmp_path / "in.csv"), "--out", str(tmp_path / "old.csv")]) == 0
    assert (tmp_path / "old.csv").read_text().startswith("label,p_0,p_1\n")
    assert main(["explain", "--html", str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").read_text().startswith("<!DOCTYPE html>")
    lone = tmp_path / "project"  # a config.json alone does not make a run's folder
    lone.mkdir()
    (lone / "config.json").write_text("{}")
    assert main(["predict", str(run_folder), str(tmp_path / "in.csv"), "--out", str(lone / "p.csv")]) == 0
    assert (lone / "p.csv").is_file()


def test_an_output_that_is_its_own_input_is_refused_however_it_is_spelled(tmp_path, capsys, run_folder):
    source = tmp_path / "in.csv"
    source.write_text(ROWS)
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path, target_is_directory=True)
    for spelling in (source, tmp_path / "sub" / ".." / "in.csv", tmp_path / "alias" / "in.csv"):
        refused(capsys, ["predict", run_folder, source, "--out", spelling], "is the input", "never writes over")
        assert source.read_text() == ROWS
    # the input named through a link, the output by its own name
    (tmp_path / "via.csv").symlink_to(source)
    refused(capsys, ["predict", run_folder, tmp_path / "via.csv", "--out", source], "is the input")
    assert source.read_text() == ROWS


@pytest.mark.parametrize("name", ["params.npz", "checkpoint.ckpt", "config.json", "new.csv"])
def test_nothing_is_written_into_a_run_folder(tmp_path, capsys, run_folder, name):
    (tmp_path / "in.csv").write_text(ROWS)
    before = snapshot(run_folder)
    target = run_folder / name
    if name.endswith((".csv", ".npz")):
        refused(capsys, ["predict", run_folder, tmp_path / "in.csv", "--out", target], "inside the run folder")
    refused(capsys, ["explain", "--html", target], "inside the run folder")
    # spelled through .. and through a link to the folder
    (tmp_path / "link").symlink_to(run_folder, target_is_directory=True)
    refused(capsys, ["explain", "--html", tmp_path / "link" / name], "inside the run folder")
    refused(capsys, ["explain", "--html", run_folder / ".." / run_folder.name / name], "inside the run folder")
    assert snapshot(run_folder) == before


def test_a_folder_a_run_left_with_only_its_lock_is_a_run_folder(tmp_path, capsys):
    """A run that took a folder and failed before its first checkpoint still owns it."""
    (tmp_path / "dead").mkdir()
    (tmp_path / "dead" / ".jbp.lock").write_text("123\n")
    refused(capsys, ["explain", "--html", tmp_path / "dead" / "page.html"], "inside the run folder")
    assert sorted(p.name for p in (tmp_path / "dead").iterdir()) == [".jbp.lock"]
    (tmp_path / "dead" / "sub").mkdir()  # anywhere below it
    for path in (tmp_path / "dead" / "x.csv", tmp_path / "dead" / "sub" / "x.csv", tmp_path / "dead" / "sub" / ".." / "x.csv"):
        with pytest.raises(FileFormatError, match="inside the run folder"):
            check_output(path)
    assert check_output(tmp_path / "x.csv") == tmp_path / "x.csv"  # beside it is fine


# --- the library: atomic_write itself


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device", "folder"])
def test_atomic_write_refuses_anything_but_a_regular_file(tmp_path, kind):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    node = tmp_path / "node"
    words = make_node(kind, node, precious)
    before = snapshot(tmp_path)
    with pytest.raises(FileFormatError, match=words):
        atomic_write(node, lambda f: f.write(b"new"))
    assert snapshot(tmp_path) == before  # no temporary file left either


def test_atomic_write_hard_links_only_when_asked_and_a_late_link_is_caught(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"old")
    os.link(first, second)
    with pytest.raises(FileFormatError, match="has 2 hard links"):
        atomic_write(first, lambda f: f.write(b"new"), one_link=True)
    assert first.read_bytes() == second.read_bytes() == b"old"
    atomic_write(first, lambda f: f.write(b"new"))  # a run's own file: the rename keeps the other name's bytes
    assert first.read_bytes() == b"new" and second.read_bytes() == b"old"

    # something put at the path while the file was being written is seen before the rename
    target, precious = tmp_path / "late", tmp_path / "precious.txt"
    precious.write_text("keep me\n")

    def write(f):
        f.write(b"new")
        target.symlink_to(precious)

    with pytest.raises(FileFormatError, match="is a symbolic link"):
        atomic_write(target, write)
    assert target.is_symlink() and precious.read_text() == "keep me\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --- files built to crash a reader: one line, status 2


def test_explain_refuses_a_network_larger_than_memory():
    """In a process of its own: before, XLA aborted the process allocating the weights."""
    done = subprocess.run([sys.executable, "-m", "jbp", "explain", "--sizes", "100000,100000,10"],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("jbp: error: ") and "100000,100000,10" in lines[0], lines


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("name", ["config.json", "preprocessing.json"])
def test_deeply_nested_json_run_files_are_one_line(tmp_path, capsys, run_folder, name):
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder)
    (folder / name).write_text(DEEP)
    refused(capsys, ["evaluate", folder], str(folder / name), "nests 100000 levels deep")
    with pytest.raises(FileFormatError, match="nests 100000 levels deep"):
        jbp.load_run(folder)


def _rewrite_payload(path: pathlib.Path, change) -> None:
    """Rewrites a checkpoint's archive through ``change(arrays)`` and makes its header right again."""
    raw = path.read_bytes()
    with np.load(io.BytesIO(raw[HEADER.size:]), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    change(arrays)
    payload = io.BytesIO()
    np.savez(payload, **arrays)
    payload = payload.getvalue()
    path.write_bytes(HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload)


def test_a_deeply_nested_checkpoint_description_is_one_line(tmp_path, capsys, run_folder):
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder)
    _rewrite_payload(folder / "checkpoint.ckpt",
                     lambda arrays: arrays.__setitem__("meta", np.frombuffer(DEEP.encode(), np.uint8)))
    refused(capsys, ["evaluate", folder], "checkpoint.ckpt", "nests 100000 levels deep")


def flip(raw: bytes, where: str, field: str) -> bytes:
    """The first local or central zip header with its 'version needed to extract' or compression method set to 0xFFFF."""
    signature, offset = {"local": (b"PK\x03\x04", {"version": 4, "method": 8}),
                         "central": (b"PK\x01\x02", {"version": 6, "method": 10})}[where]
    i = raw.index(signature) + offset[field]
    return raw[:i] + struct.pack("<H", 0xFFFF) + raw[i + 2:]


@pytest.mark.parametrize("where, field", [("central", "version"), ("central", "method"), ("local", "version"),
                                          ("local", "method")])
def test_a_zip_header_with_a_flipped_field_is_refused_or_read_right(tmp_path, capsys, run_folder, where, field):
    folder = tmp_path / "run"
    shutil.copytree(run_folder, folder)
    original = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(flip(original, where, field))
    try:
        params = jbp.checkpoint.load_params(folder / "params.npz")
    except FileFormatError as err:
        assert "params.npz" in str(err)
        (tmp_path / "in.csv").write_text(ROWS)
        refused(capsys, ["predict", folder, tmp_path / "in.csv"], "params.npz")
    else:  # zipfile ignores that field: then the arrays must be exactly the ones written
        with np.load(io.BytesIO(original)) as saved:
            assert [np.array_equal(p, saved[f"{k}{l}"]) for l, layer in enumerate(params, 1)
                    for k, p in zip("Wb", layer)] == [True] * len(saved.files)
    with pytest.raises(FileFormatError):
        read_npz(io.BytesIO(flip(original, "central", field)), ["W1"])
    # the same inside a checkpoint whose digest was made right again
    raw = (folder / "checkpoint.ckpt").read_bytes()
    payload = flip(raw[HEADER.size:], "central", field)
    (folder / "checkpoint.ckpt").write_bytes(HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload)
    with pytest.raises(FileFormatError, match="checkpoint.ckpt"):
        jbp.load_run(folder)


def test_zip_members_are_not_needed_to_see_the_refusal(tmp_path):
    """A central directory that declares an unknown version is refused when the archive is opened."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("W1.npy", b"x")
    with pytest.raises(FileFormatError, match="not a readable .npz"):
        jbp.files.npz_names(io.BytesIO(flip(buffer.getvalue(), "central", "version")))
    with pytest.raises(FileFormatError, match="nests 65 levels deep"):
        jbp.files.parse_json("[" * 65 + "]" * 65, "x.json")
    assert jbp.files.parse_json('{"a": "[[[[", "b": [[1]]}', "x.json") == {"a": "[[[[", "b": [[1]]}
    with pytest.raises(FileFormatError, match="NaN is not a JSON number"):
        jbp.files.parse_json(json.dumps([float("nan")]), "x.json")


def test_predict_never_writes_over_the_data_its_run_was_trained_on(tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("a,b,y\n" + "0,0,0\n0,1,1\n1,0,1\n1,1,0\n" * 5)
    before = data.read_bytes()
    assert main(["train", "--data", f"csv:{data}", "--epochs", "1", "--batch-size", "4", "--out", str(tmp_path / "r"),
                 "--no-progress"]) == 0
    (tmp_path / "in.csv").write_text("a,b\n0,1\n")
    refused(capsys, ["predict", tmp_path / "r", tmp_path / "in.csv", "--out", data], "is the input")
    assert data.read_bytes() == before


def test_numbers_that_overflow_the_network_are_one_line_not_an_internal_error(tmp_path, capsys):
    """Inputs finite in float32 whose pass overflows: training still writes its summary (with the part it
    could not measure named), and evaluate and predict end in one line with status 1."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    Xt = rng.normal(size=(10, 3)).astype(np.float32)
    Xt[0, 0] = 3e38
    path = tmp_path / "big.npz"
    np.savez(path, x_train=X, y_train=(X[:, 0] > 0).astype(int), x_test=Xt, y_test=(Xt[:, 0] > 0).astype(int))
    out = tmp_path / "run"
    assert main(["train", "--data", f"npz:{path}", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "overflowed" in summary["test_error"] and "test_accuracy" not in summary
    capsys.readouterr()
    for argv in (["evaluate", out], ["predict", out, path]):
        assert main([str(a) for a in argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "overflowed" in err[0] and "internal error" not in err[0], err
