"""Matt Mazur's step-by-step backpropagation example, every number, with jbp.

The walk-through lives in the package (``jbp/mazur.py``) so that the ``jbp
mazur`` command runs it too; this script is the same thing. It prints the
forward and backward pass equation by equation (``jbp.explain``), then each
of the article's figures beside jbp's, and exits with status 1 if any
disagrees.
"""

import sys

from jbp.mazur import main

if __name__ == "__main__":
    sys.exit(main())
