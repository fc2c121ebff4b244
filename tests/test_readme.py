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


def test_python_example_runs():
    example = re.search(r"## Using it\n\n```python\n(.*?)```", README, re.S).group(1)
    namespace = {}
    exec(compile(example, "README example", "exec"), namespace)
    assert namespace["norms"].shape == (32,)
    assert len(namespace["deltas"]) == 2
