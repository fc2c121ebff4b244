"""How the tests read a refusal of the ``jbp`` command: status 2 and one line on standard error."""

from jbp.cli import main


def one_error(capsys, *fragments) -> str:
    """The one line ``jbp: error: …`` on standard error since the last read, holding every fragment."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jbp: error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    return err[0]


def refused(capsys, argv, *fragments) -> str:
    """``jbp ARGV`` ended with status 2 and one line on standard error holding every fragment."""
    capsys.readouterr()
    status = main([str(a) for a in argv])
    line = one_error(capsys, *fragments)
    assert status == 2, line
    return line
