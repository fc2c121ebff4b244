"""``jbp bench``: runs ``experiments/bench.py`` from a source checkout."""

import argparse
import pathlib
import runpy
import sys
from collections.abc import Sequence


def add_parser(commands) -> None:
    bench = commands.add_parser(
        "bench", help="benchmark one training step against jax.value_and_grad", add_help=False,
        description="Runs experiments/bench.py from the source checkout; --help there lists its options.",
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="options of experiments/bench.py")


def bench_command(argv: Sequence[str]) -> int:
    script = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "bench.py"
    if not script.is_file():
        raise FileNotFoundError(
            "jbp bench runs experiments/bench.py from a source checkout (its baseline uses jax.grad, "
            "which the installed package does not ship); install with pip install -e from a clone"
        )
    saved, sys.argv = sys.argv, [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as done:
        if isinstance(done.code, str):  # a message: say it on one line, as every failure does
            print(f"jbp bench: error: {' '.join(done.code.split())}", file=sys.stderr)
            return 2
        return int(done.code or 0)
    finally:
        sys.argv = saved
    return 0
