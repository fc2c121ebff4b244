"""The lessons under experiments/lessons/ run from top to bottom, and keep their outputs.

Every notebook is executed in a fresh ``python3`` kernel (the interpreter
running the tests, so it sees this jbp) and fails on the first cell that
raises. The committed notebooks must hold the outputs of one clean run, in
order, so that they read on a code host without running anything.

To refresh the stored outputs after editing a lesson:
``python tests/test_lessons.py`` (all of them) or
``python tests/test_lessons.py 03_vmap_over_samples``.
"""

import os
import pathlib
import sys

import pytest

LESSONS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds for any one cell; the slowest (training in lesson 6) takes a few
STARTUP_TIMEOUT = 120  # seconds for the kernel to start on a loaded machine


def kernel_environment() -> dict:
    """The environment of the tests, less the simulated devices of conftest.py: a lesson sees one CPU."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    env.pop("JAX_ENABLE_X64", None)
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    return env


def execute(path: pathlib.Path):
    """Runs a notebook in a new kernel in the lessons folder; returns it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT, startup_timeout=STARTUP_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(LESSONS)}}, record_timing=False)
    client.execute(env=kernel_environment())
    return notebook


def code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def errors(notebook) -> list[str]:
    return [f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
            for i, cell in enumerate(code_cells(notebook), 1)
            for out in cell.get("outputs", []) if out.output_type == "error"]


def test_there_are_lessons():
    names = [path.stem for path in NOTEBOOKS]
    assert len(names) >= 4, f"expected the lessons under {LESSONS}, found {names}"
    assert names == sorted(names) and all(name[:2].isdigit() for name in names), names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_lesson_runs_without_error(path):
    pytest.importorskip("nbclient", reason="running the lessons needs nbclient and ipykernel: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="running the lessons needs nbclient and ipykernel: pip install -e '.[test]'")
    from nbclient.exceptions import CellExecutionError

    try:
        notebook = execute(path)
    except CellExecutionError as err:  # the message holds the cell's source and its traceback
        pytest.fail(f"{path.name} failed:\n{err}", pytrace=False)
    assert not errors(notebook)
    assert all(cell.execution_count for cell in code_cells(notebook))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_lesson_keeps_the_outputs_of_one_clean_run(path):
    nbformat = pytest.importorskip("nbformat", reason="reading the notebooks needs nbformat: pip install -e '.[test]'")
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name} was not stored from one run, top to bottom (execution counts {counts}): "
        "run python tests/test_lessons.py"
    )
    assert not errors(notebook), f"{path.name} stores errors: {errors(notebook)}"
    with_output = sum(bool(cell.outputs) for cell in cells)
    assert with_output >= len(cells) // 2, f"{path.name}: only {with_output} of {len(cells)} code cells show an output"
    streams = [out.get("name") for cell in cells for out in cell.outputs if out.output_type == "stream"]
    assert "stderr" not in streams, f"{path.name} stores warnings or errors on stderr"
    assert any(cell.cell_type == "markdown" for cell in notebook.cells[:1]), f"{path.name} should open with its title"


def test_the_lessons_readme_lists_every_lesson():
    readme = (LESSONS / "README.md").read_text()
    missing = [path.name for path in NOTEBOOKS if path.name not in readme]
    assert not missing, f"experiments/lessons/README.md does not list {missing}"


def main(names: list[str]) -> int:
    """Executes the lessons named (all by default) and stores them with their outputs."""
    import nbformat

    chosen = [path for path in NOTEBOOKS if not names or path.stem in names or path.name in names]
    if names and len(chosen) != len(names):
        print(f"unknown lessons among {names}; known: {[path.stem for path in NOTEBOOKS]}", file=sys.stderr)
        return 2
    for path in chosen:
        notebook = execute(path)
        nbformat.write(notebook, path)
        print(f"stored {path.name} with its outputs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
