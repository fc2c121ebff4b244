"""The README's commands and example are the ones that work."""

import pathlib
import re

ROOT = pathlib.Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks():
    return re.findall(r"```bash\n(.*?)```", README, re.S)


def test_ci_runs_exactly_the_readme_test_command():
    run, test = (block.strip() for block in bash_blocks()[:2])
    assert "pytest" in test and "pytest" not in run
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, f"{test!r} is not a line of .ci/run"


def python_block(heading):
    return re.search(rf"## {heading}\n\n```python\n(.*?)```", README, re.S).group(1)


def test_the_training_loop_runs_in_at_most_15_lines(capsys):
    example = python_block("Training from Python")
    assert len([line for line in example.splitlines() if line.strip()]) <= 15
    namespace = {}
    exec(compile(example, "README training example", "exec"), namespace)
    assert namespace["result"].history[-1]["epoch"] == 40
    assert "'accuracy'" in capsys.readouterr().out


def test_the_layer_example_runs():
    namespace = {}
    exec(compile(python_block("Writing a layer"), "README layer example", "exec"), namespace)
    net, grads = namespace["net"], namespace["grads"]
    assert [type(layer).__name__ for layer in net.layers] == ["DenseLayer", "Scale", "DenseLayer"]
    assert [g[0].shape for g in grads[1:2]] == [(8,)] and grads[2].W.shape == (3, 8)
    assert namespace["diagonal"][1][0].shape == (8,)


def test_the_passes_example_runs():
    namespace = {}
    exec(compile(python_block("Using the passes"), "README passes example", "exec"), namespace)
    assert namespace["norms"].shape == (32,)
    assert len(namespace["deltas"]) == 2
