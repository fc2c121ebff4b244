"""Private runs as the command writes them: randomness nobody can redraw, an ε that covers every
step behind the parameters handed out, no statistics of the training part, and no folder left
dead by a refusal. Every run is XOR (4 training rows, batches of 2: q = 1/2, 2 steps an epoch)."""

import contextlib
import copy
import io
import json
import math
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jbp
from jbp.cli import main
from jbp.privacy import DPSGD, epsilon
from jbp.run import RunFolder, key_from_seed
from jbp.train import check_fit
from cli_errors import one_error

SIGMA, Q, STEPS_PER_EPOCH, DELTA = 1.0, 0.5, 2, 1e-5
PRIVATE = ["--data", "xor", "--dp-clip", "1", "--dp-noise", str(SIGMA), "--batch-size", "2", "--no-progress"]
KNOWN = np.array([0x12345678, 0x9ABCDEF0], np.uint32)  # stands in for the OS's entropy where a test must know it
# what a private run's records and summary may hold: the mechanism's ε and the held-out parts
RECORD_KEYS = {"epoch", "epsilon", "val_loss", "val_accuracy", "seconds"}
TRAIN_STATISTICS = {"loss", "accuracy", "running_loss", "batch_size_mean"}


def train(*args):
    try:
        return main(["train", *map(str, args)])
    except SystemExit as exit_:
        return exit_.code


def records(folder):
    return [json.loads(line) for line in (pathlib.Path(folder) / "metrics.jsonl").read_text().splitlines()]


def summary(folder):
    return json.loads((pathlib.Path(folder) / "summary.json").read_text())


def weights(folder):
    with np.load(pathlib.Path(folder) / "params.npz") as f:
        return {k: f[k] for k in f.files}


def key_bytes(key):
    return np.asarray(jax.random.key_data(key), np.uint32).astype("<u4").tobytes()


def key_leaves(folder):
    """Every key the checkpoint holds: the run's, and those in the optimizer state and extras."""
    state = jbp.load_run(folder).checkpoint
    leaves = jax.tree.leaves((state.key, state.opt_state, state.extras))
    return [leaf for leaf in leaves if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two default private runs, one whose OS key the test knows (continued to 3 epochs), and two
    reproducible ones (what the first printed in ``printed.txt``)."""
    root = tmp_path_factory.mktemp("private")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("a", "b"):
            assert train(*PRIVATE, "--epochs", 2, "--out", root / name) == 0
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert train(*PRIVATE, "--epochs", 2, "--dp-reproducible", "--out", root / "r1") == 0
        (root / "printed.json").write_text(json.dumps({"out": out.getvalue(), "err": err.getvalue()}))
        assert train(*PRIVATE, "--epochs", 2, "--dp-reproducible", "--out", root / "r2") == 0
        patch.setattr(jbp.privacy, "os_key", lambda: jax.random.wrap_key_data(KNOWN, impl="threefry2x32"))
        assert train(*PRIVATE, "--epochs", 2, "--out", root / "known") == 0
        assert train("--resume", root / "known", "--epochs", 3, "--no-progress") == 0
    return root


# --- randomness from the operating system, written nowhere


def test_two_default_private_runs_differ_and_say_they_are_private(runs):
    root = runs
    a, b = weights(root / "a"), weights(root / "b")
    assert any(not np.array_equal(a[k], b[k]) for k in a)  # same data, options and --seed 0
    for name in ("a", "b"):
        assert json.loads((root / name / "config.json").read_text())["dp_reproducible"] is False
        assert summary(root / name)["dp_secure"] is True and summary(root / name)["dp_warnings"] == []


def test_no_file_of_a_private_run_holds_its_keys(runs):
    root = runs
    known = jax.random.wrap_key_data(KNOWN, impl="threefry2x32")
    noise, sampling = jbp.privacy.dp_keys(jbp.dp_sgd(1.0, SIGMA, known))
    secrets = [key_bytes(k) for k in (known, noise, sampling)]
    words = [str(int(w)) for k in (known, noise, sampling) for w in np.asarray(jax.random.key_data(k))]
    files = sorted((root / "known").iterdir())
    assert {p.name for p in files} >= {"config.json", "checkpoint.ckpt", "metrics.jsonl", "summary.json", "params.npz"}
    for path in files:
        content = path.read_bytes()
        assert not any(secret in content for secret in secrets), path.name
        assert not any(word.encode() in content for word in words), path.name
    for name in ("a", "known"):  # every key in the checkpoint is the fixed placeholder
        leaves = key_leaves(root / name)
        assert len(leaves) == 2  # the run's key and the noise's
        assert all(not np.any(np.asarray(jax.random.key_data(leaf))) for leaf in leaves)
    # the same search finds a reproducible run's noise key, drawn from --seed 0: it is not private
    seeded = jbp.privacy.dp_keys(jbp.dp_sgd(1.0, SIGMA, jax.random.fold_in(key_from_seed(0), 3)))[0]
    assert key_bytes(seeded) in (root / "r1" / "checkpoint.ckpt").read_bytes()


def test_reproducible_runs_repeat_and_say_they_are_not_private(runs):
    root = runs
    one, two = weights(root / "r1"), weights(root / "r2")
    assert all(np.array_equal(one[k], two[k]) for k in one)
    assert json.loads((root / "r1" / "config.json").read_text())["dp_reproducible"] is True
    said = summary(root / "r1")
    assert said["dp_secure"] is False and "not private: the noise is drawn from --seed 0" in said["dp_warnings"][0]
    printed = json.loads((root / "printed.json").read_text())
    assert "not private: the noise is drawn from --seed 0" in printed["out"].splitlines()[-1]
    assert "private: ε" not in printed["out"]
    assert printed["err"].startswith("jbp: warning: not private")
    assert [leaf for leaf in key_leaves(root / "r1") if np.any(np.asarray(jax.random.key_data(leaf)))]


def test_a_run_from_before_the_option_loads_as_reproducible(runs, tmp_path):
    root = runs
    config = json.loads((root / "r1" / "config.json").read_text())
    del config["dp_reproducible"]
    assert jbp.run.check_config(config, "old")["dp_reproducible"] is True
    assert jbp.run.build(jbp.run.check_config(config, "old")).privacy.secure is False
    config["dp_clip"] = None
    assert jbp.run.check_config(config, "old, not private")["dp_reproducible"] is False


# --- ε: every step behind the parameters, accumulated over what ran


def test_every_epsilon_reported_covers_every_step(runs):
    root = runs
    for name, epochs in (("a", 2), ("known", 3)):  # "known" was continued from 2 epochs to 3
        lines = records(root / name)
        assert [r["epoch"] for r in lines] == list(range(1, epochs + 1))
        expected = [epsilon(SIGMA, Q, e * STEPS_PER_EPOCH, DELTA) for e in range(1, epochs + 1)]
        assert [r["epsilon"] for r in lines] == pytest.approx(expected, rel=1e-12)
        assert all(x < y for x, y in zip(expected, expected[1:]))
        assert summary(root / name)["epsilon"] == lines[-1]["epsilon"]  # one figure, the last record's
        assert jbp.load_run(root / name).history == lines


def test_a_continued_history_must_be_the_steps_of_this_data(runs):
    root = runs
    history = records(root / "a")  # 2 epochs on XOR's 4 rows
    net = jbp.mlp([2, 4, 1], hidden="tanh", output="sigmoid")
    params = jbp.init(net, jax.random.key(0))
    data = jbp.data.xor().train
    common = dict(loss="binary_cross_entropy", optimizer=optax.sgd(0.5), epochs=3, batch_size=2, start_epoch=2,
                  history=history, privacy=jbp.dp_sgd(1.0, SIGMA, delta=DELTA))
    check_fit(net, params, data.X, data.Y, **common)  # the same data: accepted
    X6, Y6 = np.concatenate([data.X, data.X[:2]]), np.concatenate([data.Y, data.Y[:2]])
    with pytest.raises(ValueError, match="trained on other data or with other privacy options"):
        check_fit(net, params, X6, Y6, **common)
    with pytest.raises(ValueError, match="trained on other data or with other privacy options"):
        check_fit(net, params, data.X, data.Y, **{**common, "privacy": jbp.dp_sgd(1.0, 2 * SIGMA, delta=DELTA)})
    with pytest.raises(ValueError, match="holds no ε for epoch 2"):
        check_fit(net, params, data.X, data.Y, **{**common, "history": [{"epoch": 1}, {"epoch": 2}]})
    with pytest.raises(ValueError, match="continues no history"):  # steps before that would go uncounted
        check_fit(net, params, data.X, data.Y, **{**common, "start_epoch": 0})


def test_fit_hands_out_no_secure_key(tmp_path):
    """A secure run's optimizer state, as fit hands it out (result, on_epoch), holds the placeholder:
    a checkpoint written from it by hand holds no key either; a reproducible run's holds its own."""
    net = jbp.mlp([2, 4, 1], hidden="tanh", output="sigmoid")
    data = jbp.data.xor().train
    common = dict(loss="binary_cross_entropy", optimizer=optax.sgd(0.5), epochs=2, batch_size=2)
    seen = []
    secure = jbp.dp_sgd(1.0, SIGMA, delta=DELTA)
    result = jbp.fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, privacy=secure,
                     on_epoch=lambda record, params, state: seen.append(state), **common)
    live = {key_bytes(k) for k in (secure.key, *jbp.privacy.dp_keys(secure))}
    handed = [leaf for state in (result.opt_state, *seen) for leaf in jax.tree.leaves(state)
              if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)]
    assert handed and all(not np.any(np.asarray(jax.random.key_data(k))) for k in handed)
    assert not live & {key_bytes(k) for k in handed}
    mine = jbp.dp_sgd(1.0, SIGMA, key=jax.random.key(7), delta=DELTA)
    again = jbp.fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, privacy=mine, **common)
    kept = [leaf for leaf in jax.tree.leaves(again.opt_state) if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)]
    assert key_bytes(jbp.privacy.dp_keys(mine)[0]) in {key_bytes(k) for k in kept}


def test_a_private_run_learns_no_statistics_of_its_training_part(tmp_path, capsys):
    """The digits' default standardization would write the training part's exact means: a private
    run refuses it when asked and trains on the pixels / 16 by default."""
    assert train("--data", "digits", "--dp-clip", 1, "--dp-noise", 1, "--standardize", "--epochs", 1,
                 "--out", tmp_path / "std") == 2
    one_error(capsys, "--standardize", "outside the privacy guarantee")
    assert not (tmp_path / "std").exists()
    assert train("--data", "digits", "--dp-clip", 1, "--dp-noise", 1, "--epochs", 1, "--no-progress",
                 "--out", tmp_path / "plain") == 0
    prep = json.loads((tmp_path / "plain" / "preprocessing.json").read_text())
    assert prep["mean"] is None and prep["std"] is None and prep["divisor"] == 16
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["standardize"] is False and config["data_fingerprint"]["sha256"] is None


def test_a_private_run_notices_changed_held_out_rows(tmp_path, capsys):
    """No digest of the training part, but one of the held-out parts: a file whose test rows changed
    (same counts) is refused on --resume."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    Xt = rng.normal(size=(10, 3))
    path = tmp_path / "d.npz"
    np.savez(path, x_train=X, y_train=y, x_test=Xt, y_test=(Xt[:, 0] > 0).astype(int))
    folder = tmp_path / "run"
    args = ["--data", f"npz:{path}", "--dp-clip", 1, "--dp-noise", 1, "--dp-delta", 1e-3, "--batch-size", 8,
            "--no-progress"]
    assert train(*args, "--epochs", 1, "--out", folder) == 0
    saved = json.loads((folder / "config.json").read_text())["data_fingerprint"]
    assert saved["sha256"] is None and len(saved["held_out_sha256"]) == 64
    Xt[0, 0] += 1.0
    np.savez(path, x_train=X, y_train=y, x_test=Xt, y_test=(Xt[:, 0] > 0).astype(int))
    capsys.readouterr()
    assert train("--resume", folder, "--epochs", 2, "--no-progress") == 2
    one_error(capsys, "changed since the run", "the row counts are the same")


def test_resuming_beyond_the_calibrated_epsilon_is_refused(tmp_path, capsys):
    folder = tmp_path / "budget"
    assert train("--data", "xor", "--dp-clip", 1, "--dp-epsilon", 8, "--batch-size", 2, "--epochs", 2,
                 "--no-progress", "--out", folder) == 0
    config = json.loads((folder / "config.json").read_text())
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert train("--resume", folder, "--epochs", 3, "--no-progress") == 2
    beyond = epsilon(config["dp_noise"], Q, 3 * STEPS_PER_EPOCH, DELTA)
    assert beyond > 8
    one_error(capsys, f"would spend ε = {beyond:.3g}", "--dp-epsilon 8")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing rewritten


@pytest.mark.parametrize("delta, refused", [(0.25, True), (0.5, True), (0.2, False)])
def test_a_delta_of_one_over_n_or_more_is_refused(tmp_path, capsys, delta, refused):
    net = jbp.mlp([2, 4, 1], hidden="tanh", output="sigmoid")
    data = jbp.data.xor().train
    arguments = dict(loss="binary_cross_entropy", optimizer=optax.sgd(0.5), epochs=1, batch_size=2,
                     privacy=jbp.dp_sgd(1.0, SIGMA, delta=delta))
    if not refused:
        check_fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, **arguments)
        return
    with pytest.raises(ValueError, match=r"must lie below 1/n = 0.25 for the n = 4 training samples"):
        check_fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, **arguments)
    assert train(*PRIVATE, "--dp-delta", delta, "--out", tmp_path / "run") == 2
    one_error(capsys, f"--dp-delta {delta:g} must lie below 1/n = 0.25", "n = 4")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fields, message", [
    ((-1.0, 1.0), "max_norm must be a finite number > 0, got -1.0"),
    ((0.0, 1.0), "max_norm must be a finite number > 0, got 0.0"),
    ((math.inf, 1.0), "max_norm must be a finite number > 0, got inf"),
    ((1.0, -0.5), "noise_multiplier must be a finite number ≥ 0, got -0.5"),
    ((1.0, math.nan), "noise_multiplier must be a finite number ≥ 0, got nan"),
    ((1.0, 1.0, 7), "key must be one jax.random.key"),
    ((1.0, 1.0, None, 1.5), r"delta must lie in \(0, 1\), got 1.5"),
    ((1.0, 1.0, jax.random.key(0), None, True), "secure=True holds only for a key drawn from the operating system"),
])
def test_a_dpsgd_built_directly_is_checked(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        DPSGD(*fields)


def test_fit_checks_a_dpsgd_changed_after_it_was_built():
    net = jbp.mlp([2, 4, 1], hidden="tanh", output="sigmoid")
    data = jbp.data.xor().train
    privacy = DPSGD(1.0, 1.0)
    assert privacy.secure is True and "not shown" in repr(privacy)  # drawn from the OS, never printed
    for copied in (copy.deepcopy(privacy), pickle.loads(pickle.dumps(privacy)), jax.tree.map(lambda x: x, privacy)):
        assert type(copied) is DPSGD and copied.secure is True
    with pytest.raises(TypeError, match="privacy.key must be one jax.random.key"):
        check_fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, privacy=privacy._replace(key=None),
                  loss="binary_cross_entropy", optimizer=optax.sgd(0.5), epochs=1, batch_size=2)
    arguments = dict(loss="binary_cross_entropy", optimizer=optax.sgd(0.5), epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="max_norm must be a finite number > 0, got -1.0"):
        jbp.fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, privacy=privacy._replace(max_norm=-1.0),
                **arguments)
    with pytest.raises(TypeError, match="privacy must be what jbp.dp_sgd returns"):
        jbp.fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, privacy=(1.0, 1.0, None, None, True),
                **arguments)


def test_a_diverging_private_run_writes_the_epsilon_of_its_parameters(tmp_path, capsys, monkeypatch):
    """A step that turns the parameters into NaN on the optimizer's 4th update (epoch 2, step 2):
    the parameters kept are those after 3 steps; the ε written and said counts the 4th too, whose
    outcome (it diverged) the message tells."""
    make = jbp.optimizers.make
    bomb = optax.scale_by_schedule(lambda count: jnp.where(count == 3, jnp.nan, 1.0))
    monkeypatch.setattr(jbp.optimizers, "make", lambda *a, **k: optax.chain(make(*a, **k), bomb))
    folder = tmp_path / "diverged"
    assert train(*PRIVATE, "--epochs", 3, "--out", folder) == 1
    spent = epsilon(SIGMA, Q, 4, DELTA)
    line = one_error(capsys, "training diverged at epoch 2, step 2", f"spent ε = {spent:.4g}", "summary.json")
    assert "loss is" not in line  # a private run's divergence names no training loss
    said = summary(folder)
    assert said["incomplete"] is True and said["steps"] == 4 and said["epochs"] == 1
    assert said["epsilon"] == pytest.approx(spent, rel=1e-12)
    assert said["epsilon"] >= records(folder)[-1]["epsilon"]
    assert not TRAIN_STATISTICS & set(said) and not any(k.startswith("train_") for k in said)
    assert np.all(np.isfinite(np.concatenate([v.ravel() for v in weights(folder).values()])))


# --- nothing about the training part beyond what the mechanism released


def test_a_private_run_publishes_no_training_statistics_by_default(runs):
    root = runs
    for name in ("a", "known"):
        for record in records(root / name) + jbp.load_run(root / name).history:
            assert set(record) <= RECORD_KEYS, record
        said = summary(root / name)
        assert not TRAIN_STATISTICS & set(said) and not any(k.startswith("train_") for k in said), said
    data = jbp.data.xor().train
    net = jbp.mlp([2, 4, 1], hidden="tanh", output="sigmoid")
    result = jbp.fit(net, jbp.init(net, jax.random.key(0)), data.X, data.Y, loss="binary_cross_entropy",
                     optimizer=optax.sgd(0.5), epochs=1, batch_size=2, privacy=jbp.dp_sgd(1.0, 1.0, delta=DELTA))
    assert set(result.history[0]) == {"epoch", "epsilon", "seconds"}


def test_training_statistics_are_an_option_labelled_outside_the_guarantee(tmp_path, capsys):
    folder = tmp_path / "stats"
    assert train(*PRIVATE, "--epochs", 1, "--dp-train-metrics", "--out", folder) == 0
    out, err = capsys.readouterr()
    assert TRAIN_STATISTICS <= set(records(folder)[0])
    said = summary(folder)
    assert "train_loss" in said and "outside the privacy guarantee" in said["dp_warnings"][0]
    assert "outside the privacy guarantee" in err and "outside the guarantee" in out.splitlines()[-1]
    assert train(*PRIVATE, "--epochs", 1, "--dp-train-metrics", "--no-train-eval", "--out", tmp_path / "x") == 2
    one_error(capsys, "give one of the two")
    assert train("--data", "xor", "--epochs", 1, "--dp-train-metrics", "--out", tmp_path / "y") == 2
    one_error(capsys, "--dp-train-metrics goes with a private run")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --- checked before anything is created; a run that fails early leaves no dead folder


def overflowing_npz(path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    X[::3, 1] = 1e39  # finite in float64, infinite in float32; in every part
    np.savez(path, X=X, y=(X[:, 0] > 0).astype(int))
    return f"npz:{path}"


@pytest.mark.parametrize("case", ["patience", "overflow"])
def test_a_refused_run_creates_no_folder(tmp_path, capsys, case):
    args = (["--data", "xor", "--patience", 2, "--eval-every", 2] if case == "patience"
            else ["--data", overflowing_npz(tmp_path / "big.npz")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(*args, "--epochs", 2, "--no-progress", "--out", tmp_path / "new") == 2
    one_error(capsys, "eval_every must be 1" if case == "patience" else "beyond float32's range")
    assert train(*args, "--epochs", 2, "--no-progress", "--out", empty) == 2
    assert not (tmp_path / "new").exists() and list(empty.iterdir()) == []


def test_a_run_refused_after_its_folder_was_made_removes_what_it_wrote(tmp_path, capsys, monkeypatch):
    """The second line of defence: with the early check switched off, fit refuses inside the run."""
    monkeypatch.setattr(jbp.cli.train, "check_fit", lambda *args, **kwargs: None)
    args = ["--data", "xor", "--patience", 2, "--eval-every", 2, "--epochs", 2, "--no-progress"]
    assert train(*args, "--out", tmp_path / "new") == 2
    one_error(capsys, "eval_every must be 1")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train(*args, "--out", empty) == 2
    assert {p.name for p in empty.iterdir()} <= {".jbp.lock"}
    RunFolder.new(empty, "xor").release()  # reusable: a new run may take it


def test_discarding_never_touches_what_the_run_did_not_write(tmp_path):
    with RunFolder.new(tmp_path / "foreign", "x") as folder:
        (folder / "config.json").write_text("{}")
        (folder / "notes.txt").write_text("mine")
        assert folder.discard_unused() is False
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "foreign" / "config.json").exists()
    with RunFolder.new(tmp_path / "results", "x") as folder:
        (folder / "config.json").write_text("{}")
        (folder / "params.npz").write_bytes(b"")
        assert folder.discard_unused() is False  # a run's results stay
    assert (tmp_path / "results" / "params.npz").exists()
    with RunFolder.new(tmp_path / "dead", "x") as folder:
        (folder / "config.json").write_text("{}")
        assert folder.discard_unused() is True
    assert not (tmp_path / "dead").exists()
