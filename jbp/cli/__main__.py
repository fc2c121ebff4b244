"""``python -m jbp.cli …`` is ``jbp …``."""

import sys

from jbp.cli import main

sys.exit(main())
