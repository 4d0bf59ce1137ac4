"""`python -m cmon ...`: the same as the `cmon` console script."""

import sys

from cmon.cli import main

sys.exit(main())
