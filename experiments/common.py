"""What the experiment scripts share: where results go, and how they are written."""

import json
import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the ``plots`` extra)."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("the experiments draw with matplotlib: pip install -e '.[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path, results: dict) -> None:
    """Writes a benchmark's results to ``path`` (its folder made if need be) and says where."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {path}")


def save(name: str, results: dict, figure) -> None:
    """Writes ``NAME.json`` and ``NAME.png`` into the results folder and says where."""
    folder = RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
    print(f"wrote {folder / (name + '.json')} and {folder / (name + '.png')}")
