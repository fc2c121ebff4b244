"""A run's files checked against each other: an edited ``config.json`` against the configuration
the checkpoint holds, an edited ``preprocessing.json`` against the digest the run recorded and
against the network, and the data against the fingerprint the run recorded when it started."""

import json
import pathlib
import shutil

import numpy as np
import pytest

import jbp
from jbp.cli import main
from jbp.files import FileFormatError
from jbp.run import check_preprocessing, data_fingerprint, preprocessing_sha256
from cli_errors import refused

ROWS = "a,b,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n"


def blobs_csv(path, n=60, seed=0, labels=("no", "yes", "maybe")):
    rng = np.random.default_rng(seed)
    k = np.arange(n) % len(labels)
    X = rng.normal(size=(n, 3)) + 4 * k[:, None]
    with open(path, "w") as f:
        f.write("a,b,c,y\n")
        f.writelines(f"{a:.4f},{b:.4f},{c:.4f},{labels[j]}\n" for (a, b, c), j in zip(X, k))


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A three-class run on a CSV file, standardized: it has a mean and a std to edit."""
    folder = tmp_path_factory.mktemp("csv")
    blobs_csv(folder / "d.csv")
    out = folder / "run"
    assert main(["train", "--data", f"csv:{folder / 'd.csv'}", "--standardize", "--epochs", "2",
                 "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture
def copy(csv_run, tmp_path):
    """A copy of the module's run to edit (its data stay where the run names them)."""
    shutil.copytree(csv_run, tmp_path / "run")
    (tmp_path / "in.csv").write_text("a,b,c\n0,0,0\n4,4,4\n")
    return tmp_path / "run"


def everywhere(capsys, folder, *fragments):
    """Refused by jbp evaluate, jbp predict and jbp.load_run alike."""
    refused(capsys, ["evaluate", folder], *fragments)
    refused(capsys, ["predict", folder, folder.parent / "in.csv"], *fragments)
    with pytest.raises(FileFormatError) as caught:
        jbp.load_run(folder)
    for fragment in fragments:
        assert fragment in str(caught.value)


def edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_the_unedited_copy_is_accepted(copy, capsys):
    """The checks refuse edits, not the files jbp wrote."""
    assert main(["evaluate", str(copy)]) == 0
    assert main(["predict", str(copy), str(copy.parent / "in.csv")]) == 0
    run = jbp.load_run(copy)
    config = json.loads((copy / "config.json").read_text())
    assert config["preprocessing_sha256"] == preprocessing_sha256(run.preprocessing)
    assert config["data_fingerprint"]["rows"] == {"train": 42, "validation": 9, "test": 9}


@pytest.mark.parametrize("key, value", [("hidden", ["tanh"]), ("output", "sigmoid"), ("loss", "squared_error"),
                                        ("l2", 0.5)])
def test_an_edited_config_is_refused_against_the_checkpoint(copy, capsys, key, value):
    edit_json(copy / "config.json", lambda c: c.__setitem__(key, value))
    everywhere(capsys, copy, "config.json and the checkpoint disagree on", key)


def test_resume_refuses_an_edited_config_by_the_same_check(copy, capsys):
    edit_json(copy / "config.json", lambda c: c.__setitem__("hidden", ["tanh"]))
    refused(capsys, ["train", "--resume", copy, "--epochs", "3", "--no-progress"],
            "config.json and the checkpoint disagree on hidden: ['tanh'] in config.json, ['relu'] in checkpoint.ckpt")


EDITS = {
    "three classes for three outputs, one renamed": lambda p: p["classes"].__setitem__(0, "nope"),
    "four classes": lambda p: p["classes"].append("extra"),
    "one class": lambda p: p.__setitem__("classes", ["no"]),
    "a divisor of 1e-30": lambda p: p.__setitem__("divisor", 1e-30),
    "statistics too short": lambda p: p.update({k: p[k][:2] for k in ("mean", "std", "features") if p.get(k)}),
    "a std of 1e-300": lambda p: p["std"].__setitem__(0, 1e-300),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edited_preprocessing_is_refused_against_the_run_s_digest(copy, capsys, edit):
    edit_json(copy / "preprocessing.json", EDITS[edit])
    everywhere(capsys, copy, "preprocessing.json is not the preprocessing this run trained with")


def test_nan_statistics_are_refused_as_json(copy, capsys):
    text = (copy / "preprocessing.json").read_text()
    value = json.loads(text)
    value["std"][0] = float("nan")
    (copy / "preprocessing.json").write_text(json.dumps(value))  # Python writes NaN; jbp never does
    everywhere(capsys, copy, "preprocessing.json is not valid JSON: NaN")


def as_written_before_the_digest(folder):
    """The run as a jbp without the records wrote it: no digest, no fingerprint, in config.json and the checkpoint."""
    state = jbp.load_run(folder).checkpoint
    config = {k: v for k, v in state.config.items() if k not in ("preprocessing_sha256", "data_fingerprint")}
    jbp.checkpoint.save(folder / "checkpoint.ckpt", params=state.params, opt_state=state.opt_state, epoch=state.epoch,
                        key=state.key, config=config, history=state.history)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("edit, message", [
    ("four classes", "names 4 classes for a network of 3 outputs; it needs 3"),
    ("one class", "1 class"),  # refused by the schema or by the network check
    ("a divisor of 1e-30", "1e-30"),  # refused by the schema: no format divides by that
    ("statistics too short", "mean has 2 values for a network of 3 inputs"),
])
def test_without_a_digest_the_preprocessing_is_checked_against_the_network(copy, capsys, edit, message):
    as_written_before_the_digest(copy)
    assert main(["evaluate", str(copy)]) == 0  # an older run, unedited, still loads
    edit_json(copy / "preprocessing.json", EDITS[edit])
    everywhere(capsys, copy, "preprocessing.json", message)


def test_the_network_check_in_the_library():
    prep = jbp.data.xor().preprocessing  # two classes, no statistics: one sigmoid output
    check_preprocessing(prep, [2, 4, 1], "xor")
    check_preprocessing(prep, [2, 4, 2], "xor")
    with pytest.raises(FileFormatError, match="names 2 classes for a network of 3 outputs"):
        check_preprocessing(prep, [2, 4, 3], "xor")
    with pytest.raises(FileFormatError, match="names 1 class for a network of 1 output; it needs 2"):
        check_preprocessing(prep._replace(classes=(0,)), [2, 4, 1], "xor")
    with pytest.raises(FileFormatError, match="std has 3 values for a network of 2 inputs"):
        check_preprocessing(prep._replace(mean=np.zeros(2), std=np.ones(3)), [2, 4, 1], "xor")


# --- the data fingerprint


def test_changed_data_are_refused_by_resume_and_evaluate(copy, capsys):
    data = pathlib.Path(jbp.load_run(copy).config["data"][4:])  # the module's CSV file, put back after
    original = data.read_bytes()
    try:
        lines = original.decode().splitlines(keepends=True)
        lines[3] = "9.0000" + lines[3][lines[3].index(","):]  # one value of one row, the row counts kept
        data.write_text("".join(lines))
        refused(capsys, ["evaluate", copy], f"the data csv:{data} changed since the run", "the row counts are the same",
                "name them with --data")
        refused(capsys, ["train", "--resume", copy, "--epochs", "3", "--no-progress"], "the row counts are the same",
                "a run continues on the data it started with")

        blobs_csv(data, n=750, seed=1)  # the test part goes from 9 rows to 114
        refused(capsys, ["evaluate", copy], "the rows were train 42, validation 9, test 9",
                "they are train 522, validation 114, test 114")
        refused(capsys, ["train", "--resume", copy, "--epochs", "3", "--no-progress"], "the rows were train 42")
        refused(capsys, ["explain", "--run", copy], "changed since the run", "give the sample with --x and --y")
        assert main(["evaluate", str(copy), "--data", f"csv:{data}", "--json"]) == 0  # other data, on purpose
        assert json.loads(capsys.readouterr().out)["samples"] == 750
    finally:
        data.write_bytes(original)
    assert main(["evaluate", str(copy)]) == 0  # the data it trained on: accepted again
    assert main(["train", "--resume", str(copy), "--epochs", "3", "--no-progress"]) == 0


def test_an_explained_run_s_data_file_is_its_input(copy, capsys):
    data = pathlib.Path(jbp.load_run(copy).config["data"][4:])
    before = data.read_bytes()
    refused(capsys, ["explain", "--run", copy, "--html", data], "--html", "is the input")
    assert data.read_bytes() == before


def test_the_fingerprint_covers_values_labels_and_parts():
    dataset = jbp.data.xor()
    base = data_fingerprint(dataset)
    assert base == data_fingerprint(jbp.data.xor()) and len(base["sha256"]) == 64
    test = dataset.test
    moved = dataset._replace(test=test._replace(X=test.X.copy()))
    moved.test.X[0, 0] += 1
    relabelled = dataset._replace(test=test._replace(labels=1 - test.labels))
    shorter = dataset._replace(test=test._replace(X=test.X[:3], labels=test.labels[:3]))
    swapped = dataset._replace(validation=dataset.test, test=dataset.validation._replace(X=dataset.validation.X[::-1]))
    digests = {data_fingerprint(d)["sha256"] for d in (dataset, moved, relabelled, shorter, swapped)}
    assert len(digests) == 5
    assert data_fingerprint(shorter)["rows"] == {"train": 4, "validation": 4, "test": 3}


def test_a_private_run_records_row_counts_and_no_digest_of_its_data(tmp_path):
    """A digest of the exact training set is outside what ε covers: a private run keeps the counts and a
    digest of the held-out parts only (which changes with them, not with the training part)."""
    xor = jbp.data.xor()
    private = data_fingerprint(xor, private=True)
    assert private["sha256"] is None and private["rows"] == {"train": 4, "validation": 4, "test": 4}
    train_changed = xor._replace(train=xor.train._replace(X=xor.train.X + 1))
    test_changed = xor._replace(test=xor.test._replace(X=xor.test.X + 1))
    assert data_fingerprint(train_changed, private=True) == private
    assert data_fingerprint(test_changed, private=True)["held_out_sha256"] != private["held_out_sha256"]
    data = tmp_path / "d.csv"
    blobs_csv(data, n=90)
    status = main(["train", "--data", f"csv:{data}", "--dp-clip", "1", "--dp-noise", "1", "--epochs", "1",
                   "--batch-size", "8", "--out", str(tmp_path / "run"), "--no-progress"])
    assert status == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    saved = config["data_fingerprint"]
    assert saved["sha256"] is None and saved["rows"] == {"train": 66, "validation": 12, "test": 12}
    assert data_fingerprint(jbp.data.load(f"csv:{data}"))["sha256"] not in (tmp_path / "run" / "config.json").read_text()
