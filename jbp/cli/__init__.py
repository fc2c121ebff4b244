"""The ``jbp`` command: ``train``, ``evaluate``, ``predict``, ``mazur``, ``explain``, ``gradcheck`` and ``bench``.

One module per subcommand (:mod:`jbp.cli.train`, :mod:`jbp.cli.evaluate`,
:mod:`jbp.cli.predict`, :mod:`jbp.cli.explain`, :mod:`jbp.cli.gradcheck`, :mod:`jbp.cli.bench`);
what they share is in :mod:`jbp.cli.options`.

Every failure ends with one line on standard error naming the problem, and a
status: 2 for bad options or input (a file that is not what it should be
included), 1 for a run that could not finish (diverged, a full disk, a file
that cannot be written, an internal error), 130 for Ctrl-C. No Python
traceback reaches the user unless asked for with ``--debug`` (anywhere on the
command line) or ``JBP_DEBUG=1``.
"""

import os
import sys
from collections.abc import Sequence

from jbp.cli import bench, evaluate, explain, gradcheck, predict, train
from jbp.cli.options import Parser, make_optimizer, optimizers

__all__ = ["build_parser", "main", "make_optimizer", "optimizers"]


def build_parser() -> Parser:
    from jbp._version import __version__

    parser = Parser(prog="jbp", description="Backpropagation written by hand, compiled by JAX.")
    parser.add_argument("--version", action="version", version=f"jbp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks (also JBP_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(commands)
    evaluate.add_parser(commands)
    predict.add_parser(commands)
    mazur = commands.add_parser("mazur", help="Mazur's step-by-step example, every number against the article")
    mazur.set_defaults(run=_mazur)
    explain.add_parser(commands)
    gradcheck.add_parser(commands)
    bench.add_parser(commands)
    return parser


def _mazur(args) -> int:
    from jbp.mazur import main as mazur

    return mazur()


def _debugging(argv: list) -> bool:
    return "--debug" in argv or os.environ.get("JBP_DEBUG", "").strip() not in ("", "0")


def main(argv: "Sequence[str] | None" = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debugging(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        if argv[:1] == ["bench"]:  # its options are the benchmark script's own
            return bench.bench_command(argv[1:])
        args = build_parser().parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        return train.fail("interrupted", status=130)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        if debug:
            raise
        return train.fail(err)
    except FloatingPointError as err:  # numbers that overflowed: the message says where
        if debug:
            raise
        return train.fail(err, status=1)
    except OSError as err:
        if debug:
            raise
        where = f" ({err.filename})" if err.filename else ""
        return train.fail(f"{err.strerror or err}{where}", status=1)
    except Exception as err:  # the last line of defence: one line, and how to see more
        if debug:
            raise
        return train.fail(f"internal error: {type(err).__name__}: {err} (run with --debug or JBP_DEBUG=1 "
                          "for the traceback)", status=1)


if __name__ == "__main__":
    sys.exit(main())
