"""One's own data, hardened: the CSV reader streams (its peak memory a stated multiple of its
array), refuses what it cannot read without guessing (empty labels, cells over lines, headers of
numbers, classes too small to split), data and quantities that cannot fit are refused before
anything is allocated, a trained run's columns are matched by name, every npz part is checked when
read, and a run's preprocessing.json is read strictly. Every input is built here."""

import csv
import json
import re
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import quantities
from jbp.cli import main, options
from jbp.data import tabular
from jbp.data.preprocessing import Preprocessing
from jbp.files import FileFormatError
from cli_errors import one_error


def write(path, text):
    path.write_bytes(text.encode())
    return path


# --- memory

PEAK = textwrap.dedent("""
    import json, sys
    from jbp.data import tabular

    def status(key):  # VmHWM, not ru_maxrss: the kernel carries ru_maxrss over from the parent across exec
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far (the imports') forgotten: VmHWM restarts from the RSS now
    before = status("VmRSS")
    X, labels, names = tabular.read_csv(sys.argv[1])
    peak = status("VmHWM")
    print(json.dumps({"nbytes": X.nbytes, "extra": peak - before, "rows": len(labels), "head": X[:2].tolist(),
                      "last": X[-1].tolist()}))
""")
PEAK_MULTIPLE = 2.0
"""read_csv's peak extra memory, as a multiple of the float64 array it returns (measured: 1.3 on a
6 MB and on a 50 MB file; the reader before streaming took 21)."""


def test_the_csv_reader_streams_within_a_stated_multiple_of_its_array(tmp_path):
    rng = np.random.default_rng(0)
    rows, width = 70_000, 10
    X = rng.normal(size=(rows, width)) * 100
    labels = np.array(["setosa", "versicolor", "virginica"])[rng.integers(0, 3, rows)]
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write(",".join(f"f{j}" for j in range(width)) + ",species\n")
        f.writelines(",".join(f"{v:.6f}" for v in x) + f",{label}\n" for x, label in zip(X, labels))
    assert path.stat().st_size > 5e6
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    print(f"read_csv peak: {got['extra'] / got['nbytes']:.2f}x the array ({got['nbytes']} bytes)")
    assert got["nbytes"] == rows * width * 8 and got["rows"] == rows
    assert got["extra"] <= PEAK_MULTIPLE * got["nbytes"], f"peak {got['extra'] / got['nbytes']:.2f}x the array"
    np.testing.assert_array_equal(got["head"], np.round(X[:2], 6))
    np.testing.assert_array_equal(got["last"], np.round(X[-1], 6))


def test_the_streamed_reader_reads_what_a_plain_reading_does(tmp_path, monkeypatch):
    """Blank lines, CRLF, a BOM, quoted numbers, spaces; and a file with more rows than were counted
    (the array grows)."""
    rng = np.random.default_rng(1)
    X = np.round(rng.normal(size=(50, 3)), 4)
    labels = rng.choice(["a", "b b", "c"], 50)
    lines = ["x,y,z,label"] + [f'{x[0]},"{x[1]}", {x[2]} ,"{label}"' for x, label in zip(X, labels)]
    lines.insert(10, "")
    lines.insert(20, " , , , ")
    path = write(tmp_path / "odd.csv", "\ufeff" + "\r\n".join(lines) + "\r\n")
    reference = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
    rows = [r for r in reference[1:] if any(c.strip() for c in r)]
    expected = np.array([[float(c) for c in r[:3]] for r in rows])
    for counted in (None, 1):  # the file's own count, then far too few: the array grows by half
        if counted:
            monkeypatch.setattr(tabular, "_line_breaks", lambda path, limit: counted)
        got, got_labels, names = tabular.read_csv(path)
        np.testing.assert_array_equal(got, expected)
        assert got_labels == [r[3] for r in rows] and names == ["x", "y", "z"]
    table = tabular.read_table(path)
    assert sorted(table.values) == ["a", "b b", "c"] and table.codes.dtype == np.int64
    assert [table.values[k] for k in table.codes] == list(labels)
    assert table.features == ("x", "y", "z") and table.label == "label"


def test_labels_that_are_one_number_are_one_class(tmp_path):
    path = write(tmp_path / "n.csv", "a,y\n" + "".join(f"{i},{['1', '1.0', '2', ' 2'][i % 4]}\n" for i in range(40)))
    X, labels, _ = tabular.read_csv(path)
    assert labels == [[1.0, 1.0, 2.0, 2.0][i % 4] for i in range(40)]
    assert jbp.data.load(f"csv:{path}").preprocessing.classes == (1, 2)


def test_many_classes_are_refused_before_any_target_is_built(tmp_path, capsys, monkeypatch):
    # 30,000 classes of two rows: no class can give a validation or a test row
    path = tmp_path / "classes.csv"
    with open(path, "w") as f:
        f.write("a,b,label\n")
        f.writelines(f"{i % 97},{i % 89},c{i // 2}\n" for i in range(60_000))
    started = time.monotonic()
    assert main(["train", "--data", f"csv:{path}", "--out", str(tmp_path / "run")]) == 2
    line = one_error(capsys)
    assert "the test part (15% of each class) would be empty" in line and "has 2 row(s)" in line
    assert "needs 4" in line and time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()

    # classes big enough to split, whose one-hot targets do not fit: refused by count, nothing built
    path = tmp_path / "wide.csv"
    with open(path, "w") as f:
        f.write("a,label\n")
        f.writelines(f"{i},c{i % 300}\n" for i in range(3000))
    monkeypatch.setattr(jbp.data, "available_memory", lambda: 4 * 3000 * 300)
    monkeypatch.setattr(jbp.data, "one_hot", lambda *a: pytest.fail("targets built before the check"))
    with pytest.raises(ValueError, match=r"300 classes over 3,000 rows of 1 features: the one-hot targets need "
                                         r"0.0036 GB and the inputs 1.2e-05 GB, 0.00722 GB with their copies on the "
                                         r"device, and this machine has 0.0036 GB available"):
        jbp.data.load(f"csv:{path}")


def test_the_training_memory_check_counts_the_data_and_its_targets(monkeypatch):
    monkeypatch.setattr(options, "available_memory", lambda: 2 * 10**9)
    options.check_memory([4, 16, 30_000], None, 32)  # the network alone fits
    with pytest.raises(ValueError, match=r"60,000 rows of data \(7.2 GB, targets one-hot over 30,000 outputs\)"):
        options.check_memory([4, 16, 30_000], None, 32, samples=60_000)


NET = jbp.mlp([3, 4, 2], output=jbp.softmax)
PARAMS = jbp.init(NET, jax.random.key(0))
X5 = jnp.ones((5, 3))
Y5 = jnp.eye(2)[jnp.array([0, 1, 0, 1, 1])]


def test_quantities_refuse_what_memory_cannot_hold(monkeypatch):
    monkeypatch.setattr(quantities, "available_memory", lambda: 10**9)
    key = jax.random.key(1)
    size = np.dtype(PARAMS[0].W.dtype).itemsize  # 4, or 8 under x64
    drawn = f"{5 * 10**8 * (8 + 3 * 6 * size) / 1e9:.3g}"  # keys, and 3 copies of the columns over widths 4 + 2
    for call in (lambda s: jbp.diag_ggn_mc(NET, PARAMS, X5, Y5, "softmax_cross_entropy", key, samples=s),
                 lambda s: jbp.kfac_factors(NET, PARAMS, X5, Y5, "softmax_cross_entropy", key=key, samples=s)):
        with pytest.raises(ValueError, match=rf"on 5 rows, samples=100,000,000 needs about {drawn} GB \(the sampled "
                                             rf"columns carried back: {drawn} GB\), and this machine has 1 GB available"):
            call(10**8)
        with pytest.raises(ValueError, match=r"samples=1,000,000,000 over 5 rows asks for 5,000,000,000 draws; "
                                             r"at most 2,147,483,647"):
            call(10**9)
        for bad in (True, 2.0, "2"):
            with pytest.raises(TypeError, match="samples must be a whole number"):
                call(bad)
        assert np.all(np.isfinite(jax.tree.leaves(call(np.int64(3)))[0]))  # a NumPy integer is a whole number
    # 40,000 rows: a Gram matrix of 6.4 GB, counted before anything is computed
    X, Y = jnp.ones((40_000, 3)), jnp.tile(jnp.array([1.0, 0.0]), (40_000, 1))
    gram = f"{4 * 40_000**2 * size / 1e9:.3g}"
    with pytest.raises(ValueError, match=rf"per_example_grad_gram on 40,000 rows needs about [\d.]+ GB \(the Gram "
                                         rf"matrix: {gram} GB\), and this machine has 1 GB available"):
        jbp.per_example_grad_gram(NET, PARAMS, X, Y, "softmax_cross_entropy")
    monkeypatch.setattr(quantities, "available_memory", lambda: 10**12)
    assert jbp.per_example_grad_gram(NET, PARAMS, X5, Y5, "softmax_cross_entropy").shape == (5, 5)
    parts = quantities.memory_needed(NET, 7, 4, ["diag_ggn_mc"], samples=10)  # float32
    assert parts == {"the forward and backward passes": 3 * 7 * (3 + 4 + 2) * 4,
                     "the sampled columns carried back": 7 * 10 * (8 + 3 * (4 + 2) * 4)}


# --- CSV files that cannot be read without guessing


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b,y\n1,2,x\n3,4,\n5,6,z\n", "row 3, column 'y': the label cell is empty"),
        ("a,b,y\n1,2,x\n\n3,4, \n", "row 4, column 'y': the label cell is empty"),
        ('a,b,y\n1,2,x\n"3,4,z\n5",6,x\n7,8,y\n', 'row 3: a quoted cell runs over lines 3–4 (a stray " merges rows)'),
        ('a,b,y\n1,2,"x\ny"\n5,6,z\n', "row 2: a quoted cell runs over lines 2–3"),
        ('a,b,y\n1,2,x\n"3,4,z\n5,6,x\n', 'row 3: a quoted cell opened in this row never closes (a stray ")'),
        ("0,1,2,label\n" + "".join(f"{i / 3:.3f},{i / 7:.3f},{i / 9:.3f},{i % 2}\n" for i in range(9)),
         "is the first row (0,1,2,label) a header or data? its numbers are the column numbers 0, 1, 2; say which "
         "with --header or --no-header"),
        ("1,2,3,4\n" + "".join(f"{i},{i + 1},{i + 2},{i % 2}\n" for i in range(9)),
         "its numbers are the column numbers 1, 2, 3, 4"),
        ("5,7,label\n" + "".join(f"{i / 3:.3f},{i},{i % 2}\n" for i in range(9)),
         "its label cell 'label' is a word and the labels below are numbers"),
        ("5,7,yes\n" + "".join(f"{i / 3 + 0.1:.3f},{i / 7 + 0.1:.3f},{'no' if i % 2 else 'yes'}\n" for i in range(9)),
         "its cells are whole numbers and the rows below hold fractions in every column"),
        ("a,a,y\n1,2,x\n", "the header names column 'a' twice"),
        ("a,b,y\n1,2,x\n3,nan,x\n", "row 3, column 'b': 'nan' is not finite"),
    ],
)
def test_csv_files_read_only_without_guessing(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(FileFormatError) as caught:
        tabular.read_csv(path)
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_a_header_of_numbers_is_read_as_the_user_says(tmp_path):
    text = "0,1,2,label\n" + "".join(f"{i / 3:.3f},{i / 7:.3f},{i / 9:.3f},{i % 2}\n" for i in range(9))
    path = write(tmp_path / "pandas.csv", text)
    X, labels, names = tabular.read_csv(path, header=True)
    assert X.shape == (9, 3) and names == ["0", "1", "2"] and labels[:2] == [0.0, 1.0]
    X, labels, names = tabular.read_csv(path, header=False)
    assert X.shape == (10, 3) and labels[0] == "label" and names == ["column 0", "column 1", "column 2"]
    # rows of data that only look alike are data: the first row is not the column numbers
    X, _, _ = tabular.read_csv(write(tmp_path / "xor.csv", "0,1,1\n1,0,1\n0,0,0\n1,1,0\n"))
    assert X.tolist() == [[0, 1], [1, 0], [0, 0], [1, 1]]


def test_classes_too_small_to_split_are_refused_naming_the_class(tmp_path, capsys):
    path = write(tmp_path / "small.csv", "a,y\n" + "".join(f"{i},{'xyz'[i % 3]}\n" for i in range(9)))
    with pytest.raises(ValueError, match=r"the test part \(15% of each class\) would be empty: the largest class, "
                                         r"'x', has 3 row\(s\), and a class needs 4"):
        jbp.data.load(f"csv:{path}")
    assert main(["train", "--data", f"csv:{path}", "--epochs", "1", "--batch-size", "2",
                 "--out", str(tmp_path / "run")]) == 2
    assert "would be empty" in one_error(capsys) and not (tmp_path / "run").exists()
    assert tabular.rows_needed(0.15) == 4 and tabular.rows_needed(0.5) == 2 and tabular.rows_needed(0.2) == 3


def test_npz_parts_are_checked_when_read(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 2, 40)
    np.savez(tmp_path / "width.npz", x_train=X[:30], y_train=y[:30], x_test=X[30:, :3], y_test=y[30:])
    np.savez(tmp_path / "count.npz", x_train=X[:30], y_train=y[:30], x_test=X[30:], y_test=y[31:])
    np.savez(tmp_path / "kinds.npz", x_train=X[:30], y_train=y[:30], x_test=X[30:], y_test=y[30:].astype(str))
    for name, message in (("width", "x_test has 3 features per row (shape (10, 3)), x_train 4"),
                          ("count", "y_test must hold one label per row of x_test (10), got shape (9,)"),
                          ("kinds", "labels must be strings in both or numbers in both")):
        with pytest.raises(FileFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
            jbp.data.load(f"npz:{tmp_path / name}.npz")
    assert main(["train", "--data", f"npz:{tmp_path / 'width.npz'}", "--epochs", "50",
                 "--out", str(tmp_path / "run")]) == 2
    assert "x_test has 3 features per row" in one_error(capsys) and not (tmp_path / "run").exists()


# --- a trained run's columns, by name


@pytest.fixture(scope="module")
def named_run(tmp_path_factory):
    """A run on three features of very different scales, named f_small, f_mid, f_big, the label in the middle."""
    folder = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120)
    X = (rng.normal(size=(120, 3)) + 2.5 * labels[:, None] * [1, -1, 1]) * [1, 100, 10_000]
    frame = {"f_small": X[:, 0], "f_mid": X[:, 1], "label": np.where(labels, "yes", "no"), "f_big": X[:, 2]}
    with open(folder / "train.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(frame))
        writer.writerows(zip(*(v if k == "label" else [f"{x:.4f}" for x in v] for k, v in frame.items())))
    out = folder / "run"
    assert main(["train", "--data", f"csv:{folder / 'train.csv'}", "--target", "label", "--standardize",
                 "--epochs", "3", "--batch-size", "16", "--lr", "0.01", "--no-progress", "--out", str(out)]) == 0
    return folder, out, frame


def _write_columns(path, frame, order, header=True):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(order)
        writer.writerows(zip(*(frame[k] if frame[k].dtype.kind == "U" else [f"{x:.4f}" for x in frame[k]]
                               for k in order)))
    return path


def _predict(capsys, run, path):
    code = main(["predict", str(run), str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    return [row for row in csv.reader(out.out.splitlines())][1:]


def test_predict_and_evaluate_match_columns_by_name(named_run, tmp_path, capsys):
    folder, run, frame = named_run
    prep = json.loads((run / "preprocessing.json").read_text())
    assert prep["features"] == ["f_small", "f_mid", "f_big"] and prep["target"] == "label"
    capsys.readouterr()
    expected = _predict(capsys, run, _write_columns(tmp_path / "same.csv", frame, ["f_small", "f_mid", "f_big"]))
    shuffled = _write_columns(tmp_path / "shuffled.csv", frame, ["f_big", "label", "f_small", "f_mid"])
    assert _predict(capsys, run, shuffled) == expected
    # a column more, not a number, is passed over by name
    frame_extra = {**frame, "note": np.array(["n/a"] * 120)}
    assert _predict(capsys, run, _write_columns(tmp_path / "extra.csv", frame_extra,
                                                ["note", "f_mid", "f_big", "f_small"])) == expected
    # without a header: by position, when the widths agree
    assert _predict(capsys, run, _write_columns(tmp_path / "plain.csv", frame, ["f_small", "f_mid", "f_big"],
                                                header=False)) == expected
    X = jbp.data.read_inputs(shuffled, 3, features=("f_small", "f_mid", "f_big"))
    np.testing.assert_array_equal(X, np.round(np.stack([frame[k] for k in ("f_small", "f_mid", "f_big")], 1), 4))

    def evaluate(path):
        assert main(["evaluate", str(run), "--data", f"csv:{path}", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    ordered = evaluate(_write_columns(tmp_path / "ordered.csv", frame, ["f_small", "f_mid", "label", "f_big"]))
    moved = evaluate(shuffled)
    assert moved["samples"] == 120 and (moved["loss"], moved["accuracy"]) == (ordered["loss"], ordered["accuracy"])


@pytest.mark.parametrize(
    "order, header, command, message",
    [
        (["f_small", "f_big", "label"], True, "predict", "no column 'f_mid' (1 of the run's 3 features missing)"),
        (["f_small", "f_mid", "f_big"], True, "evaluate", "no label column 'label'"),
        (["f_small", "f_mid"], False, "predict", "rows of 2 columns; the run's network takes 3 features, and columns "
                                                 "are matched by position (the file has no header)"),
        (["a", "b", "c", "d", "e"], True, "predict", "no column 'f_small' (3 of the run's 3 features missing)"),
    ],
)
def test_columns_that_do_not_match_are_refused(named_run, tmp_path, capsys, order, header, command, message):
    folder, run, frame = named_run
    frame = {**frame, **{k: frame["f_small"] for k in "abcde"}}
    path = _write_columns(tmp_path / "in.csv", frame, order, header=header)
    argv = ["predict", str(run), str(path)] if command == "predict" else ["evaluate", str(run), "--data", f"csv:{path}"]
    capsys.readouterr()
    assert main(argv) == 2
    assert message in one_error(capsys)


def test_evaluate_on_data_of_another_width_is_one_line(named_run, capsys, tmp_path):
    _, run, _ = named_run
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", "digits"]) == 2
    assert "digits (test part): rows of 64 features; the run's network takes 3" in one_error(capsys)
    np.savez(tmp_path / "x.npz", X=np.ones((4, 5)))
    assert main(["predict", str(run), str(tmp_path / "x.npz")]) == 2
    assert "rows of 5 features; the run's network takes 3" in one_error(capsys)


# --- preprocessing.json, read strictly

GOOD = {"format": "jbp-preprocessing/1", "divisor": 1.0, "mean": [0.0, 1.0], "std": [1.0, 2.0],
        "classes": ["a", "b"], "features": ["x", "y"], "target": "label"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"classes": ["a"]}, "'classes' holds 1 class(es); a classifier has two or more"),
        ({"classes": [1, 1.0]}, "'classes' names the class 1 twice"),
        ({"classes": ["a", "a"]}, "'classes' names the class 'a' twice"),
        ({"classes": [[["a"]], "b"]}, "'classes' must be a list of strings or whole numbers"),
        ({"std": [1.0, float("nan")]}, "'std' must be null or a non-empty list of finite numbers"),
        ({"std": [1.0, float("inf")]}, "'std' must be null or a non-empty list of finite numbers"),
        ({"std": [1.0, 0.0]}, "'std' must be > 0, got 0"),
        ({"std": [1.0]}, "'mean' has 2 numbers and 'std' 1"),
        ({"std": None}, "'mean' and 'std' must both be null or both be lists"),
        ({"divisor": 0}, "'divisor' must be a finite number in [1e-12, 1e+12], got 0"),
        ({"divisor": -1}, "'divisor' must be a finite number"),
        ({"divisor": 1e-30}, "got 1e-30"),
        ({"divisor": True}, "'divisor' must be a finite number"),
        ({"features": ["x"]}, "'features' names 1 columns and 'mean' has 2 numbers"),
        ({"features": ["x", "x"]}, "'features' names a column twice"),
        ({"features": [1, 2]}, "'features' must be null or a non-empty list of column names"),
        ({"target": "x"}, "'target' 'x' is also one of the features"),
        ({"extra": 1}, "it has 'extra'"),
    ],
)
def test_preprocessing_json_is_read_strictly(tmp_path, change, message):
    with pytest.raises(FileFormatError) as caught:  # NaN and infinity as a lenient JSON parser gives them
        Preprocessing.from_json({**GOOD, **change}, "run/preprocessing.json")
    assert str(caught.value).startswith(f"run/preprocessing.json: {message}") or message in str(caught.value)
    try:
        text = json.dumps({**GOOD, **change}, allow_nan=False)
    except ValueError:
        return  # NaN and infinity: strict JSON has none, and the run's reader refuses them before
    path = tmp_path / "preprocessing.json"  # the same through the run's reader
    path.write_text(text)
    with pytest.raises(FileFormatError, match=re.escape(message)):
        jbp.run.read_preprocessing(path)


def test_preprocessing_json_round_trips_and_old_files_load(tmp_path):
    prep = Preprocessing.from_json(GOOD, "here")
    assert prep.features == ("x", "y") and prep.target == "label"
    assert Preprocessing.from_json(prep.to_json(), "here").to_json() == prep.to_json() == GOOD
    old = {k: v for k, v in GOOD.items() if k not in ("features", "target")}
    assert Preprocessing.from_json(old, "here").features is None
    with pytest.raises(ValueError, match="have 3 features; the run was trained on 2"):
        prep.inputs(np.ones((4, 3)))
