"""The experiment scripts run, and what they check inside holds, on small sizes."""

import importlib.util
import pathlib

import pytest

EXPERIMENTS = pathlib.Path(__file__).parents[1] / "experiments"


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
    assert bench.main(["--sizes", "6,5,3", "--batch-sizes", "4", "--repeats", "1", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "jbp/autodiff" in out
