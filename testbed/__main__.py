"""``python -m testbed``: the same as ``socp-testbed``."""

import sys

from testbed.cli import main

sys.exit(main())
