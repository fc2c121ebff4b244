"""The experiment scripts run, and what they check inside holds, on small sizes."""

import importlib.util
import json
import pathlib

import pytest

EXPERIMENTS = pathlib.Path(__file__).parents[1] / "experiments"


@pytest.fixture
def results(tmp_path, monkeypatch):
    """Experiments import their helpers from experiments/ and write into a temporary folder."""
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    common = load("common")
    monkeypatch.setitem(__import__("sys").modules, "common", common)
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_steps_agree_and_report_ratios(capsys):
    bench = load("bench")
    # bench() itself asserts that jbp's step and autodiff's step give the same
    # loss and the same updated parameters before it times anything.
    rows = bench.bench([20, 16, 8, 4], [8, 3], repeats=2, steps=2)
    assert [row[0] for row in rows] == [8, 3]
    for _, jbp_s, ad_s, ratio in rows:
        assert jbp_s > 0 and ad_s > 0 and ratio == pytest.approx(jbp_s / ad_s)
    norms = bench.bench_norms([20, 16, 8, 4], [8], repeats=2, calls=2)  # compares the two norms first
    assert norms[0][0] == 8 and norms[0][3] == pytest.approx(norms[0][1] / norms[0][2])
    assert bench.main(["--sizes", "6,5,3", "--batch-sizes", "4", "--repeats", "1", "--steps", "1",
                       "--norm-batch-sizes", "4"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "jbp/autodiff" in out and "per-example gradient norms" in out


def test_learning_slowdown_shows_the_slow_start(results):
    assert load("learning_slowdown").main([]) == 0
    runs = json.loads((results / "learning_slowdown.json").read_text())["runs"]
    quadratic_bad = runs["quadratic, η = 0.15 | bad start (w = 2, b = 2)"]
    entropy_bad = runs["cross-entropy, η = 0.005 | bad start (w = 2, b = 2)"]
    quadratic_good = runs["quadratic, η = 0.15 | good start (w = 0.6, b = 0.9)"]
    # the saturated neuron barely learns under the quadratic cost, not under the cross-entropy
    assert quadratic_bad["relative_drop_in_first_50_epochs"] < 0.05
    assert entropy_bad["relative_drop_in_first_50_epochs"] > 0.10
    assert quadratic_good["relative_drop_in_first_50_epochs"] > 0.5
    assert (results / "learning_slowdown.png").read_bytes()[:4] == b"\x89PNG"


def test_digits_quick(results):
    assert load("digits").main(["--quick"]) == 0
    table = json.loads((results / "digits_quick.json").read_text())["results"]
    assert len(table) == 9 and all(0 < row["test_accuracy_mean"] <= 1 for row in table.values())


def test_xor_a_few_starts(results):
    assert load("xor").main(["--seeds", "3", "--epochs", "300"]) == 0
    saved = json.loads((results / "xor.json").read_text())
    assert saved["solved"] >= 1 and len(saved["runs"]) == 3


def test_coursera_ex4(results):
    assert load("coursera_ex4").main() == 0
    saved = json.loads((results / "coursera_ex4.json").read_text())
    assert saved["lambda=0"]["relative_difference"] < 1e-9 and saved["lambda=3"]["relative_difference"] < 1e-9


def test_bench_extras_without_torch_times_and_sizes(results):
    bench_extras = load("bench_extras")
    rows = bench_extras.time_all([12, 8, 8, 4], 6, repeats=1, steps=1, seed=0, with_torch=False)
    assert set(rows) == {"jbp alone", "jbp in a step", "vmap(grad) alone"}
    for framework in ("jbp alone", "jbp in a step"):
        assert set(rows[framework]) == {"step", *bench_extras.JBP_QUANTITIES}
        assert all(t > 0 for t in rows[framework].values())
    memory = bench_extras.scratch_memory([12, 8, 8, 4], [4, 64], seed=0)
    # vmap(grad)'s norms keep batch × parameters floats; jbp's come from the deltas and do not
    parameters = 12 * 8 + 8 + 8 * 8 + 8 + 8 * 4 + 4
    assert memory[1]["vmap(grad) per_example_grad_norms"] >= 64 * parameters * 4
    assert memory[1]["jbp per_example_grad_norms"] < 64 * parameters * 4 / 4


def test_bench_extras_agrees_with_backpack_where_it_is_installed(results):
    pytest.importorskip("torch", reason="BackPACK's side needs the bench extra (PyTorch), not installed here")
    pytest.importorskip("backpack", reason="BackPACK's side needs the bench extra, not installed here")
    diffs = load("bench_extras").check_backpack([10, 7, 6, 3], 5, seed=1)
    assert len(diffs) == 9 and max(diffs.values()) < 1e-9


def test_bench_privacy_without_torch(results):
    bench_privacy = load("bench_privacy")
    rows = bench_privacy.time_batch([12, 8, 8, 4], 6, repeats=1, steps=1, with_torch=False)
    assert set(rows["jbp"]) == {"plain", "clipped", "noised", "DP-SGD step in fit"}
    assert all(t > 0 for t in rows["jbp"].values()) and "vmap(grad)-clip" in rows["vmap(grad)"]
    memory = bench_privacy.memory([12, 8, 8, 4], [4, 64], with_torch=False)
    parameters = 12 * 8 + 8 + 8 * 8 + 8 + 8 * 4 + 4
    assert memory[1]["vmap(grad)-clip XLA scratch"] >= 64 * parameters * 4 > memory[1]["jbp clipped XLA scratch"]



def test_bench_scale_quick(results, monkeypatch):
    bench_scale = load("bench_scale")
    monkeypatch.setattr(bench_scale, "SIZES", [20, 16, 8, 4])
    out = results / "bench_scale.json"
    assert bench_scale.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["devices"][0]["devices"] == 1 and report["devices"][0]["max_param_difference"] == 0
    assert {row["dtype"] for row in report["precision"]} == {"float32", "bfloat16", "float16"}
    assert report["waste"]["bare scan"]["ratio_to_bare_scan"] == 1
    assert report["roofline"]["parameters"] == 20 * 16 + 16 + 16 * 8 + 8 + 8 * 4 + 4
    assert report["roofline"]["all_reduce_bytes"] == 4 * report["roofline"]["parameters"]
